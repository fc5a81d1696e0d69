"""A failing `elt` run fails fast on a permanent error and tells a real webhook and a real
SMTP server why."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.api import serve_in_background
from demo.generate import generate
from demo.paths import shop_url
from flows.elt import EltParameters, StepFailed, elt
from tests.receivers import smtp_receiver, webhook_receiver
from tributary.settings import Settings, get_settings


def test_wrong_token_fails_at_once_and_notifies(
    tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path)
    generate(shop_url(settings), settings.demo_api_db, orders=50, seed=5)
    with (
        serve_in_background(settings.demo_api_db, "the-right-token") as api_url,
        webhook_receiver() as (hook_url, received),
        smtp_receiver() as (smtp_port, mails),
    ):
        monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TRIBUTARY_PAYMENTS_API_URL", api_url)
        monkeypatch.setenv("TRIBUTARY_SLACK_WEBHOOK_URL", hook_url)
        monkeypatch.setenv("TRIBUTARY_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("TRIBUTARY_SMTP_PORT", str(smtp_port))
        monkeypatch.setenv("TRIBUTARY_ALERT_EMAIL_TO", '["data-team@example.com"]')
        monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "a-wrong-token")
        get_settings.cache_clear()
        try:
            with pytest.raises(StepFailed, match="ingest payments") as failure:
                elt(EltParameters(sources=["payments"]))
        finally:
            get_settings.cache_clear()

    assert "401" in str(failure.value)
    [message] = received
    text = message["text"]
    assert text.startswith("tributary: flow `elt` failed")
    assert "Failed step: ingest payments" in text
    assert "401" in text
    assert "a-wrong-token" not in text and "the-right-token" not in text
    assert "Run: " in text

    [mail] = mails
    assert mail["Subject"] == "tributary: flow `elt` failed"
    assert mail["To"] == "data-team@example.com"
    content = mail.get_content()
    assert "Failed step: ingest payments" in content
    assert "401" in content
    assert "a-wrong-token" not in content
