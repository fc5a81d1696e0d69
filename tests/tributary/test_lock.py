"""The warehouse lock: one writer at a time across threads and processes, re-entrant in the
thread that holds it (a flow holds it across its last steps with one slot)."""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path

import pytest

from tributary.lock import warehouse_lock
from tributary.settings import Settings


def _other_thread_takes_it(settings: Settings) -> BaseException | float:
    """How long another thread waited for the lock, or what stopped it."""
    outcome: list[BaseException | float] = []

    def take() -> None:
        started = time.monotonic()
        try:
            with warehouse_lock(settings):
                outcome.append(time.monotonic() - started)
        except BaseException as exc:
            outcome.append(exc)

    # In a copy of this context (the same Prefect settings, so the same lock), holding
    # nothing of it: the lock is keyed by thread.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(take,))
    thread.start()
    thread.join(60)
    return outcome[0]


def _reentrant_in_its_thread_only(settings: Settings) -> None:
    with warehouse_lock(settings):
        started = time.monotonic()
        with warehouse_lock(settings), warehouse_lock(settings):
            assert time.monotonic() - started < 0.5  # no second slot, no wait
        # Still held after the inner blocks: another thread waits, and gives up at the timeout.
        refused = _other_thread_takes_it(settings)
        assert isinstance(refused, TimeoutError), refused
    assert isinstance(_other_thread_takes_it(settings), float)  # released: the other gets it


def test_the_lock_file_is_reentrant_in_its_thread_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No server (another test may have left one in Prefect's settings): the lock file.
    monkeypatch.setattr("tributary.lock.server_configured", lambda: False)
    settings = Settings(data_dir=tmp_path, lock_timeout_seconds=1)
    _reentrant_in_its_thread_only(settings)
    assert Path(f"{settings.warehouse}.lock").exists()


def test_the_servers_limit_is_reentrant_in_its_thread_only(
    tmp_path: Path, prefect_server: None
) -> None:
    _reentrant_in_its_thread_only(Settings(data_dir=tmp_path, lock_timeout_seconds=1))
