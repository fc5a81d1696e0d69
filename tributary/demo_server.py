"""The demo's Prefect server: started by the first `tributary demo`, kept for the next ones and
for the newcomer's browser (its UI), stopped by `tributary demo stop`.

Prefect's temporary server costs every demo run ~5 s to start, ~3.5 s to stop and a wait for it
to record the run before it stops: a third of a re-run. This one lives in the data folder
(``<data_dir>/prefect/``: its database, its log, and ``server.json`` naming its URL and process),
listens on 127.0.0.1 only (port 4200, or a free one when that is taken), and runs in a session of
its own: it is meant to outlive the demo, so the demo's orphan watchdog leaves it alone.
``PREFECT_API_URL`` set by the user wins: the demo then reports to that server instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from tributary.orphans import pid_alive
from tributary.settings import Settings

PORT = 4200
START_TIMEOUT_SECONDS = 120  # a fresh machine's first database migration takes a while
STOP_GRACE_SECONDS = 10


@dataclass(frozen=True)
class DemoServer:
    url: str  # the API, as PREFECT_API_URL takes it
    pid: int  # the leader of its own session: stopping it stops the whole group

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")


def folder(settings: Settings) -> Path:
    return settings.data_dir / "prefect"


def _record(settings: Settings) -> Path:
    return folder(settings) / "server.json"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _recorded(settings: Settings) -> DemoServer | None:
    """The server the record names (it may be gone), or None without a readable record."""
    path = _record(settings)
    try:
        return DemoServer(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running(settings: Settings) -> DemoServer | None:
    """The server an earlier demo left, if it still runs and answers."""
    server = _recorded(settings)
    if server is not None and pid_alive(server.pid) and _healthy(server.url):
        return server
    return None


def ensure(settings: Settings, timeout: float = START_TIMEOUT_SECONDS) -> tuple[DemoServer, bool]:
    """The demo's server, and whether it was started now. Raises ``RuntimeError`` with the end
    of its log when a new one does not answer in time."""
    server = running(settings)
    if server is not None:
        return server, False
    home = folder(settings)
    home.mkdir(parents=True, exist_ok=True)
    port = PORT if _port_free(PORT) else _free_port()
    environment = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    environment |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    log_path = home / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=home,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DemoServer(url=f"http://127.0.0.1:{port}/api", pid=process.pid)
    deadline = time.monotonic() + timeout
    while not _healthy(server.url):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process.pid)
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"The demo's Prefect server did not start on {server.ui} within {timeout:.0f} s; "
                f"the end of {log_path}:\n" + "\n".join(tail)
            )
        time.sleep(0.2)
    partial = _record(settings).with_suffix(".partial")
    partial.write_text(json.dumps(asdict(server)))
    partial.replace(_record(settings))
    return server, True


def _stop_group(pid: int) -> None:
    """SIGTERM to the server's process group, SIGKILL after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped if it is this process's child
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_server(pid: int) -> bool:
    """Whether ``pid`` is still a Prefect server (not another process given its number)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc here: trust the record
    return b"server" in argv and any(arg.endswith(b"prefect") for arg in argv)


def stop(settings: Settings) -> DemoServer | None:
    """Stop the demo's server (its whole process group) and forget it; the one stopped, or
    None when none ran."""
    server = _recorded(settings)
    _record(settings).unlink(missing_ok=True)
    if server is None or not (pid_alive(server.pid) and _is_server(server.pid)):
        return None  # gone already: its number may be another process's now
    _stop_group(server.pid)
    return server
