"""The `elt` flow: ingest each source in its own retried task, build dbt, report."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow
from prefect.settings import PREFECT_UI_URL
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field

from ingestion.pipeline import SOURCE_NAMES, SourceLoad, SourceName, run_source
from tributary.dbt import DbtSummary, run_dbt
from tributary.errors import retry_if_transient
from tributary.notify import failure_message, send_webhook
from tributary.report import RunReport
from tributary.settings import get_settings


class EltParameters(BaseModel):
    """What one `elt` run does."""

    sources: list[SourceName] = Field(
        default_factory=lambda: list(SOURCE_NAMES), description="Sources to ingest, in order."
    )
    full_refresh: bool = Field(
        default=False, description="Drop the raw tables and incremental state and reload all."
    )
    dbt_select: list[str] = Field(default_factory=list, description="dbt --select; empty: all.")


class StepFailed(RuntimeError):
    """A step of the flow failed; the message names the step and the cause."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {type(cause).__name__}: {cause}")
        self.step = step


@task(
    task_run_name="ingest-{source}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=3600,
)
def ingest(source: SourceName, full_refresh: bool = False) -> SourceLoad:
    """One dlt pipeline run; a retry first loads what the failed attempt left pending."""
    return run_source(source, get_settings(), full_refresh=full_refresh)


def _notify_failure(flow: Flow, flow_run: FlowRun, state: State) -> None:
    logger = get_run_logger()
    url = get_settings().slack_webhook_url
    if url is None:
        logger.info("No failure webhook configured (TRIBUTARY_SLACK_WEBHOOK_URL); not notifying.")
        return
    ui = PREFECT_UI_URL.value()
    try:
        cause = state.result(raise_on_failure=False)
    except Exception:  # a crashed run may have no readable result; the message still says why
        cause = None
    subject, body = failure_message(
        flow_name=flow.name,
        deployment=str(flow_run.deployment_id) if flow_run.deployment_id else None,
        step=getattr(cause, "step", None),
        error=state.message or state.name,
        run_url=f"{ui}/runs/flow-run/{flow_run.id}" if ui else None,
    )
    send_webhook(url, subject, body)
    logger.info("Failure notification sent.")


@flow(name="elt", log_prints=True, on_failure=[_notify_failure], on_crashed=[_notify_failure])
def elt(params: EltParameters | None = None) -> RunReport:
    """Ingest the selected sources, then `dbt build`, then publish the run report."""
    params = params or EltParameters()
    settings = get_settings()
    logger = get_run_logger()
    started = time.monotonic()
    loads: list[SourceLoad] = []
    for source in params.sources:
        try:
            load = ingest(source, full_refresh=params.full_refresh)
        except Exception as exc:
            raise StepFailed(f"ingest {source}", exc) from exc
        loads.append(load)
        logger.info(
            "ingest %s: %d rows into %s (%s)",
            source,
            load.rows_loaded,
            load.dataset,
            ", ".join(f"{t.table} {t.new} new/{t.updated} updated" for t in load.tables),
        )
    args = ["build"] + (["--select", *params.dbt_select] if params.dbt_select else [])
    try:
        dbt: DbtSummary = run_dbt(args, settings)
    except Exception as exc:
        raise StepFailed("dbt build", exc) from exc
    logger.info("dbt build: %d models built, %d tests passed", dbt.models_built, dbt.tests_passed)
    report = RunReport(
        warehouse=settings.warehouse, loads=loads, dbt=dbt, seconds=time.monotonic() - started
    )
    create_markdown_artifact(
        key="elt-run-report", markdown=report.to_markdown(), description="tributary elt run"
    )
    return report


if __name__ == "__main__":
    elt()
