"""Notifications reach a real webhook receiver and a real SMTP server on loopback; a failing
channel never stops the other, and its failure is logged without the secret."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.receivers import closed_port, smtp_receiver, webhook_receiver
from tributary.notify import Delivery, failure_message, notify, send_webhook
from tributary.settings import Settings

SUBJECT = "tributary: flow `elt` failed"
BODY = "Failed step: dbt build"
SMTP_PASSWORD = "smtp-canary-password"
NOTIFY = "tributary.notify"  # the logger outside a flow run


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    with webhook_receiver() as endpoint:
        yield endpoint


@pytest.fixture
def canary() -> str:
    """The secret part of a webhook URL, distinctive enough to search every output for."""
    return f"T0CANARY/B0CANARY/{secrets.token_hex(12)}"


def _settings(
    tmp_path: Path, *, webhook: str | None = None, smtp_port: int | None = None
) -> Settings:
    return Settings(
        data_dir=tmp_path,
        slack_webhook_url=webhook,
        smtp_host="127.0.0.1" if smtp_port else None,
        smtp_port=smtp_port or 25,
        smtp_username="alerts",
        smtp_password=SecretStr(SMTP_PASSWORD),
        alert_email_to=["data-team@example.com"] if smtp_port else [],
    )


def test_failure_message_names_flow_step_error_and_link() -> None:
    subject, body = failure_message(
        flow_name="elt",
        deployment="elt/daily",
        step="ingest payments",
        error="401 Unauthorized",
        run_url="http://ui/runs/flow-run/1",
    )
    assert "elt" in subject
    assert "Deployment: elt/daily" in body
    assert "Failed step: ingest payments" in body
    assert "Error: 401 Unauthorized" in body
    assert "Run: http://ui/runs/flow-run/1" in body


def test_webhook_posts_slack_compatible_json(receiver: tuple[str, list[dict]]) -> None:
    url, received = receiver
    send_webhook(SecretStr(url), SUBJECT, BODY)
    assert received == [{"text": f"{SUBJECT}\n{BODY}"}]


def test_notify_sends_to_every_channel(tmp_path: Path) -> None:
    with (
        webhook_receiver() as (url, received),
        smtp_receiver(login=("alerts", SMTP_PASSWORD)) as (port, mails),
    ):
        deliveries = notify(_settings(tmp_path, webhook=url, smtp_port=port), SUBJECT, BODY)
    assert deliveries == [Delivery("webhook", True), Delivery("email", True)]
    assert received == [{"text": f"{SUBJECT}\n{BODY}"}]
    [mail] = mails
    assert mail["Subject"] == SUBJECT
    assert mail.get_content().strip() == BODY


@pytest.mark.parametrize("status", [404, 500])
def test_failing_webhook_still_sends_the_mail_and_logs_no_secret(
    tmp_path: Path,
    status: int,
    canary: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        webhook_receiver(status=status, path=f"/services/{canary}") as (url, received),
        smtp_receiver(login=("alerts", SMTP_PASSWORD)) as (port, mails),
    ):
        deliveries = notify(_settings(tmp_path, webhook=url, smtp_port=port), SUBJECT, BODY)
    host = url.split("/")[2]
    assert deliveries == [
        Delivery("webhook", False, f"HTTP {status} from {host}"),
        Delivery("email", True),
    ]
    assert len(received) == 1  # the webhook was tried once
    [mail] = mails
    assert mail.get_content().strip() == BODY
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == NOTIFY]
    assert f"NOT sent by webhook: HTTP {status} from {host}" in warning.getMessage()
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, repr(deliveries)):
        assert canary not in text
        assert SMTP_PASSWORD not in text


def test_refused_smtp_still_posts_the_webhook(
    tmp_path: Path, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    with webhook_receiver(path=f"/services/{canary}") as (url, received):
        deliveries = notify(_settings(tmp_path, webhook=url, smtp_port=port), SUBJECT, BODY)
    assert deliveries == [
        Delivery("webhook", True),
        Delivery("email", False, f"ConnectionRefusedError talking to 127.0.0.1:{port}"),
    ]
    assert received == [{"text": f"{SUBJECT}\n{BODY}"}]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == NOTIFY]
    assert f"NOT sent by email: ConnectionRefusedError talking to 127.0.0.1:{port}" in (
        warning.getMessage()
    )
    assert canary not in caplog.text


def test_unreachable_webhook_is_reported_by_host_only(tmp_path: Path, canary: str) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/services/{canary}"
    [delivery] = notify(_settings(tmp_path, webhook=url), SUBJECT, BODY)
    assert delivery == Delivery(
        "webhook", False, f"ConnectionRefusedError posting to 127.0.0.1:{port}"
    )


def test_nothing_configured_sends_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert notify(_settings(tmp_path), SUBJECT, BODY) == []
    assert "No notification channel configured" in caplog.text
