"""`tributary demo` keeps one Prefect server for the next demo runs (and the newcomer's UI)
instead of starting and stopping a temporary one on every run; `tributary demo stop` stops
it and every process it started. A real server, started and stopped here."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.processes import processes
from tributary import demo_server
from tributary.settings import Settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_demo_server_is_started_once_reused_and_stopped_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_server, "PORT", _free_port())
    settings = Settings(data_dir=tmp_path)
    server, started = demo_server.ensure(settings)
    try:
        assert started
        assert server.url == f"http://127.0.0.1:{demo_server.PORT}/api"
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
            assert json.loads(response.read()) is True
        # its database is in the data folder, not the user's ~/.prefect
        assert list((tmp_path / "prefect").glob("*.db"))
        group = {p.pid for p in processes().values() if p.pgrp == server.pid}
        assert server.pid in group  # the leader of a session of its own
        assert os.getpgrp() != server.pid

        again, started_again = demo_server.ensure(settings)
        assert (again, started_again) == (server, False)
    finally:
        stopped = demo_server.stop(settings)
    assert stopped == server
    left = [p for p in processes().values() if p.pgrp == server.pid and p.state != "Z"]
    assert left == [], f"processes of the stopped server still run: {left}"
    assert demo_server.running(settings) is None
    assert demo_server.stop(settings) is None


def test_a_stale_record_never_stops_another_process(tmp_path: Path) -> None:
    """A record whose process is gone, its number now another process's (here this test's):
    `stop` leaves that process alone and forgets the record; `running` does not trust it."""
    settings = Settings(data_dir=tmp_path)
    record = tmp_path / "prefect" / "server.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"url": "http://127.0.0.1:9/api", "pid": os.getpid()}))
    assert demo_server.running(settings) is None
    assert demo_server.stop(settings) is None  # nothing stopped: we are still here
    assert not record.exists()
