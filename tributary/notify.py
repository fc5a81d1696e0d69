"""Notifications: a Slack-compatible webhook (a JSON body with a ``text`` field) and e-mail over
SMTP. ``notify`` sends to every configured channel; one failing never stops another, and no
secret (the webhook URL, whose path is the credential, or the SMTP password) reaches a log."""

from __future__ import annotations

import http.client
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal
from urllib.parse import urlsplit

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from pydantic import SecretStr

from tributary.settings import Settings

WEBHOOK_TIMEOUT_SECONDS = 10
SMTP_TIMEOUT_SECONDS = 30

Channel = Literal["webhook", "email"]


@dataclass(frozen=True)
class Delivery:
    """What happened on one channel: ``reason`` says why it failed, without secrets."""

    channel: Channel
    delivered: bool
    reason: str | None = None


class DeliveryFailed(RuntimeError):
    """A channel refused or could not take the message; the text holds no secret."""


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow or task run's logger inside a run, this module's logger outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


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


def warning_message(
    *, flow_name: str, deployment: str | None, warnings: list[str], run_url: str | None
) -> tuple[str, str]:
    """Subject and body for a run that completed but has something to say."""
    subject = f"tributary: flow `{flow_name}` completed with warnings"
    body = "\n".join(
        [
            f"Deployment: {deployment or 'none (run locally)'}",
            *(f"- {warning}" for warning in warnings),
            f"Run: {run_url or 'no Prefect UI configured'}",
        ]
    )
    return subject, body


def notify(settings: Settings, subject: str, body: str) -> list[Delivery]:
    """Send the message to every configured channel, each on its own: a channel that fails is
    logged as a warning (channel, status or exception type, host) and the next one still goes.
    Returns one ``Delivery`` per configured channel; none when nothing is configured."""
    logger = run_logger()
    deliveries: list[Delivery] = []
    url = settings.slack_webhook_url
    if url is not None:
        deliveries.append(_deliver("webhook", lambda: send_webhook(url, subject, body)))
    if settings.smtp_host is not None:
        deliveries.append(_deliver("email", lambda: send_email(settings, subject, body)))
    if not deliveries:
        logger.info(
            "No notification channel configured (TRIBUTARY_SLACK_WEBHOOK_URL, "
            "TRIBUTARY_SMTP_HOST); not sending %r.",
            subject,
        )
    for delivery in deliveries:
        if delivery.delivered:
            logger.info("Notification %r sent by %s.", subject, delivery.channel)
        else:
            logger.warning(
                "Notification %r NOT sent by %s: %s", subject, delivery.channel, delivery.reason
            )
    return deliveries


def _deliver(channel: Channel, send: Callable[[], None]) -> Delivery:
    try:
        send()
    except DeliveryFailed as exc:
        return Delivery(channel, delivered=False, reason=str(exc))
    except Exception as exc:  # anything else: its type only, its text may hold a secret
        return Delivery(channel, delivered=False, reason=type(exc).__name__)
    return Delivery(channel, delivered=True)


def send_webhook(url: SecretStr, subject: str, body: str) -> None:
    """POST ``{"text": subject + body}`` to the webhook; raises ``DeliveryFailed`` naming the
    status or error and the host, never the path or query (they are the credential).

    Posted with the standard library, not Prefect's ``CustomWebhookNotificationBlock``: the
    block raises httpx's ``HTTPStatusError``, whose message is the full URL, so a 404 put the
    secret into stdout and Prefect's log table; httpx also logs every request's URL at INFO.
    ``urllib`` logs nothing, and its errors are turned into secret-free ones here."""
    secret = url.get_secret_value()
    host = urlsplit(secret).netloc.rpartition("@")[2]  # never user:password@
    request = urllib.request.Request(
        secret,
        data=json.dumps({"text": f"{subject}\n{body}"}).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "tributary"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS):
            pass
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DeliveryFailed(f"HTTP {exc.code} from {host}") from None
    except urllib.error.URLError as exc:
        cause = exc.reason if isinstance(exc.reason, BaseException) else exc
        raise DeliveryFailed(f"{type(cause).__name__} posting to {host}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"{type(exc).__name__} posting to {host}") from None


def send_email(settings: Settings, subject: str, body: str) -> None:
    """Send the message over SMTP to ``alert_email_to``; raises ``DeliveryFailed`` naming the
    SMTP code or error and the server, never the password."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.alert_email_from
    message["To"] = ", ".join(settings.alert_email_to)
    message.set_content(body)
    assert settings.smtp_host is not None
    server = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_SECONDS
        ) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username and settings.smtp_password:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(f"{type(exc).__name__} (SMTP {exc.smtp_code}) from {server}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(f"{type(exc).__name__} talking to {server}") from None
