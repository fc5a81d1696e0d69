"""Which failures are worth retrying: the network and a busy warehouse, not a wrong setting."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import httpx
import requests
from dlt.common.configuration.exceptions import ConfigurationException

from tributary.settings import ConfigurationError

TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


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


def is_transient(exc: BaseException) -> bool:
    """True for faults a later attempt can get past (HTTP 5xx/429, refused or reset
    connections, timeouts, a warehouse locked by another writer); False for permanent ones
    (bad configuration, HTTP 4xx such as 401/403), which fail at once."""
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
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task only when its error is transient."""
    return isinstance(state.data, BaseException) and is_transient(state.data)
