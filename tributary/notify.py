"""Failure notifications to a Slack-compatible webhook (a JSON body with a ``text`` field)."""

from __future__ import annotations

from prefect.blocks.notifications import CustomWebhookNotificationBlock
from pydantic import SecretStr


def failure_message(
    *, flow_name: str, deployment: str | None, step: str | None, error: str, run_url: str | None
) -> tuple[str, str]:
    """Subject and body that say which run failed, where, why, and where to look."""
    subject = f"tributary: flow `{flow_name}` failed"
    body = "\n".join(
        [
            f"Deployment: {deployment or 'none (run locally)'}",
            f"Failed step: {step or 'unknown'}",
            f"Error: {error}",
            f"Run: {run_url or 'no Prefect UI configured'}",
        ]
    )
    return subject, body


def send_webhook(url: SecretStr, subject: str, body: str) -> None:
    """Post the message with Prefect's webhook block; the URL is a secret and is never logged."""
    block = CustomWebhookNotificationBlock(
        name="tributary", url=url.get_secret_value(), json_data={"text": "{{subject}}\n{{body}}"}
    )
    block.notify(body=body, subject=subject)
