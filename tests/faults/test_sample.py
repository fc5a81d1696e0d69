"""A sample of the fault suite (`make faults`) small enough for every test run: a random
SIGKILL of a first load on SQLite, and bad API rows (a named case) served by an API in a 5xx
storm (an API fault), each followed by a step of the shop and re-runs until one completes;
nothing lost, duplicated, mismatched, stuck or orphaned."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.catalogue import (
    DEFAULT_DURATIONS,
    Context,
    Fault,
    bad_api_rows,
    random_kill,
    run_trial,
)
from tests.faults.checks import Figures
from tests.faults.stack import Stack

pytestmark = pytest.mark.integration
SEED = 3


def _bad_rows_in_a_storm(world: Stack, ctx: Context) -> None:
    # Pages of 100 rows: a few retried answers, not dozens of backoffs.
    world.api_faults(max_page_size=100, error_rate=0.2)
    bad_api_rows(world, ctx)


SAMPLE = (
    Fault(
        "kill-group",
        "kill",
        ("sqlite",),
        "SIGKILL of the process group at a uniform moment of a first load",
        random_kill(main_only=False, phase="first"),
    ),
    Fault(
        "bad-api-rows-in-a-5xx-storm",
        "named",
        ("sqlite",),
        "bad payments served while a fifth of the API's answers are 503",
        _bad_rows_in_a_storm,
    ),
)


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect database for the sample's trials, as the suite has: migrated once."""
    return tmp_path_factory.mktemp("faults") / "prefect"


@pytest.mark.parametrize("fault", SAMPLE, ids=lambda fault: fault.name)
def test_a_fault_trial_loses_nothing(fault: Fault, prefect_home: Path, tmp_path: Path) -> None:
    trial = run_trial(
        fault,
        "sqlite",
        seed=SEED,
        root=tmp_path / "trial",
        prefect_home=prefect_home,
        durations=dict(DEFAULT_DURATIONS),
    )
    assert trial.figures == Figures(), trial.figures.problems
