"""Which failures are worth retrying: the network and a busy warehouse, not a wrong setting."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import adbc_driver_manager
import duckdb
import httpx
import psycopg
import pymysql
import requests
from dlt.common.configuration.exceptions import ConfigurationException

from tributary.settings import ConfigurationError

TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# A source database that is away, restarting, overloaded or lost the race for a lock.
# PostgreSQL SQLSTATEs: connection exception, insufficient resources, operator intervention,
# serialization failure, deadlock.
TRANSIENT_SQLSTATES = ("08", "53", "57P", "40001", "40P01")
# MySQL/MariaDB: can't connect, gone away, lost connection, too many connections, lock wait
# timeout, deadlock.
TRANSIENT_MYSQL_ERRNOS = frozenset({2002, 2003, 2006, 2013, 1040, 1205, 1213})
# Connection-time failures carry no SQLSTATE in libpq clients: told apart by their text.
TRANSIENT_DATABASE_MESSAGES = (
    "connection refused",
    "server closed the connection",
    "could not receive data",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "timeout expired",
    "connection timed out",
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: ``__cause__``, ``__context__`` and dlt's
    ``PipelineStepFailed.exception``, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__, getattr(current, "exception", None)]


def _http_status(exc: BaseException) -> int | None:
    response: Any = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _database_fault(error: BaseException) -> bool | None:
    """Transient (True) or permanent (False) for a source database's driver error; None for
    anything else."""
    if isinstance(error, pymysql.err.MySQLError):
        return bool(error.args) and error.args[0] in TRANSIENT_MYSQL_ERRNOS
    if not isinstance(error, psycopg.Error | adbc_driver_manager.Error):
        return None
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(TRANSIENT_SQLSTATES)
    message = str(error).lower()
    return any(text in message for text in TRANSIENT_DATABASE_MESSAGES)


def is_transient(exc: BaseException) -> bool:
    """True for faults a later attempt can get past (HTTP 5xx/429, refused or reset
    connections, timeouts, a source database restarting or deadlocked, a warehouse locked by
    another writer); False for permanent ones (bad configuration, HTTP 4xx such as 401/403,
    a refused login, SQL errors), which fail at once."""
    chain = list(causes(exc))
    if any(isinstance(e, ConfigurationError | ConfigurationException) for e in chain):
        return False
    for error in chain:
        status = _http_status(error)
        if status is not None:
            return status in TRANSIENT_HTTP_STATUSES
        if isinstance(
            error,
            ConnectionError
            | TimeoutError
            | httpx.TransportError
            | requests.ConnectionError
            | requests.Timeout,
        ):
            return True
        if isinstance(error, duckdb.IOException) and "lock" in str(error).lower():
            return True
        database = _database_fault(error)
        if database is not None:
            return database
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task only when its error is transient."""
    return isinstance(state.data, BaseException) and is_transient(state.data)
