"""The `elt` flow: ingest each source in its own retried task, build dbt, report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import date
from typing import Any, Literal

import prefect.runtime
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.hooks import notify_failure, notify_warnings
from flows.publish import publish_marts, say_not_published
from ingestion import registry
from ingestion.guards import DeletesStopped, GuardError
from ingestion.pipeline import never_loaded, run_source
from ingestion.results import SourceLoad
from tributary.commands import command
from tributary.dbt import DbtSummary, build_args, downstream_of, run_dbt_resumable
from tributary.errors import retry_if_transient
from tributary.lock import warehouse_lock
from tributary.report import RunReport
from tributary.runs import RunJournal, begin_run, journaled_load_ids, local_run
from tributary.settings import DBT_PROJECT_DIR, Settings, get_settings


def _declared(schema: dict[str, Any], names: Callable[[Settings], list[str]]) -> None:
    """The names the sources file declares when the schema is made (at `prefect deploy`), as
    the items' enum: the server refuses another at `prefect deployment run`. The run checks
    them again against the file as it is then."""
    try:
        declared = names(get_settings())
    except Exception:  # no readable file here: the run's own check still names the problem
        return
    if declared:
        schema.setdefault("items", {})["enum"] = declared


class EltParameters(BaseModel):
    """What one `elt` run does. Deployments set some of these; the rest keep their defaults."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=list,
        description="Sources to ingest, in order, by their names in the sources file; empty: "
        "every declared source (or every one with one of `tags`).",
        json_schema_extra=lambda schema: _declared(schema, registry.source_names),
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Ingest the declared sources that carry any of these tags (with `sources` "
        "empty), e.g. [intraday].",
        json_schema_extra=lambda schema: _declared(schema, registry.all_tags),
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
        "`source.table`. Needs confirm_full_refresh.",
    )
    confirm_full_refresh: bool = Field(
        default=False, description="Set to true to go ahead with full_refresh."
    )
    reconcile_deletes: bool | None = Field(
        default=None,
        description="Delete warehouse rows whose key a source database no longer holds (one "
        "key scan per table); default: each table's `reconcile_deletes` in the sources file.",
    )
    confirm_deletes: bool = Field(
        default=False,
        description="Go ahead with deletes that a run stopped because they were more than "
        "TRIBUTARY_DELETE_MAX_SHARE of a table (a source table emptied, a mass soft delete).",
    )
    dbt: Literal["auto", "all", "skip"] = Field(
        default="auto",
        description="auto: build the dbt models downstream of the sources loaded (none when "
        "the project has no models for them); all: the whole project; skip: load only. "
        "dbt_select, when given, decides instead.",
    )
    dbt_select: list[str] = Field(
        default_factory=list, description="dbt --select; empty: as `dbt` says."
    )
    dbt_exclude: list[str] = Field(default_factory=list, description="dbt --exclude.")

    @model_validator(mode="after")
    def _check(self) -> EltParameters:
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("window_start and window_end: give both or neither")
        if self.window_start and self.window_end and self.window_start >= self.window_end:
            raise ValueError(
                f"window_start ({self.window_start}) must be before window_end ({self.window_end})"
            )
        settings = get_settings()
        registry.check_names(self.sources, settings, "sources")
        selected = self.selected()
        if not selected:
            raise ValueError(
                f"tags: no declared source is tagged {' or '.join(self.tags)}; the tags in "
                f"{settings.sources_path} are {', '.join(registry.all_tags(settings)) or 'none'}"
            )
        for entry in self.full_refresh:
            source = entry.split(".", 1)[0]
            if source not in selected:
                raise ValueError(
                    f"full_refresh: {entry!r} is not in a source this run ingests "
                    f"({', '.join(selected)})"
                )
        if self.full_refresh and not self.confirm_full_refresh:
            raise ValueError(
                f"full_refresh drops and reloads {', '.join(self.full_refresh)}: set "
                "confirm_full_refresh to true to go ahead"
            )
        return self

    def selected(self) -> list[str]:
        """The sources this run ingests, in order."""
        if self.sources:
            return list(self.sources)
        settings = get_settings()
        if self.tags:
            return [name for tag in self.tags for name in registry.tagged(settings, tag)]
        return registry.source_names(settings)

    def refresh_of(self, source: str) -> tuple[bool, list[str]]:
        """(whole source?, tables) to drop and reload for one source."""
        whole = source in self.full_refresh
        tables = [e.split(".", 1)[1] for e in self.full_refresh if e.startswith(f"{source}.")]
        return whole, tables

    def window(self) -> tuple[date, date] | None:
        if self.window_start is None or self.window_end is None:
            return None
        return self.window_start, self.window_end

    def dbt_args(self, loaded: list[str]) -> list[str] | None:
        """`dbt build` arguments after loading ``loaded``, or None: no dbt this run."""
        if self.dbt_select:
            return build_args(self.dbt_select, self.dbt_exclude)
        if self.dbt == "skip":
            return None
        if self.dbt == "all":
            return build_args([], self.dbt_exclude)
        select = downstream_of(loaded, DBT_PROJECT_DIR)
        return build_args(select, self.dbt_exclude) if select else None


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
        *(f"--source={source}" for source in params.selected()),
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
    source: str,
    full_refresh: bool = False,
    refresh_tables: list[str] | None = None,
    window: tuple[date, date] | None = None,
    reconcile_deletes: bool | None = None,
    confirm_deletes: bool = False,
) -> SourceLoad:
    """One dlt pipeline run; a retry first loads what the failed attempt left pending."""
    bounds = (window[0].isoformat(), window[1].isoformat()) if window else None
    settings = get_settings()
    return run_source(
        source,
        settings,
        full_refresh=full_refresh,
        refresh_tables=refresh_tables or (),
        window=bounds,
        reconcile_deletes=reconcile_deletes,
        confirm_deletes=confirm_deletes,
        history=lambda: journaled_load_ids(settings),
    )


