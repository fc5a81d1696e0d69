"""The `elt` flow: ingest each source in its own retried task, build dbt, report."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import date

import prefect.runtime
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.hooks import notify_failure, notify_warnings
from flows.publish import publish_marts, say_not_published
from ingestion.guards import DeletesStopped, GuardError
from ingestion.pipeline import (
    SOURCE_NAMES,
    WINDOWED_SOURCES,
    SourceLoad,
    SourceName,
    run_source,
)
from tributary.commands import command
from tributary.dbt import DbtSummary, build_args, run_dbt_resumable
from tributary.errors import retry_if_transient
from tributary.report import RunReport
from tributary.runs import begin_run, guard_local_server
from tributary.settings import get_settings


class EltParameters(BaseModel):
    """What one `elt` run does. Deployments set some of these; the rest keep their defaults."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceName] = Field(
        default_factory=lambda: list(SOURCE_NAMES), description="Sources to ingest, in order."
    )
    window_start: date | None = Field(
        default=None,
        description="Backfill: reload the API sources' records from this date (UTC) on ...",
    )
    window_end: date | None = Field(
        default=None, description="... up to, not including, this date. Both or neither."
    )
    full_refresh: list[str] = Field(
        default_factory=list,
        description="Drop and reload these tables from scratch: `source` (all its tables) or "
        "`source.table`, e.g. `shop.orders`. Needs confirm_full_refresh.",
    )
    confirm_full_refresh: bool = Field(
        default=False, description="Set to true to go ahead with full_refresh."
    )
    reconcile_deletes: bool | None = Field(
        default=None,
        description="Delete warehouse rows whose key the shop database no longer holds (one "
        "key scan per table); default TRIBUTARY_SHOP_RECONCILE_DELETES.",
    )
    confirm_deletes: bool = Field(
        default=False,
        description="Go ahead with deletes that a run stopped because they were more than "
        "TRIBUTARY_DELETE_MAX_SHARE of a table (a source table emptied, a mass soft delete).",
    )
    dbt_select: list[str] = Field(default_factory=list, description="dbt --select; empty: all.")
    dbt_exclude: list[str] = Field(default_factory=list, description="dbt --exclude.")

    @model_validator(mode="after")
    def _check(self) -> EltParameters:
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("window_start and window_end: give both or neither")
        if self.window_start and self.window_end and self.window_start >= self.window_end:
            raise ValueError(
                f"window_start ({self.window_start}) must be before window_end ({self.window_end})"
            )
        for entry in self.full_refresh:
            source = entry.split(".", 1)[0]
            if source not in self.sources:
                raise ValueError(
                    f"full_refresh: {entry!r} is not in a source this run ingests "
                    f"({', '.join(self.sources)})"
                )
        if self.full_refresh and not self.confirm_full_refresh:
            raise ValueError(
                f"full_refresh drops and reloads {', '.join(self.full_refresh)}: set "
                "confirm_full_refresh to true to go ahead"
            )
        return self

    def refresh_of(self, source: SourceName) -> tuple[bool, list[str]]:
        """(whole source?, tables) to drop and reload for one source."""
        whole = source in self.full_refresh
        tables = [e.split(".", 1)[1] for e in self.full_refresh if e.startswith(f"{source}.")]
        return whole, tables

    def window(self) -> tuple[date, date] | None:
        if self.window_start is None or self.window_end is None:
            return None
        return self.window_start, self.window_end

    def dbt_args(self) -> list[str]:
        return build_args(self.dbt_select, self.dbt_exclude)


class StepFailed(RuntimeError):
    """A step of the flow failed; the message names the step and the cause."""

    def __init__(self, step: str, cause: BaseException, note: str | None = None) -> None:
        super().__init__(f"{step}: {type(cause).__name__}: {cause}" + (f"\n{note}" if note else ""))
        self.step = step


def _confirmed(params: EltParameters) -> str:
    """The command that runs this run again with ``confirm_deletes``: its deployment with its
    parameters, or ``tributary run`` for a run started here."""
    deployment = prefect.runtime.deployment.name
    if deployment:
        again = params.model_dump(mode="json", exclude_defaults=True) | {"confirm_deletes": True}
        return command(
            "prefect",
            "deployment",
            "run",
            f"elt/{deployment}",
            "--params",
            json.dumps({"params": again}),
        )
    return command(
        "tributary",
        "run",
        *(f"--source={source}" for source in params.sources),
        "--confirm-deletes",
    )


