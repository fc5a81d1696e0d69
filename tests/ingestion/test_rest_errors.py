"""An API that answers with an error (not a refusal) fails the run without showing the
request's query: an API key declared with ``location: query`` travels there, under whatever
name the API chose. Real HTTP on loopback; the failure's whole chain, as Prefect logs it, is
searched for the key."""

from __future__ import annotations

import secrets
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ingestion.pipeline import PipelineFailed, run_source
from tests.sourcefiles import scratch_settings
from tributary.errors import is_transient

KEY_VAR = "SOURCES__WEATHER__APPID"  # the dlt secret sources.weather.appid
REQUESTS: list[str] = []  # the paths (with their queries) the API was asked for


class _Errors(BaseHTTPRequestHandler):
    """``/stations``: 404; ``/readings``: 503 — whatever the query."""

    def do_GET(self) -> None:
        REQUESTS.append(self.path)
        status = 404 if self.path.startswith("/stations") else 503
        body = b'{"error": "no such thing"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Errors)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _weather(url: str, path: str) -> dict[str, Any]:
    return {
        "type": "rest_api",
        "client": {
            "base_url": url,
            "auth": {
                "type": "api_key",
                "name": "appid",  # not a name dlt's own URL redaction knows
                "location": "query",
                "api_key": {"secret": "sources.weather.appid"},
            },
        },
        "resources": [
            {
                "name": "stations",
                "primary_key": "id",
                "endpoint": {"path": path, "paginator": "single_page"},
            }
        ],
    }


@pytest.mark.parametrize(
    ("path", "status", "transient"), [("stations", 404, False), ("readings", 503, True)]
)
def test_an_error_answer_fails_the_run_without_the_query_that_holds_the_key(
    api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    status: int,
    transient: bool,
) -> None:
    key = f"key-{secrets.token_hex(12)}"
    monkeypatch.setenv(KEY_VAR, key)
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "2")  # a 503 is retried, once here
    monkeypatch.setenv("RUNTIME__REQUEST_BACKOFF_FACTOR", "0")
    REQUESTS.clear()
    settings = scratch_settings(
        tmp_path, extra={"weather": _weather(api_url, path)}, only=["weather"]
    )

    with pytest.raises(PipelineFailed) as failure:
        run_source("weather", settings)

    # The key did travel in the query, and the server answered each attempt with the error.
    attempts = 2 if transient else 1
    assert len(REQUESTS) == attempts, REQUESTS
    assert all(f"appid={key}" in request for request in REQUESTS)
    message = str(failure.value)
    assert f"{status} " in message and f"/{path}" in message, message
    chain = "".join(traceback.format_exception(failure.value))
    assert key not in chain and key[-12:] not in chain, chain
    assert is_transient(failure.value) is transient  # the status still decides retries
