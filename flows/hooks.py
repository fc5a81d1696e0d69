"""State hooks shared by tributary's flows."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow
from prefect.settings import PREFECT_UI_URL

from tributary.notify import failure_message, notify
from tributary.settings import get_settings


def _deployment_name(flow: Flow, flow_run: FlowRun) -> str | None:
    """`flow/deployment` as users type it in `prefect deployment run`, or None."""
    if flow_run.deployment_id is None:
        return None
    try:
        with get_client(sync_client=True) as client:
            return f"{flow.name}/{client.read_deployment(flow_run.deployment_id).name}"
    except Exception:  # the message still goes out, with the id
        return str(flow_run.deployment_id)


def notify_failure(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """Tell every configured channel that the run failed; never raises (a channel that fails
    is logged, without its secret, by ``notify``)."""
    ui = PREFECT_UI_URL.value()
    try:
        cause = state.result(raise_on_failure=False)
    except Exception:  # a crashed run may have no readable result; the message still says why
        cause = None
    subject, body = failure_message(
        flow_name=flow.name,
        deployment=_deployment_name(flow, flow_run),
        step=getattr(cause, "step", None),
        error=state.message or state.name,
        run_url=f"{ui}/runs/flow-run/{flow_run.id}" if ui else None,
    )
    notify(get_settings(), subject, body)
