"""The publish step shared by the `elt` and `dbt` flows: after a passing build, readers get
the new marts at once; after a failing one, the run says what readers keep."""

from __future__ import annotations

import prefect.runtime
from prefect import get_run_logger, task

from tributary.dbt import DbtSummary
from tributary.publish import NotPublished, Publication, not_published, publish
from tributary.settings import get_settings


@task(task_run_name="publish")
def publish_marts(dbt: DbtSummary) -> Publication | NotPublished:
    """Publish what this build made as a new version of the readers' file."""
    settings = get_settings()
    outcome = publish(settings, dbt, flow_run_id=str(prefect.runtime.flow_run.id))
    if isinstance(outcome, NotPublished):
        get_run_logger().warning("%s", outcome)
    else:
        get_run_logger().info(
            "published %s: %s at %s",
            outcome.describe(),
            ", ".join(f"{t.relation} {t.rows}" for t in outcome.tables),
            settings.published,
        )
    return outcome


def say_not_published(failure: BaseException) -> str:
    """Log, and return for the run's error, that a failed build published nothing."""
    note = str(not_published(get_settings(), failure))
    get_run_logger().warning("%s", note)
    return note
