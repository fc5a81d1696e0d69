"""A failing `elt` run whose notification channels fail too: the other channel still gets the
alert, the failure to notify is logged, and the webhook's secret URL path appears nowhere —
not in the run's stdout/stderr, not in the Prefect server's log table, not in its state.

The run is `python -m flows.elt` against the session's Prefect server, so everything it prints
is captured and everything it logs is in that server's database."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from uuid import UUID

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import Log
from prefect.settings import PREFECT_API_URL

from demo.api import serve_in_background
from demo.generate import generate
from demo.paths import shop_url
from tests.receivers import closed_port, smtp_receiver, webhook_receiver
from tributary.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

SMTP_PASSWORD = "smtp-canary-" + secrets.token_hex(8)


@dataclass
class FailedRun:
    output: str
    flow_run_id: UUID
    state_message: str
    logs: list[Log]
    alerts: list[dict[str, Any]]
    mails: list[EmailMessage]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("notify"))
    generate(shop_url(settings), settings.demo_api_db, orders=40, seed=9)
    with serve_in_background(settings.demo_api_db, "the-right-token") as api_url:
        yield settings, api_url


def _read_logs(flow_run_id: UUID) -> list[Log]:
    logs: list[Log] = []
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        while page := client.read_logs(log_filter=log_filter, limit=200, offset=len(logs)):
            logs += page
    return logs


def _failing_run(
    shop: tuple[Settings, str], *, webhook_status: int | None, smtp_up: bool, canary: str
) -> FailedRun:
    """`python -m flows.elt` with a wrong API token (it fails at `ingest payments`, at once),
    a webhook answering ``webhook_status`` (None: no webhook) on a URL whose path is
    ``canary``, and an SMTP server that is up or refuses connections."""
    settings, api_url = shop
    hook: AbstractContextManager[tuple[str | None, list[dict[str, Any]]]] = (
        webhook_receiver(status=webhook_status, path=f"/services/{canary}")
        if webhook_status
        else nullcontext((None, []))
    )
    mail: AbstractContextManager[tuple[int, list[EmailMessage]]] = (
        smtp_receiver(login=("alerts", SMTP_PASSWORD))
        if smtp_up
        else nullcontext((closed_port(), []))
    )
    with hook as (hook_url, alerts), mail as (smtp_port, mails):
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TRIBUTARY_", "SOURCES__"))
        }
        env.update(
            PREFECT_API_URL=PREFECT_API_URL.value(),
            TRIBUTARY_DATA_DIR=str(settings.data_dir),
            TRIBUTARY_PAYMENTS_API_URL=api_url,
            TRIBUTARY_FX_API_URL=api_url,
            TRIBUTARY_SMTP_HOST="127.0.0.1",
            TRIBUTARY_SMTP_PORT=str(smtp_port),
            TRIBUTARY_SMTP_USERNAME="alerts",
            TRIBUTARY_SMTP_PASSWORD=SMTP_PASSWORD,
            TRIBUTARY_ALERT_EMAIL_TO='["data-team@example.com"]',
            SOURCES__PAYMENTS__TOKEN="a-wrong-token",
            DBT_LOG_LEVEL="warn",
        )
        if hook_url:
            env["TRIBUTARY_SLACK_WEBHOOK_URL"] = hook_url
        run = subprocess.run(
            [sys.executable, "-m", "flows.elt"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        [(flow_run_id, error)] = warehouse.execute(
            "select flow_run_id, error from ops.pipeline_runs where status = 'failed' "
            "order by started_at desc limit 1"
        ).fetchall()
    assert "ingest payments" in error and "401" in error
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    assert state is not None and state.is_failed()
    return FailedRun(
        output=output,
        flow_run_id=UUID(flow_run_id),
        state_message=state.message or "",
        logs=_read_logs(UUID(flow_run_id)),
        alerts=alerts,
        mails=mails,
    )


def _assert_no_secret(run: FailedRun, canary: str) -> None:
    assert run.logs, "the run's logs are in the server's log table"
    for where, text in [
        ("stdout/stderr", run.output),
        ("the log table", "\n".join(log.message for log in run.logs)),
        ("the state message", run.state_message),
    ]:
        assert canary not in text, where
        assert SMTP_PASSWORD not in text, where


def _warnings(run: FailedRun) -> list[str]:
    return [log.message for log in run.logs if log.level >= 30]


@pytest.mark.parametrize("status", [404, 500])
def test_failing_webhook_still_emails_and_leaks_no_url(
    shop: tuple[Settings, str], prefect_server: None, status: int
) -> None:
    canary = f"T0CANARY/B0CANARY/{secrets.token_hex(12)}"
    run = _failing_run(shop, webhook_status=status, smtp_up=True, canary=canary)

    assert len(run.alerts) == 1  # the webhook was tried
    [mail] = run.mails
    assert mail["Subject"] == "tributary: flow `elt` failed"
    assert "Failed step: ingest payments" in mail.get_content()
    [warning] = [w for w in _warnings(run) if "NOT sent by webhook" in w]
    assert f"HTTP {status} from 127.0.0.1:" in warning
    assert f"NOT sent by webhook: HTTP {status} from 127.0.0.1:" in run.output
    assert any("sent by email" in log.message for log in run.logs)
    _assert_no_secret(run, canary)


def test_refused_smtp_still_posts_the_webhook(
    shop: tuple[Settings, str], prefect_server: None
) -> None:
    canary = f"T0CANARY/B0CANARY/{secrets.token_hex(12)}"
    run = _failing_run(shop, webhook_status=200, smtp_up=False, canary=canary)

    [alert] = run.alerts
    assert alert["text"].startswith("tributary: flow `elt` failed")
    assert "Failed step: ingest payments" in alert["text"]
    [warning] = [w for w in _warnings(run) if "NOT sent by email" in w]
    assert "ConnectionRefusedError talking to 127.0.0.1:" in warning
    assert "NOT sent by email: ConnectionRefusedError" in run.output
    _assert_no_secret(run, canary)
