"""Where the installed Prefect costs every flow run time for nothing, and how tributary avoids it.

Prefect 3.9's flow engine sends a flow run's heartbeats from a thread that sleeps in whole
seconds and checks its stop event between them; as a run ends, a synchronous flow joins that
thread (``prefect.flow_engine._send_heartbeats(join_on_exit=True)``). Every flow run called in
a process — each `elt` and `dbt` run of a deployment, each `make demo` — so waited
0-1 s, 0.5 s on average, after its final state was set, before it returned and its hooks ran
(bench/README, stop 22: 0.6 s per `elt` run in py-spy). Asynchronous flows skip that join
(``join_on_exit=False``): the thread sees the stop event when its current second ends and
returns without sending anything more. ``quick_heartbeat_stop`` makes synchronous flows do the
same; the heartbeats while a run lives are unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow_engine

_ORIGINAL = flow_engine._send_heartbeats


@contextmanager
def _send_heartbeats_without_join(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Prefect's own heartbeats, never joined as the run ends (``join_on_exit`` is ignored)."""
    with _ORIGINAL(engine, join_on_exit=False):
        yield


def quick_heartbeat_stop() -> bool:
    """Makes a synchronous flow run end without waiting for its heartbeat thread's sleep.
    Idempotent; returns whether it applies (False if Prefect's function no longer takes
    ``join_on_exit``: then nothing is changed)."""
    if flow_engine._send_heartbeats is _send_heartbeats_without_join:
        return True
    if "join_on_exit" not in inspect.signature(_ORIGINAL).parameters:
        return False
    flow_engine._send_heartbeats = _send_heartbeats_without_join  # type: ignore[assignment]
    return True
