"""The `dbt` flow: `dbt build` alone, for analysts — select, exclude, full refresh.

(Not `flows/dbt.py`: Prefect puts this folder on sys.path, where that name would shadow dbt.)
"""

from __future__ import annotations

import argparse

import prefect.runtime
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.hooks import notify_failure
from flows.publish import publish_marts, say_not_published
from tributary.dbt import DbtSummary, build_args, run_dbt_resumable
from tributary.report import RunReport
from tributary.runs import begin_run, guard_local_server
from tributary.settings import get_settings


class DbtBuildParameters(BaseModel):
    """What one `dbt/build` run builds."""

    model_config = ConfigDict(extra="forbid")

    select: list[str] = Field(default_factory=list, description="dbt --select; empty: all.")
    exclude: list[str] = Field(default_factory=list, description="dbt --exclude.")
    full_refresh: bool = Field(
        default=False, description="dbt --full-refresh: rebuild incremental models from scratch."
    )

    def dbt_args(self) -> list[str]:
        return build_args(self.select, self.exclude, full_refresh=self.full_refresh)


@flow(name="dbt", log_prints=True, timeout_seconds=2 * 3600, on_failure=[notify_failure])
def build(params: DbtBuildParameters | None = None) -> DbtSummary:
    """`dbt build` against the warehouse, holding the warehouse lock; reports every node and
    publishes what a passing build made."""
    params = params or DbtBuildParameters()
    settings = get_settings()
    journal = begin_run(settings, "dbt")
    # A retry of this flow run resumes from the failed nodes (`dbt retry`).
    try:
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


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.dbt_build [--select …] [--exclude …] [--full-refresh]``: the flow once,
    here, against production (an analyst's own builds: ``tributary dev build``)."""
    parser = argparse.ArgumentParser(prog="python -m flows.dbt_build", description=main.__doc__)
    parser.add_argument("--select", "-s", nargs="+", default=[], help="dbt --select")
    parser.add_argument("--exclude", nargs="+", default=[], help="dbt --exclude")
    parser.add_argument("--full-refresh", action="store_true", help="dbt --full-refresh")
    args = parser.parse_args(argv)
    guard_local_server()
    build(
        DbtBuildParameters(select=args.select, exclude=args.exclude, full_refresh=args.full_refresh)
    )


if __name__ == "__main__":
    main()