def _ingest_sources(
    params: EltParameters, settings: Settings, journal: RunJournal, loads: list[SourceLoad]
) -> list[str]:
    """Ingest each source the run selects, in its own retried task, appending each load to
    ``loads`` (and the run's journal) as it completes: a failure keeps those before it. Returns
    the sources ingested."""
    logger = get_run_logger()
    window = params.window()
    selected = params.selected()
    if not params.sources:
        # A run by tag (the 15-minute schedule) builds the models downstream of what it
        # loads, and those may read a source it does not load: on a new warehouse, before
        # the first daily run, they had nothing to read and every run failed in dbt.
        unselected = [s for s in registry.source_names(settings) if s not in selected]
        if first := never_loaded(unselected, settings):
            logger.info(
                "%s never loaded into this warehouse: this run loads %s too",
                ", ".join(first),
                "it" if len(first) == 1 else "them",
            )
            selected += first
    for source in selected:
        whole, tables = params.refresh_of(source)
        try:
            load = ingest(
                source,
                full_refresh=whole,
                refresh_tables=tables,
                window=window if window and registry.windowed(source, settings) else None,
                reconcile_deletes=params.reconcile_deletes,
                confirm_deletes=params.confirm_deletes,
            )
        except Exception as exc:
            if isinstance(exc, GuardError) and exc.load is not None:
                loads.append(exc.load)  # it stopped after loading: its history counts
            note = None
            if isinstance(exc, DeletesStopped):
                again = _confirmed(params)
                note = f"If the source really lost those rows, delete them: `{again}`"
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
        if load.carried:
            logger.warning(
                "ingest %s: the counts include load(s) %s of an earlier run, killed after "
                "loading and before reporting them",
                source,
                ", ".join(load.carried),
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
    return selected


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
    # The warehouse, held once from the build to the run's record (`hold`, below).
    with ExitStack() as hold:
        try:
            selected = _ingest_sources(params, settings, journal, loads)
            dbt: DbtSummary | None = None
            published = None
            dbt_args = params.dbt_args([load.source for load in loads])
            if dbt_args is None:
                logger.info(
                    "dbt: no models to build for %s; nothing published", ", ".join(selected)
                )
            else:
                # From the build to the run's record the warehouse is held once (each step
                # takes it again at no cost): no other run writes between this build and its
                # publication, and no slot is asked of the server as the publish task starts
                # or ends (on SQLite it then often answers 503 and the client waits 2 s).
                hold.enter_context(warehouse_lock(settings))
                try:
                    dbt = run_dbt_resumable(
                        dbt_args, settings, run_key=str(prefect.runtime.flow_run.id)
                    )
                except Exception as exc:
                    raise StepFailed("dbt build", exc, note=say_not_published(exc)) from exc
                journal.publishing(RunReport(warehouse=settings.warehouse, loads=loads, dbt=dbt))
                try:
                    published = publish_marts(dbt)
                except Exception as exc:
                    raise StepFailed("publish", exc) from exc
        except Exception as exc:
            failed = RunReport(warehouse=settings.warehouse, loads=loads)
            journal.finish("failed", str(exc), failed)
            raise
        if dbt is not None:
            logger.info(
                "dbt build: %d models built, %d tests passed", dbt.models_built, dbt.tests_passed
            )
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
    with local_run("elt"):
        elt()
