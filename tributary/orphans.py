"""No orphans: when a run's process dies, however it dies, the processes it started go too.

A local run (no ``PREFECT_API_URL``) starts Prefect's temporary server as a child process
(``SubprocessASGIServer`` in ``prefect/server/api/server.py``: ``python -m uvicorn …
prefect.server.api.server:create_app``) and stops it from an ``atexit`` hook. A SIGKILL of the
run's main process skips that hook, and the server runs on forever as an orphan.

``watch()`` starts a small watchdog process (this module, standard library only, so it starts in
milliseconds). It holds the read end of a pipe whose write end only the run's process has; the
kernel closes that end when the process dies, so the watchdog wakes on EOF. It then stops every
process the dead one left behind: the kernel hands a dead process's children to a reaper (init
or a subreaper), the same one the watchdog itself now reports as its parent, so the orphans are
the processes with that parent, in the run's process group, started after the run.

Why not the alternatives: ``prctl(PR_SET_PDEATHSIG)`` must be set inside the child, which means
patching how Prefect spawns it, and it fires when the *thread* that spawned the child exits —
Prefect starts the server from whichever thread first needs the API, sometimes a short-lived
worker thread. Starting the server ourselves would copy Prefect's private start-up code. The
watchdog needs neither, needs no PID in advance (it may start before the server does), and
covers any other child a run leaves behind. It needs ``/proc``: on other systems ``watch`` does
nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# How long the orphans get to stop after SIGTERM before SIGKILL (Prefect gives its server 5 s).
STOP_GRACE_SECONDS = 5.0

_watchdog: subprocess.Popen[bytes] | None = None


def watch() -> None:
    """Start this process's watchdog, once; it outlives the process only to stop its orphans."""
    global _watchdog
    if _watchdog is not None or not PROC.is_dir():
        return
    # The pipe's write end is not inherited by later children (Python opens it close-on-exec),
    # so only this process's death closes it.
    _watchdog = subprocess.Popen(
        [sys.executable, "-m", "tributary.orphans", str(os.getpid())], stdin=subprocess.PIPE
    )


@dataclass(frozen=True)
class ProcessStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    start_ticks: int


def process_stat(pid: int) -> ProcessStat | None:
    """``/proc/<pid>/stat``, or None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        start_ticks=int(fields[19]),
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id lives on this machine (it may be another process than
    the one that had the id before)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(stat: ProcessStat) -> bool:
    """The process still runs: it exists, is not a zombie, and is the same process (not its PID
    reused)."""
    now = process_stat(stat.pid)
    return now is not None and now.state not in ("Z", "X") and now.start_ticks == stat.start_ticks


def _all_processes() -> list[ProcessStat]:
    stats = (process_stat(int(entry.name)) for entry in PROC.iterdir() if entry.name.isdigit())
    return [stat for stat in stats if stat is not None]


def _wait_for_death(parent: int) -> None:
    """Return when the parent has died: EOF on stdin, or (should a forked child have kept the
    pipe open) a new parent."""
    stdin = sys.stdin.fileno()
    while os.getppid() == parent:
        ready, _, _ = select.select([stdin], [], [], 1.0)
        if ready and not os.read(stdin, 4096):
            break
    # The kernel closes a dying process's files before it hands its children to the reaper:
    # wait for the hand-over, which moves the watchdog and its siblings together.
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)


def _stop(orphans: list[ProcessStat]) -> None:
    for stat in orphans:
        if alive(stat):
            os.kill(stat.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while any(alive(stat) for stat in orphans) and time.monotonic() < deadline:
        time.sleep(0.1)
    for stat in orphans:
        if alive(stat):
            os.kill(stat.pid, signal.SIGKILL)


def _main(parent: int) -> None:
    # Ctrl-C and a closed terminal reach the whole process group: the watchdog stays to clean up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    run = process_stat(parent)
    if run is None or run.pid != os.getppid():
        return
    _wait_for_death(parent)
    reaper, me = os.getppid(), os.getpid()
    orphans = [
        stat
        for stat in _all_processes()
        if stat.ppid == reaper
        and stat.pgrp == run.pgrp
        and stat.start_ticks >= run.start_ticks
        and stat.pid != me
        and stat.state not in ("Z", "X")
    ]
    if orphans:
        print(
            f"tributary: process {parent} died and left {len(orphans)} process(es) it started; "
            f"stopping {', '.join(str(stat.pid) for stat in orphans)}",
            file=sys.stderr,
            flush=True,
        )
        _stop(orphans)


if __name__ == "__main__":
    _main(int(sys.argv[1]))
