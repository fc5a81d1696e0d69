"""A synchronous flow run ends without joining its heartbeat thread, and still sends its
heartbeats: through Prefect's own ``_send_heartbeats`` with a stand-in engine, and with a real
flow against the server."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from prefect import flow, flow_engine
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

import flows  # noqa: F401  (importing the flows applies the fix, as a deployment does)
from tributary import prefect_fixes


class _Engine:
    """What ``_send_heartbeats`` reads of a flow run engine; counts the heartbeats sent."""

    heartbeat_seconds = 30
    flow_run = None
    logger = logging.getLogger("test-heartbeats")

    def __init__(self) -> None:
        self.sent = 0
        self.first = threading.Event()
        self.thread: threading.Thread | None = None

    def _build_heartbeat_event_template(self) -> tuple[Any, Any]:
        return None, None

    def _emit_flow_run_heartbeat(self, resource: Any, related: Any) -> None:
        self.sent += 1
        self.thread = threading.current_thread()
        self.first.set()


def test_the_fix_is_applied_by_importing_the_flows() -> None:
    assert flow_engine._send_heartbeats is prefect_fixes._send_heartbeats_without_join
    assert prefect_fixes.quick_heartbeat_stop()  # idempotent


def test_leaving_does_not_wait_for_the_heartbeat_thread_which_then_stops_quietly() -> None:
    engine = _Engine()
    with flow_engine._send_heartbeats(engine):
        assert engine.first.wait(10), "no heartbeat sent as the run started"
    heartbeat = engine.thread
    assert heartbeat is not None
    # Prefect's thread sleeps in whole seconds: joined, leaving would have waited for it
    assert heartbeat.is_alive()
    heartbeat.join(5)
    assert not heartbeat.is_alive()
    assert engine.sent == 1  # nothing sent after the run ended


@pytest.mark.integration
def test_a_flow_run_sends_heartbeats_and_returns_before_its_heartbeat_thread_ends(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[threading.Thread] = []
    first = threading.Event()
    emit = flow_engine.FlowRunEngine._emit_flow_run_heartbeat

    def counted(self: Any, *args: Any) -> None:
        emit(self, *args)
        sent.append(threading.current_thread())
        first.set()

    monkeypatch.setattr(flow_engine.FlowRunEngine, "_emit_flow_run_heartbeat", counted)

    @flow(name="test-heartbeats")
    def beating() -> str:
        assert first.wait(10), "no heartbeat sent as the run started"
        return "done"

    state = beating(return_state=True)
    assert state.is_completed() and state.result() == "done"
    (heartbeat,) = sent
    assert heartbeat.is_alive(), "the flow run waited for its heartbeat thread"
    heartbeat.join(5)
    assert not heartbeat.is_alive() and len(sent) == 1
    flow_run_id = state.state_details.flow_run_id
    events = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        assert run.state is not None and run.state.is_completed()
        deadline = time.monotonic() + 30
        while not (recorded := client.read_events(filter=events, limit=50).events):
            assert time.monotonic() < deadline, "the server recorded no heartbeat of the run"
            time.sleep(0.5)
    assert len(recorded) == 1
