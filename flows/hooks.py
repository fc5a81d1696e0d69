"""State hooks shared by tributary's flows."""

from __future__ import annotations

from typing import Any

import prefect.runtime
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow
from prefect.settings import PREFECT_UI_URL

from tributary.notify import Delivery, failure_message, notify, warning_message
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
    is logged, without its secret, by ``notify``). A build into an analyst's dev warehouse
    (``target: dev``) alerts nobody: its failure is the analyst's, in their own run."""
    if _parameters(flow_run).get("target") == "dev":
        return
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


def _parameters(flow_run: FlowRun) -> dict[str, Any]:
    """The run's ``params`` model as the server recorded it (a dict), or nothing."""
    params = (flow_run.parameters or {}).get("params")
    return params if isinstance(params, dict) else {}


def notify_warnings(flow_name: str, warnings: list[str]) -> list[Delivery]:
    """Tell every configured channel what a completed run found (quarantined rows, drift)."""
    ui = PREFECT_UI_URL.value()
    deployment = prefect.runtime.deployment.name
    subject, body = warning_message(
        flow_name=flow_name,
        deployment=f"{flow_name}/{deployment}" if deployment else None,
        warnings=warnings,
        run_url=f"{ui}/runs/flow-run/{prefect.runtime.flow_run.id}" if ui else None,
    )
    return notify(get_settings(), subject, body)
