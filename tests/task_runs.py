"""Reading a flow run's task runs from the Prefect server the tests run against."""

from __future__ import annotations

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun


def recorded_task_runs(flow_run_id: UUID, expected: int, timeout: float = 120) -> list[TaskRun]:
    """The flow run's task runs once the server has recorded ``expected`` of them in a final
    state (it records task runs from events, which can trail the flow on a busy server)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = [run for run in runs if run.state is not None and run.state.is_final()]
            if len(final) >= expected:
                return runs
            assert time.monotonic() < deadline, f"{len(final)} of {expected} task runs recorded"
            time.sleep(0.3)
