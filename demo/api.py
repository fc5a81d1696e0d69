"""The payment provider's HTTP API: payments (cursor pages, bearer token, ``updated_since``)
and daily exchange rates (page numbers), with fault knobs for reliability tests."""

from __future__ import annotations

import base64
import math
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_PAGE = 1_000


class Faults(BaseModel):
    """Misbehaviour on purpose, as fractions of requests; all off by default. A running server
    reads them on every request, so a test may change them between (or during) runs."""

    model_config = ConfigDict(validate_assignment=True)

    error_rate: float = Field(0.0, ge=0, le=1, description="Answer 503.")
    rate_limit_rate: float = Field(
        0.0, ge=0, le=1, description="Answer 429 with Retry-After: retry_after_seconds."
    )
    retry_after_seconds: int = Field(1, ge=0, description="The Retry-After of a 429.")
    latency_ms: int = Field(0, ge=0, description="Added to every request.")
    truncate_rate: float = Field(
        0.0, ge=0, le=1, description="Answer 200 with the first half of the JSON body only."
    )
    disconnect_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Send the headers and half the body, then close the connection (the "
        "server gone mid-page).",
    )
    repeat_page_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Send a payments page whose next_cursor asks for the same page again.",
    )
    max_page_size: int | None = Field(
        None, ge=1, description="Serve at most this many rows per page, whatever is asked."
    )
    seed: int = 0


def _iso(stored: str) -> str:
    """'YYYY-MM-DD HH:MM:SS' as stored (UTC) → ISO 8601 with 'Z'."""
    return stored.replace(" ", "T") + "Z"


def _stored(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _encode_cursor(updated_at: str, payment_id: str) -> str:
    return base64.urlsafe_b64encode(f"{updated_at}|{payment_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        updated_at, payment_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    except ValueError as exc:
        raise HTTPException(status_code=400, detail="invalid cursor") from exc
    return updated_at, payment_id


def create_app(db_path: Path, token: str, *, faults: Faults | None = None) -> FastAPI:
    """The API over the provider's SQLite store at ``db_path``."""
    app = FastAPI(title="Sample shop payments API", docs_url=None, redoc_url=None)
    faults = faults or Faults()
    chance = random.Random(faults.seed)
    app.add_middleware(_Misbehave, faults=faults, chance=chance)

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(db_path)
        connection.row_factory = sqlite3.Row
        return connection

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/payments")
    def payments(
        authorization: Annotated[str | None, Header()] = None,
        updated_since: datetime | None = None,
        updated_until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: str | None = None,
    ) -> JSONResponse:
        if not authorization or not secrets.compare_digest(authorization, f"Bearer {token}"):
            return JSONResponse({"error": "invalid or missing bearer token"}, status_code=401)
        limit = min(limit, faults.max_page_size or limit)
        where, params = ["1 = 1"], []
        if updated_since is not None:
            where.append("updated_at >= ?")
            params.append(_stored(updated_since))
        if updated_until is not None:
            where.append("updated_at < ?")
            params.append(_stored(updated_until))
        if cursor:
            after_updated, after_id = _decode_cursor(cursor)
            where.append("(updated_at > ? or (updated_at = ? and payment_id > ?))")
            params += [after_updated, after_updated, after_id]
        with closing(connect()) as connection:
            rows = connection.execute(
                f"select * from payments where {' and '.join(where)}"
                " order by updated_at, payment_id limit ?",
                [*params, limit + 1],
            ).fetchall()
        page = rows[:limit]
        next_cursor = (
            _encode_cursor(page[-1]["updated_at"], page[-1]["payment_id"])
            if len(rows) > limit
            else None
        )
        if faults.repeat_page_rate and chance.random() < faults.repeat_page_rate:
            # The same page again: from the cursor given, or from the start (before every row).
            next_cursor = cursor or _encode_cursor("", "")
        data = [
            {
                **dict(row),
                "created_at": _iso(row["created_at"]),
                "updated_at": _iso(row["updated_at"]),
            }
            for row in page
        ]
        return JSONResponse({"data": data, "next_cursor": next_cursor})

    @app.get("/exchange-rates")
    def exchange_rates(
        start_date: date | None = None,
        end_date: date | None = None,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> dict[str, Any]:
        page_size = min(page_size, faults.max_page_size or page_size)
        where, params = ["1 = 1"], []
        if start_date is not None:
            where.append("date >= ?")
            params.append(start_date.isoformat())
        if end_date is not None:
            where.append("date <= ?")
            params.append(end_date.isoformat())
        condition = " and ".join(where)
        with closing(connect()) as connection:
            total = connection.execute(
                f"select count(*) from exchange_rates where {condition}", params
            ).fetchone()[0]
            rows = connection.execute(
                f"select date, base, quote, rate from exchange_rates where {condition}"
                " order by date, quote limit ? offset ?",
                [*params, page_size, (page - 1) * page_size],
            ).fetchall()
        return {
            "data": [dict(row) for row in rows],
            "page": page,
            "page_size": page_size,
            "total_pages": max(1, math.ceil(total / page_size)),
            "total": total,
        }

    return app


class _Misbehave:
    """The fault knobs, as ASGI middleware: it decides before the app answers (latency, 503,
    429) or spoils the answer on its way out (a truncated body, a connection closed mid-body)."""

    def __init__(self, app: ASGIApp, faults: Faults, chance: random.Random) -> None:
        self.app, self.faults, self.chance = app, faults, chance

    def _draw(self, rate: float) -> bool:
        return bool(rate) and self.chance.random() < rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        faults = self.faults
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        if self._draw(faults.error_rate):
            await JSONResponse({"error": "service unavailable"}, status_code=503)(
                scope, receive, send
            )
            return
        if self._draw(faults.rate_limit_rate):
            await JSONResponse(
                {"error": "rate limited"},
                status_code=429,
                headers={"Retry-After": str(faults.retry_after_seconds)},
            )(scope, receive, send)
            return
        truncate = self._draw(faults.truncate_rate)
        disconnect = self._draw(faults.disconnect_rate)
        if not truncate and not disconnect:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
        half = body[: len(body) // 2]
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        # Disconnecting announces the whole body, sends half and returns: the server then
        # closes the socket with the response unfinished.
        length = len(half) if truncate else len(body)
        await send({**start, "headers": [*headers, (b"content-length", str(length).encode())]})
        await send({"type": "http.response.body", "body": half, "more_body": disconnect})


@contextmanager
def serve_in_background(
    db_path: Path,
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults | None = None,
) -> Iterator[str]:
    """Serve the API on loopback in a thread; yields its base URL and stops it on exit."""
    config = uvicorn.Config(
        create_app(Path(db_path), token, faults=faults),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="demo-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the demo API did not start on {host}:{port}")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
