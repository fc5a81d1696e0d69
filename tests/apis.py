"""A small CRM-like HTTP API for tests of REST API sources, served for real on loopback.

Its data lives in memory (``Crm``); a test reads it to compute what the warehouse must hold and
changes it between runs. Each resource exercises something a real API does:

- ``/accounts``: API-key header, offset pages (``offset``/``limit``, ``total`` in the body), a
  nested object (``address``);
- ``/accounts/{id}/contacts``: the parent's child, ``Link: <…>; rel="next"`` pages, a timestamp
  cursor (``updated_since`` inclusive, ``updated_until`` exclusive); the records do not carry
  their account: only the URL ties them to it;
- ``/deals``: the ``next`` URL in the body, the same timestamp cursor, a nested object
  (``amount``) and a list (``tags``);
- ``/daily-usage``: page numbers (``total_pages`` in the body), a date cursor (``start_date``,
  ``end_date`` both inclusive, as date APIs often are);
- ``/users``: HTTP basic auth instead of the key, page numbers that end on an empty page.

Wrong credentials get 401. ``Crm.repeat`` makes a path (``/deals``,
``/accounts/3/contacts``) serve its second page twice (the page's next link points at itself
once), as an API that retries a page does. ``Crm.requests``
records each request's path and query (never its headers), so a test sees what a run asked for.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

STAGES = ("open", "won", "lost")
PLANS = ("free", "team", "enterprise")
CITIES = (("Lisbon", "PT"), ("Ghent", "BE"), ("Tartu", "EE"), ("Oaxaca", "MX"))
basic = HTTPBasic(auto_error=False)


def iso(moment: datetime) -> str:
    """A UTC moment as the API writes it: ``2026-01-05T10:13:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Crm:
    """The API's data. Contacts hold ``account_id`` here, but the API serves it only in the
    path; ``usage`` is keyed by (account_id, day)."""

    api_key: str
    username: str
    password: str
    accounts: dict[int, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    deals: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[tuple[int, date], dict[str, Any]] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    repeat: set[str] = field(default_factory=set)  # paths whose page 2 is served twice
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def requested(self, path: str) -> list[dict[str, str]]:
        """The query of each request made to ``path`` so far."""
        return [query for seen, query in self.requests if seen == path]


def sample_crm(api_key: str, username: str, password: str) -> Crm:
    """A deterministic CRM: 7 accounts (one without contacts), 12 contacts, 25 deals and
    3 accounts' daily usage from 2025-12-20 to 2026-02-10, changes spread from December 2025
    to March 2026."""
    crm = Crm(api_key=api_key, username=username, password=password)
    start = datetime(2025, 12, 1, 9, 0, tzinfo=UTC)
    contact_id = 0
    for account_id in range(1, 8):
        city, country = CITIES[account_id % len(CITIES)]
        crm.accounts[account_id] = {
            "id": account_id,
            "name": f"Account {account_id}",
            "plan": PLANS[account_id % len(PLANS)],
            "address": {"city": city, "country": country},
            "updated_at": start + timedelta(days=account_id, hours=account_id),
        }
        for n in range(account_id % 4):
            contact_id += 1
            crm.contacts[contact_id] = {
                "id": contact_id,
                "account_id": account_id,
                "name": f"Contact {contact_id}",
                "email": f"c{contact_id}@account{account_id}.example",
                # not in account order: a later account's contacts may be older
                "updated_at": start
                + timedelta(days=(37 * contact_id) % 100 + n, minutes=7 * contact_id),
            }
    for deal_id in range(1, 26):
        crm.deals[deal_id] = {
            "id": deal_id,
            "account_id": deal_id % 7 + 1,
            "stage": STAGES[deal_id % 3],
            "amount": {"value": 1000 + 37 * deal_id, "currency": ("EUR", "USD")[deal_id % 2]},
            "tags": [f"tag{t}" for t in range(deal_id % 3)],
            "updated_at": start + timedelta(days=4 * deal_id, hours=deal_id % 7, minutes=deal_id),
        }
    day = date(2025, 12, 20)
    while day <= date(2026, 2, 10):
        for account_id in (1, 2, 3):
            crm.usage[(account_id, day)] = {
                "account_id": account_id,
                "day": day,
                "calls": (day.toordinal() * account_id) % 997,
            }
        day += timedelta(days=1)
    for user_id in range(1, 6):
        crm.users[user_id] = {
            "id": user_id,
            "login": f"user{user_id}",
            "role": "admin" if user_id == 1 else "member",
        }
    return crm


def _moment(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(status_code=422, detail=f"{name}: not an ISO timestamp") from None
    if moment.tzinfo is None:
        raise HTTPException(status_code=422, detail=f"{name}: a timestamp needs a time zone")
    return moment


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise HTTPException(status_code=422, detail=f"{name}: not an ISO date") from None


def _in_range(moment: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or moment >= since) and (until is None or moment < until)


def _next_url(request: Request, **changes: Any) -> str:
    query = {**request.query_params, **{k: str(v) for k, v in changes.items()}}
    return f"{str(request.base_url).rstrip('/')}{request.url.path}?{urlencode(query)}"


def create_app(crm: Crm) -> FastAPI:
    """The API over ``crm``."""
    app = FastAPI(title="Test CRM API", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        with crm.lock:
            crm.requests.append((request.url.path, dict(request.query_params)))
        return await call_next(request)

    def check_key(key: str | None) -> None:
        if not key or not secrets.compare_digest(key, crm.api_key):
            raise HTTPException(status_code=401, detail="invalid or missing API key")

    def repeat_once(request: Request, page: int) -> bool:
        """Whether this page (the second) of the request's path is to be served again."""
        with crm.lock:
            if page == 2 and request.url.path in crm.repeat:
                crm.repeat.discard(request.url.path)
                return True
        return False

    @app.get("/accounts")
    def accounts(
        x_api_key: Annotated[str | None, Header()] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> dict[str, Any]:
        check_key(x_api_key)
        with crm.lock:
            rows = [crm.accounts[key] for key in sorted(crm.accounts)]
        page = rows[offset : offset + limit]
        return {
            "items": [{**row, "updated_at": iso(row["updated_at"])} for row in page],
            "total": len(rows),
        }

    @app.get("/accounts/{account_id}/contacts")
    def contacts(
        request: Request,
        account_id: int,
        x_api_key: Annotated[str | None, Header()] = None,
        updated_since: str | None = None,
        updated_until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> JSONResponse:
        check_key(x_api_key)
        since = _moment(updated_since, "updated_since")
        until = _moment(updated_until, "updated_until")
        with crm.lock:
            if account_id not in crm.accounts:
                raise HTTPException(status_code=404, detail=f"no account {account_id}")
            rows = sorted(
                (
                    row
                    for row in crm.contacts.values()
                    if row["account_id"] == account_id
                    and _in_range(row["updated_at"], since, until)
                ),
                key=lambda row: (row["updated_at"], row["id"]),
            )
        chunk = rows[(page - 1) * limit : page * limit]
        body = [
            {key: value for key, value in row.items() if key != "account_id"}
            | {"updated_at": iso(row["updated_at"])}
            for row in chunk
        ]
        headers = {}
        following = page if repeat_once(request, page) else page + 1
        if following != page + 1 or page * limit < len(rows):
            headers["Link"] = f'<{_next_url(request, page=following)}>; rel="next"'
        return JSONResponse(body, headers=headers)

    @app.get("/deals")
    def deals(
        request: Request,
        x_api_key: Annotated[str | None, Header()] = None,
        updated_since: str | None = None,
        updated_until: str | None = None,
        per_page: Annotated[int, Query(ge=1, le=100)] = 10,
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> dict[str, Any]:
        check_key(x_api_key)
        since = _moment(updated_since, "updated_since")
        until = _moment(updated_until, "updated_until")
        with crm.lock:
            rows = sorted(
                (row for row in crm.deals.values() if _in_range(row["updated_at"], since, until)),
                key=lambda row: (row["updated_at"], row["id"]),
            )
        chunk = rows[(page - 1) * per_page : page * per_page]
        following = page if repeat_once(request, page) else page + 1
        more = following == page or page * per_page < len(rows)
        return {
            "data": [{**row, "updated_at": iso(row["updated_at"])} for row in chunk],
            "next": _next_url(request, page=following) if more else None,
        }

    @app.get("/daily-usage")
    def daily_usage(
        x_api_key: Annotated[str | None, Header()] = None,
        start_date: str | None = None,
        end_date: str | None = None,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> dict[str, Any]:
        check_key(x_api_key)
        first, last = _day(start_date, "start_date"), _day(end_date, "end_date")
        with crm.lock:
            rows = [
                crm.usage[key]
                for key in sorted(crm.usage, key=lambda key: (key[1], key[0]))
                if (first is None or key[1] >= first) and (last is None or key[1] <= last)
            ]
        chunk = rows[(page - 1) * page_size : page * page_size]
        return {
            "data": [{**row, "day": row["day"].isoformat()} for row in chunk],
            "page": page,
            "total_pages": max(1, -(-len(rows) // page_size)),
        }

    @app.get("/users")
    def users(
        credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)],
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> dict[str, Any]:
        if (
            credentials is None
            or not secrets.compare_digest(credentials.username, crm.username)
            or not secrets.compare_digest(credentials.password, crm.password)
        ):
            raise HTTPException(
                status_code=401,
                detail="invalid or missing credentials",
                headers={"WWW-Authenticate": "Basic"},
            )
        with crm.lock:
            rows = [crm.users[key] for key in sorted(crm.users)]
        return {"users": rows[(page - 1) * page_size : page * page_size]}

    return app


@contextmanager
def serve_crm(crm: Crm, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the API on a free loopback port in a thread (as ``demo.api`` does); yields its
    base URL and stops it on exit."""
    config = uvicorn.Config(
        create_app(crm),
        host=host,
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="crm-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the CRM API did not start on {host}")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
