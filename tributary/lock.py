"""One writer at a time: DuckDB lets a single process write the warehouse file.

With a Prefect server configured (``PREFECT_API_URL``), every warehouse write holds a slot of the
global concurrency limit ``tributary-warehouse`` (limit 1), strictly: a limit that does not exist
is an error, not a silent pass. Without a server (a local run on Prefect's temporary server) an
equivalent lock file beside the warehouse serialises writers across processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from filelock import FileLock, Timeout
from prefect import get_run_logger
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError
from prefect.settings import PREFECT_API_URL

from tributary.settings import ConfigurationError, Settings

WAREHOUSE_LIMIT = "tributary-warehouse"


def server_configured() -> bool:
    """True when flows report to a long-lived Prefect server rather than a temporary one."""
    return bool(PREFECT_API_URL.value())


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


# The warehouse locks this context holds, as (thread, lock): a step run inside a longer hold
# takes no second slot. (Keyed by thread too: a thread started in a copy of this context holds
# nothing.)
_HELD: ContextVar[frozenset[tuple[int, str]]] = ContextVar(
    "tributary_warehouse_held", default=frozenset()
)


@contextmanager
def warehouse_lock(settings: Settings) -> Iterator[None]:
    """Hold the warehouse for writing; waits (up to ``lock_timeout_seconds``) for another writer.

    Re-entrant: inside a block that holds it, the same thread takes it again at no cost, so a
    flow can hold the warehouse across consecutive writes (the build, the publication, the
    run's record) with one slot instead of one per step. That matters with a Prefect server on
    SQLite: a slot asked for as a task run starts or ends meets the server writing that task
    run, gets a 503 ("database is locked") and waits the client's 2 s back-off."""
    key = (
        threading.get_ident(),
        WAREHOUSE_LIMIT if server_configured() else str(settings.warehouse),
    )
    held = _HELD.get()
    if key in held:
        yield
        return
    with _hold(settings):
        token = _HELD.set(held | {key})
        try:
            yield
        finally:
            _HELD.reset(token)


@contextmanager
def _hold(settings: Settings) -> Iterator[None]:
    timeout = settings.lock_timeout_seconds
    if server_configured():
        try:
            slot = concurrency(WAREHOUSE_LIMIT, occupy=1, timeout_seconds=timeout, strict=True)
            slot.__enter__()
        except ConcurrencySlotAcquisitionError as exc:
            if "must be created" not in str(exc):
                raise
            raise ConfigurationError(
                f"The Prefect server at PREFECT_API_URL has no global concurrency limit "
                f"{WAREHOUSE_LIMIT!r}, which guards warehouse writes: create it with "
                "`tributary server-setup` (or `prefect gcl create "
                f"{WAREHOUSE_LIMIT} --limit 1`)"
            ) from exc
        try:
            yield
        finally:
            slot.__exit__(None, None, None)
        return
    with file_lock(Path(f"{settings.warehouse}.lock"), "warehouse", timeout):
        yield


@contextmanager
def file_lock(path: Path, what: str, timeout: float) -> Iterator[None]:
    """Hold a cross-process lock file, saying in the log when another process makes us wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _logger().info("Waiting for the %s lock: another run holds %s", what, path)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise TimeoutError(
                f"The {what} lock {path} was still held after {timeout:.0f} s "
                "(TRIBUTARY_LOCK_TIMEOUT_SECONDS)"
            ) from None
    try:
        yield
    finally:
        lock.release()
