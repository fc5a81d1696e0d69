"""Failure notifications: a Slack-compatible webhook (a JSON body with a ``text`` field) and
e-mail over SMTP."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from prefect.blocks.notifications import CustomWebhookNotificationBlock
from pydantic import SecretStr

from tributary.settings import Settings


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


def send_email(settings: Settings, subject: str, body: str) -> None:
    """Send the message over SMTP to ``alert_email_to``; the password is never logged."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.alert_email_from
    message["To"] = ", ".join(settings.alert_email_to)
    message.set_content(body)
    assert settings.smtp_host is not None
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_username and settings.smtp_password:
            smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
        smtp.send_message(message)
