"""Real receivers on loopback for notification tests."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


@contextmanager
def webhook_receiver(
    status: int = 200, path: str = "/hook"
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on 127.0.0.1 that records every JSON body POSTed to it and answers
    ``status`` (a failing webhook: 404 for a revoked URL, 500 for a broken service); ``path`` is
    the URL's path, the part of a Slack webhook that is its secret."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(status)
            self.end_headers()
            if status >= 400:  # as Slack does, an error page that names the URL
                self.wfile.write(f"no service at {self.path}".encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{path}", received
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def smtp_receiver(
    login: tuple[str, str] | None = None,
) -> Iterator[tuple[int, list[EmailMessage]]]:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it is sent; with
    ``login`` (user, password) it offers AUTH over the plain connection and takes only those."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    received: list[EmailMessage] = []

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
            received.append(message_from_bytes(envelope.content, policy=default_policy))
            return "250 OK"

    def authenticate(
        server: object, session: object, envelope: object, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False)
        return AuthResult(success=(data.login.decode(), data.password.decode()) == login)

    port = closed_port()
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        **({"authenticator": authenticate, "auth_require_tls": False} if login else {}),
    )
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()
