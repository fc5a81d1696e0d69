"""The orphan watchdog with real processes: a parent that starts the watchdog and a child, then
dies by SIGKILL (its child goes too) or exits after stopping its child (the watchdog leaves
quietly); with a Prefect server configured nothing is started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from tributary.settings import PROJECT_ROOT

PARENT = """
import subprocess, sys, time
from tributary import orphans
orphans.watch()
child = subprocess.Popen(["sleep", "600"])
print(orphans._watchdog.pid, child.pid, flush=True)
if sys.argv[1] == "exit":
    child.terminate()
    child.wait()
    sys.exit(0)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _running(pid)]


def _parent(how: str) -> tuple[subprocess.Popen[str], int, int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, how],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    watchdog, child = map(int, parent.stdout.readline().split())
    return parent, watchdog, child


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the watchdog reads /proc")
def test_a_killed_parent_takes_its_children_with_it() -> None:
    parent, watchdog, child = _parent("kill")
    try:
        time.sleep(0.5)
        assert _running(child) and _running(watchdog)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone([child, watchdog]) == []
        assert parent.stderr is not None
        assert f"process {parent.pid} died and left 1 process(es) it started; stopping {child}" in (
            parent.stderr.read()
        )
    finally:
        with suppress(ProcessLookupError):  # this test's own process group
            os.killpg(parent.pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the watchdog reads /proc")
def test_a_parent_that_exits_cleanly_leaves_the_watchdog_nothing_to_do() -> None:
    parent, watchdog, child = _parent("exit")
    assert parent.wait(timeout=30) == 0
    assert _wait_gone([watchdog, child]) == []
    assert parent.stderr is not None and parent.stderr.read() == ""


def test_no_watchdog_when_a_prefect_server_is_configured() -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tributary import orphans, runs\n"
            "runs.guard_local_server()\n"
            "print(orphans._watchdog is None)\n",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:4200/api"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == "True", probe.stderr
