"""The `dbt` flow: `dbt build` alone, for analysts — select, exclude, full refresh, and the
target: production (the warehouse lock held, a passing build published) or an analyst's dev
warehouse (what changed, deferring the rest to production; no lock, nothing published).

(Not `flows/dbt.py`: Prefect puts this folder on sys.path, where that name would shadow dbt.)
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from typing import Literal

import prefect.runtime
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.hooks import notify_failure
from flows.publish import publish_marts, say_not_published
from tributary import dev
from tributary.dbt import DbtSummary, build_args, run_dbt_resumable
from tributary.lock import warehouse_lock
from tributary.report import RunReport
from tributary.runs import begin_run, local_run
from tributary.settings import Settings, get_settings


class DbtBuildParameters(BaseModel):
    """What one `dbt/build` run builds."""

    model_config = ConfigDict(extra="forbid")

    select: list[str] = Field(default_factory=list, description="dbt --select; empty: all.")
    exclude: list[str] = Field(default_factory=list, description="dbt --exclude.")
    full_refresh: bool = Field(
        default=False, description="dbt --full-refresh: rebuild incremental models from scratch."
    )
    target: Literal["prod", "dev"] = Field(
        default="prod",
        description=(
            "prod: the warehouse, then publish a passing build. dev: an analyst's dev "
            "warehouse — what changed since the published version (state:modified+, or "
            "`select`), the rest read from production; no lock, nothing published."
        ),
    )
    analyst: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        description="target dev: whose dev warehouse (data/dev/<analyst>.duckdb); default $USER.",
    )

    def dbt_args(self) -> list[str]:
        return build_args(self.select, self.exclude, full_refresh=self.full_refresh)


@flow(name="dbt", log_prints=True, timeout_seconds=2 * 3600, on_failure=[notify_failure])
def build(params: DbtBuildParameters | None = None) -> DbtSummary:
    """`dbt build` against the warehouse, holding the warehouse lock; reports every node and
    publishes what a passing build made. ``target: dev``: into an analyst's dev warehouse."""
    params = params or DbtBuildParameters()
    settings = get_settings()
    if params.target == "dev":
        return _dev_build(params, settings)
    journal = begin_run(settings, "dbt")
    with ExitStack() as hold:
        try:
            # The warehouse, held once from the build to the run's record (each step takes
            # it again at no cost): no other run writes between this build and its
            # publication. A retry of this flow run resumes from the failed nodes.
            hold.enter_context(warehouse_lock(settings))
            summary = run_dbt_resumable(
                params.dbt_args(), settings, run_key=str(prefect.runtime.flow_run.id)
            )
        except Exception as exc:
            say_not_published(exc)
            journal.finish("failed", str(exc), RunReport(warehouse=settings.warehouse))
            raise
        get_run_logger().info(
            "dbt %s: %d models built, %d tests passed",
            summary.command,
            summary.models_built,
            summary.tests_passed,
        )
        journal.publishing(RunReport(warehouse=settings.warehouse, dbt=summary))
        try:
            published = publish_marts(summary)
        except Exception as exc:
            journal.finish("failed", str(exc), RunReport(warehouse=settings.warehouse, dbt=summary))
            raise
        report = RunReport(warehouse=settings.warehouse, dbt=summary, published=published)
        journal.finish("completed", None, report)
    create_markdown_artifact(
        key="dbt-build-report", markdown=report.to_markdown(), description="tributary dbt build"
    )
    return summary


def _dev_build(params: DbtBuildParameters, settings: Settings) -> DbtSummary:
    """The build into an analyst's dev warehouse: production's run history and published
    version are not touched."""
    summary = dev.build_in_process(settings, params.dbt_args()[1:], params.analyst)
    path = dev.dev_path(settings, params.analyst)
    get_run_logger().info(
        "dbt build (dev, %s): %d models built, %d tests passed",
        path,
        summary.models_built,
        summary.tests_passed,
    )
    create_markdown_artifact(
        key="dbt-dev-build-report",
        markdown=RunReport(warehouse=path, dbt=summary).to_markdown(),
        description=f"tributary dbt build into the dev warehouse {path.name}",
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.dbt_build [--select …] [--exclude …] [--full-refresh] [--target dev]``:
    the flow once, here, against production (default) or your dev warehouse (as ``tributary
    dev build``, with every node a task run in Prefect)."""
    parser = argparse.ArgumentParser(prog="python -m flows.dbt_build", description=main.__doc__)
    parser.add_argument("--select", "-s", nargs="+", default=[], help="dbt --select")
    parser.add_argument("--exclude", nargs="+", default=[], help="dbt --exclude")
    parser.add_argument("--full-refresh", action="store_true", help="dbt --full-refresh")
    parser.add_argument(
        "--target", choices=["prod", "dev"], default="prod", help="prod (default) or dev"
    )
    parser.add_argument("--analyst", help="--target dev: whose dev warehouse (default $USER)")
    args = parser.parse_args(argv)
    params = DbtBuildParameters(
        select=args.select,
        exclude=args.exclude,
        full_refresh=args.full_refresh,
        target=args.target,
        analyst=args.analyst,
    )
    with local_run("dbt"):
        build(params)


if __name__ == "__main__":
    main()
