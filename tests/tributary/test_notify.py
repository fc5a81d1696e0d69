"""The webhook is received by a real HTTP server on loopback."""

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from tests.receivers import webhook_receiver
from tributary.notify import failure_message, send_webhook


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    with webhook_receiver() as endpoint:
        yield endpoint


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
    send_webhook(SecretStr(url), "tributary: flow `elt` failed", "Failed step: dbt build")
    assert received == [{"text": "tributary: flow `elt` failed\nFailed step: dbt build"}]