@task(
    task_run_name="ingest-{source}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=3600,
)
def ingest(
    source: SourceName,
    full_refresh: bool = False,
    refresh_tables: list[str] | None = None,
    window: tuple[date, date] | None = None,
    reconcile_deletes: bool | None = None,
    confirm_deletes: bool = False,
) -> SourceLoad:
    """One dlt pipeline run; a retry first loads what the failed attempt left pending."""
    bounds = _window_bounds(source, window) if window else None
    return run_source(
        source,
        get_settings(),
        full_refresh=full_refresh,
        refresh_tables=refresh_tables or (),
        window=bounds,
        reconcile_deletes=reconcile_deletes,
        confirm_deletes=confirm_deletes,
    )


def _window_bounds(source: SourceName, window: tuple[date, date]) -> tuple[str, str]:
    """The window as the source's cursor values: timestamps (UTC) or dates."""
    start, end = window
    if source == "payments":
        return f"{start.isoformat()}T00:00:00Z", f"{end.isoformat()}T00:00:00Z"
    return start.isoformat(), end.isoformat()


@flow(
    name="elt",
    log_prints=True,
    timeout_seconds=4 * 3600,
    on_failure=[notify_failure],
)
def elt(params: EltParameters | None = None) -> RunReport:
    """Ingest the selected sources, then `dbt build`, publish the marts, record the run."""
    params = params or EltParameters()
    settings = get_settings()
    logger = get_run_logger()
    journal = begin_run(settings, "elt")
    started = time.monotonic()
    loads: list[SourceLoad] = []
    window = params.window()
    try:
        for source in params.sources:
            whole, tables = params.refresh_of(source)
            try:
                load = ingest(
                    source,
                    full_refresh=whole,
                    refresh_tables=tables,
                    window=window if source in WINDOWED_SOURCES else None,
                    reconcile_deletes=params.reconcile_deletes,
                    confirm_deletes=params.confirm_deletes,
                )
            except Exception as exc:
                if isinstance(exc, GuardError) and exc.load is not None:
                    loads.append(exc.load)  # it stopped after loading: its history counts
                note = None
                if isinstance(exc, DeletesStopped):
                    note = (
                        f"If the source really lost those rows, delete them: `{_confirmed(params)}`"
                    )
                raise StepFailed(f"ingest {source}", exc, note=note) from exc
            loads.append(load)
            journal.record(RunReport(warehouse=settings.warehouse, loads=loads))
            logger.info(
                "ingest %s: %d rows into %s (%s)",
                source,
                load.rows_loaded,
                load.dataset,
                ", ".join(
                    f"{t.table} {t.new} new/{t.updated} updated/{t.deleted} deleted"
                    + (f"/{t.quarantined} quarantined" if t.quarantined else "")
                    for t in load.tables
                ),
            )
            for change in load.schema_changes:
                logger.warning("ingest %s: schema drift: %s", source, change.describe())
            for count in load.quarantined:
                logger.warning(
                    "ingest %s: %d row(s) of %s quarantined (%d new): %s; keys %s",
                    source,
                    count.rows,
                    count.table,
                    count.new_rows,
                    count.reason,
                    ", ".join(count.example_keys) or "none",
                )
        try:
            dbt: DbtSummary = run_dbt_resumable(
                params.dbt_args(), settings, run_key=str(prefect.runtime.flow_run.id)
            )
        except Exception as exc:
            raise StepFailed("dbt build", exc, note=say_not_published(exc)) from exc
        try:
            published = publish_marts(dbt)
        except Exception as exc:
            raise StepFailed("publish", exc) from exc
    except Exception as exc:
        failed = RunReport(warehouse=settings.warehouse, loads=loads)
        journal.finish("failed", str(exc), failed)
        raise
    logger.info("dbt build: %d models built, %d tests passed", dbt.models_built, dbt.tests_passed)
    report = RunReport(
        warehouse=settings.warehouse,
        loads=loads,
        dbt=dbt,
        published=published,
        seconds=time.monotonic() - started,
    )
    freshness = journal.finish("completed", None, report)
    report = replace(report, freshness=freshness)
    create_markdown_artifact(
        key="elt-run-report", markdown=report.to_markdown(), description="tributary elt run"
    )
    if warnings := report.warnings():
        notify_warnings("elt", warnings)
    return report


if __name__ == "__main__":
    guard_local_server()
    elt()
