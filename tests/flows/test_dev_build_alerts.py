"""The `dbt` flow's failure hook: a production build that fails alerts the team; a build into an
analyst's dev warehouse (`target: dev`) that fails alerts nobody — it is the analyst's own run.
Both fail the same way here (nothing is published yet, which a dev build needs), in-process
against the session's Prefect server, with a real webhook receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.dbt_build import DbtBuildParameters, build
from tests.receivers import webhook_receiver
from tributary.settings import get_settings

pytestmark = pytest.mark.integration  # the session's Prefect server


@pytest.fixture
def alerts(
    tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[dict[str, Any]]]:
    with webhook_receiver() as (hook_url, received):
        monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TRIBUTARY_SLACK_WEBHOOK_URL", hook_url)
        get_settings.cache_clear()
        yield received
    get_settings.cache_clear()


def test_a_failed_dev_build_alerts_nobody(alerts: list[dict[str, Any]]) -> None:
    state = build(DbtBuildParameters(target="dev", analyst="ana"), return_state=True)
    assert state.is_failed()
    assert "nothing is published" in str(state.result(raise_on_failure=False))
    assert alerts == []


def test_a_failed_production_build_alerts(alerts: list[dict[str, Any]]) -> None:
    state = build(DbtBuildParameters(), return_state=True)
    assert state.is_failed()
    [alert] = alerts
    assert "dbt" in alert["text"] and "failed" in alert["text"].lower(), alert
