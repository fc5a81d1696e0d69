"""No secret is written anywhere a run leaves text: canary secrets — the shop database's
password, the payments API token (the right one, and a wrong one that gets a 401), the webhook
URL's path, the SMTP password — are planted in one set of `python -m flows.elt` runs: one
SIGKILLed mid-ingest on its first load (PostgreSQL's bulk path), the next one recording that
crash, quarantining a payment, publishing and alerting, one failing with a 401 while the
webhook answers 404 and the e-mail still goes out with a login, and one stopped by a missing
setting. None of the canaries, nor a piece of one, may appear in those runs' stdout/stderr,
Prefect's database (logs, parameters, states, artifacts, events) and results, the warehouse or
any published version (every row of every table, dlt's decoded state included), the data
folder (pipelines' states, traces, schemas and packages, gzipped or parquet; the run journal)
or dbt's `target/` and `logs/`.

The scanner reads each store the way its text is kept (rows, not only the bytes of a file in
which DuckDB, parquet, gzip, base64 and dlt's state hide strings); a self-check plants canaries
into scratch copies of each kind of store and requires the scanner to find each one.

Found this way: pydantic's error for invalid settings carried every setting read, secrets
included — cut short in the printed message, whole in the pickled result Prefect keeps
(`tributary.settings.get_settings` now raises a ConfigurationError without them)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dlt.common.versioned_state import compress_state, decompress_state
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from demo.api import serve_in_background
from demo.generate import generate
from tests.receivers import smtp_receiver, webhook_receiver
from tests.servers import throwaway_database
from tributary.settings import DBT_PROJECT_DIR, PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

ORDERS = 1_000
SMTP_USER = "alerts"
QUARANTINED = "p-canary-xyz"  # a payment in a currency the contract does not know

RUN_TIMEOUT_SECONDS = 600
# Each canary ends in 20 random hex digits; any 12 of them in a row (48 bits) found anywhere
# is a piece of the secret, not chance.
FRAGMENT = 12
# A run of base64 long enough to hide a canary, possibly wrapped at 76 characters.
BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4}\n?){12,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


# --- the scanner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    place: str
    canary: str  # the canary's name, never its value


@dataclass
class Scanner:
    """Looks for each canary in text, bytes, files and whole folders, reading each kind of store
    as its text is kept. ``covered`` counts what was read, per kind, so a clean result can be
    checked for having looked somewhere."""

    canaries: dict[str, str]  # name → value
    scratch: Path  # where SQLite files are copied to be read with their WAL
    covered: Counter[str] = field(default_factory=Counter)

    def text(self, place: str, content: str) -> list[Found]:
        """Each canary whole, or a part of its random tail long enough to be no accident (a
        secret cut short, as pydantic shortens the values in its errors, is still a leak);
        and the same in every run of base64 the text holds, decoded (and inflated, when it is
        zlib: dlt's state, Prefect's results)."""
        found = self._matches(place, content)
        for blob in BASE64.findall(content):
            with suppress(ValueError):
                decoded = base64.b64decode(blob.replace("\n", ""), validate=True)
                self.covered["base64 decoded"] += 1
                with suppress(zlib.error):
                    decoded = zlib.decompress(decoded)
                found += self._matches(f"{place} (base64)", decoded.decode("latin-1"))
        return found

    def _matches(self, place: str, content: str) -> list[Found]:
        found = []
        for name, value in self.canaries.items():
            if value in content:
                found.append(Found(place, name))
                continue
            tail = value.rsplit("-", 1)[1]
            parts = (tail[i : i + FRAGMENT] for i in range(len(tail) - FRAGMENT + 1))
            if any(part in content for part in parts):
                found.append(Found(place, f"{name} (in part)"))
        return found

    def data(self, place: str, content: bytes) -> list[Found]:
        return self.text(place, content.decode("latin-1"))

    def tree(self, root: Path, label: str) -> list[Found]:
        found = []
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.covered[f"files under {label}"] += 1
                found += self.file(path, f"{label}/{path.relative_to(root)}")
        return found

    def file(self, path: Path, place: str) -> list[Found]:
        """The file's bytes, and what they hold once decoded: gzip, parquet, DuckDB, SQLite,
        pickle."""
        content = path.read_bytes()
        self.covered["files"] += 1
        found = self.data(place, content)
        if content[:2] == b"\x1f\x8b":
            self.covered["gzip"] += 1
            found += self.data(f"{place} (gunzipped)", gzip.decompress(content))
        elif content[:4] == b"PAR1":
            self.covered["parquet"] += 1
            found += self.text(f"{place} (rows)", repr(pq.read_table(path).to_pylist()))
        elif content[8:12] == b"DUCK":
            found += self.duckdb(path, place)
        elif content[:16] == b"SQLite format 3\0":
            found += self.sqlite(path, place)
        elif path.suffix == ".pickle":
            self.covered["pickle"] += 1
            found += self.text(f"{place} (unpickled)", repr(pickle.loads(content)))
        return found

    def duckdb(self, path: Path, place: str) -> list[Found]:
        """Every row of every table, the catalog's SQL, and dlt's compressed state decoded."""
        self.covered["duckdb files"] += 1
        found = []
        with duckdb.connect(str(path), read_only=True) as connection:
            tables = connection.execute(
                "select schema_name, table_name from duckdb_tables() "
                "where database_name = current_database() order by all"
            ).fetchall()
            for schema, table in tables:
                name = f'"{schema}"."{table}"'
                rows = connection.execute(f"select * from {name}").fetchall()
                self.covered["duckdb tables"] += 1
                self.covered["duckdb rows"] += len(rows)
                found += self.text(f"{place}: {schema}.{table}", repr(rows))
                if table == "_dlt_pipeline_state":
                    for (state,) in connection.execute(f"select state from {name}").fetchall():
                        self.covered["dlt states decoded"] += 1
                        decoded = json.dumps(decompress_state(state), default=str)
                        found += self.text(f"{place}: {schema}.{table} (decoded state)", decoded)
            catalog = connection.execute(
                "select sql from duckdb_views() where not internal "
                "union all select sql from duckdb_tables() "
                "union all select comment from duckdb_columns() where comment is not null"
            ).fetchall()
            found += self.text(f"{place}: catalog", repr(catalog))
        return found

    def sqlite(self, path: Path, place: str) -> list[Found]:
        """Every row of every table, read from a copy that includes the write-ahead log."""
        self.covered["sqlite files"] += 1
        copy = self.scratch / f"sqlite-{secrets.token_hex(4)}" / path.name
        copy.parent.mkdir(parents=True)
        for suffix in ("", "-wal"):
            if Path(f"{path}{suffix}").exists():
                shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
        found = []
        with sqlite3.connect(copy) as connection:
            tables = [
                row[0]
                for row in connection.execute(
                    "select name from sqlite_master where type = 'table' order by name"
                )
            ]
            for table in tables:
                rows = connection.execute(f'select * from "{table}"').fetchall()
                self.covered["sqlite tables"] += 1
                self.covered[f"sqlite rows in {table}"] += len(rows)
                found += self.text(f"{place}: {table}", repr(rows))
        connection.close()
        shutil.rmtree(copy.parent)
        return found


# --- the runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    name: str
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Stack:
    settings: Settings
    prefect_home: Path
    canaries: dict[str, str]
    env: dict[str, str]
    admin_url: str
    alerts: list[dict[str, Any]]  # received by the webhook answering 200
    refused: list[dict[str, Any]]  # received by the webhook answering 404
    mails: list[EmailMessage]
    runs: list[Run] = field(default_factory=list)
    kill_trigger: str = ""

    def start(self, **changes: str | None) -> subprocess.Popen[str]:
        """`python -m flows.elt` in its own process group; ``changes`` to its environment
        (None: unset)."""
        env = {key: value for key, value in (self.env | changes).items() if value is not None}
        return subprocess.Popen(
            [sys.executable, "-m", "flows.elt"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, name: str, **changes: str | None) -> Run:
        process = self.start(**changes)
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        run = Run(name, process.returncode, stdout, stderr)
        self.runs.append(run)
        return run

    def query(self, sql: str, path: Path | None = None) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(path or self.settings.warehouse), read_only=True) as connection:
            return connection.execute(sql).fetchall()


def _environment(settings: Settings, prefect_home: Path) -> dict[str, str]:
    """A local run's environment: its own Prefect server on ``prefect_home``'s database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TRIBUTARY_", "SOURCES__", "DESTINATION__", "PREFECT_"))
    }
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        TRIBUTARY_DATA_DIR=str(settings.data_dir),
    )
    return env


def _grant_reader(admin_url: str, role: str, password: str) -> None:
    """A login role that can only read the shop, with the canary as its password. The server
    trusts loopback, so the password is never checked; every client still carries it."""
    database = make_url(admin_url).database
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"create role {role} login password '{password}'"))
        connection.execute(text(f"grant connect on database {database} to {role}"))
        connection.execute(text(f"grant usage on schema public to {role}"))
        connection.execute(text(f"grant select on all tables in schema public to {role}"))
    engine.dispose()


def _drop_role(admin_url: str, role: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"drop owned by {role}"))
    engine.dispose()
    server = make_url(admin_url).set(database="postgres").render_as_string(False)
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"drop role if exists {role}"))
    engine.dispose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("canary")
    settings = Settings(data_dir=root / "data")
    run_id = secrets.token_hex(6)
    canaries = {
        "database password": f"canary-db-{secrets.token_hex(10)}",
        "API token": f"canary-token-{secrets.token_hex(10)}",
        "wrong API token": f"canary-badtoken-{secrets.token_hex(10)}",
        "webhook URL path": f"canary-hook-{secrets.token_hex(10)}",
        "SMTP password": f"canary-smtp-{secrets.token_hex(10)}",
    }
    role = f"tributary_canary_{run_id}"
    api_db = root / "api" / "payments_api.sqlite"
    with throwaway_database("postgresql") as admin_url:
        generate(admin_url, api_db, orders=ORDERS, seed=23)
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with sqlite3.connect(api_db) as store:
            store.execute(
                "insert into payments values (?, 1, 'card', 'XYZ', 1200, 0, 'succeeded', ?, ?)",
                (QUARANTINED, now, now),
            )
        store.close()
        _grant_reader(admin_url, role, canaries["database password"])
        database = make_url(admin_url).database
        shop_url = f"postgresql://{role}:{canaries['database password']}@127.0.0.1:5432/{database}"
        hook_path = f"/services/T0/B0/{canaries['webhook URL path']}"
        try:
            with (
                serve_in_background(api_db, canaries["API token"]) as api_url,
                webhook_receiver(path=hook_path) as (hook_url, alerts),
                webhook_receiver(status=404, path=hook_path) as (refused_url, refused),
                smtp_receiver(login=(SMTP_USER, canaries["SMTP password"])) as (smtp, mails),
            ):
                prefect_home = root / "prefect"
                env = _environment(settings, prefect_home) | {
                    "TRIBUTARY_SHOP_URL": shop_url,
                    "TRIBUTARY_PAYMENTS_API_URL": api_url,
                    "TRIBUTARY_FX_API_URL": api_url,
                    "SOURCES__PAYMENTS__TOKEN": canaries["API token"],
                    "TRIBUTARY_SLACK_WEBHOOK_URL": hook_url,
                    "TRIBUTARY_SMTP_HOST": "127.0.0.1",
                    "TRIBUTARY_SMTP_PORT": str(smtp),
                    "TRIBUTARY_SMTP_USERNAME": SMTP_USER,
                    "TRIBUTARY_SMTP_PASSWORD": canaries["SMTP password"],
                    "TRIBUTARY_ALERT_EMAIL_TO": '["data-team@example.com"]',
                }
                stack = Stack(
                    settings=settings,
                    prefect_home=prefect_home,
                    canaries=canaries,
                    env=env,
                    admin_url=admin_url,
                    alerts=alerts,
                    refused=refused,
                    mails=mails,
                )
                _crashed_run(stack)
                stack.run("recovery")
                stack.run(
                    "failed",
                    SOURCES__PAYMENTS__TOKEN=canaries["wrong API token"],
                    TRIBUTARY_SLACK_WEBHOOK_URL=refused_url,
                )
                # A setting missing: every secret is in the settings being validated.
                stack.run("misconfigured", TRIBUTARY_ALERT_EMAIL_TO=None)
                yield stack
        finally:
            _drop_role(admin_url, role)


def _crashed_run(stack: Stack) -> None:
    """The first run, its process group SIGKILLed as soon as the shop's first load is under
    way: a package extracted or normalised, or the bulk-read plan written."""
    pipelines = stack.settings.pipelines_dir
    signs = [
        "tributary_shop.bulk.json",
        "tributary_shop/normalize/extracted/*",
        "tributary_shop/load/normalized/*",
    ]
    process = stack.start()
    output: dict[str, str] = {}
    readers = [
        threading.Thread(
            target=lambda name=name, stream=stream: output.update({name: stream.read()}),
            daemon=True,
        )
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while not (seen := [sign for sign in signs if any(pipelines.glob(sign))]):
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for reader in readers:
            reader.join(timeout=30)
    stack.kill_trigger = ", ".join(seen)
    stack.runs.append(Run("crashed", process.returncode, output["stdout"], output["stderr"]))


# --- the tests ----------------------------------------------------------------------------


def _places(stack: Stack, scanner: Scanner) -> list[Found]:
    """Every place the issue names, scanned."""
    found = []
    for run in stack.runs:
        found += scanner.text(f"{run.name} run: stdout", run.stdout)
        found += scanner.text(f"{run.name} run: stderr", run.stderr)
    # The data folder: the warehouse, published versions, pipelines, run journal, locks.
    found += scanner.tree(stack.settings.data_dir, "TRIBUTARY_DATA_DIR")
    # Prefect's database (and anything else its home holds: results, logs).
    found += scanner.tree(stack.prefect_home, "PREFECT_HOME")
    # dbt's, shared by every test in the project: the canaries are this module's alone.
    for folder in ("target", "logs"):
        found += scanner.tree(DBT_PROJECT_DIR / folder, f"dbt_project/{folder}")
    return found


def test_the_runs_had_their_secrets_in_play(stack: Stack) -> None:
    """What the scan is worth: each secret was used, on the paths that fail too."""
    crashed, recovery, failed, misconfigured = stack.runs
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert stack.kill_trigger, "the first run ended before its shop load was under way"
    assert recovery.returncode == 0, (recovery.stdout + recovery.stderr)[-3000:]
    assert failed.returncode != 0 and "401" in failed.stdout + failed.stderr
    assert misconfigured.returncode != 0
    assert "TRIBUTARY_ALERT_EMAIL_TO" in misconfigured.stdout + misconfigured.stderr

    runs = stack.query("select status, error from ops.pipeline_runs order by started_at")
    assert [status for status, _ in runs] == ["crashed", "completed", "failed"]
    assert "ingest payments" in runs[2][1] and "401" in runs[2][1]
    # The shop came through the role with the canary password, whole.
    engine = create_engine(stack.admin_url)
    with engine.connect() as connection:
        source_orders = connection.execute(text("select count(*) from orders")).scalar_one()
    engine.dispose()
    published = stack.settings.published
    assert stack.query("select count(*) from marts.fct_orders", published) == [(source_orders,)]
    assert stack.query("select row_key, reason from quarantine.rows", published) == [
        ('{"payment_id":"p-canary-xyz"}', "currency 'XYZ' is not one of USD, EUR, GBP")
    ]
    # Every alert went out: crash and warnings by the webhook and by mail (logged in with the
    # canary password), the failure by mail while the webhook answered 404.
    subjects = sorted(mail["Subject"] for mail in stack.mails)
    assert subjects == [
        "tributary: flow `elt` completed with warnings",
        "tributary: flow `elt` crashed",
        "tributary: flow `elt` failed",
    ]
    assert sorted(a["text"].splitlines()[0] for a in stack.alerts) == subjects[:2]
    assert [a["text"].splitlines()[0] for a in stack.refused] == [subjects[2]]
    assert "NOT sent by webhook: HTTP 404" in failed.stdout + failed.stderr


def test_no_canary_anywhere(stack: Stack, tmp_path: Path) -> None:
    scanner = Scanner(stack.canaries, tmp_path)
    found = _places(stack, scanner)
    assert found == [], "\n".join(f"{f.place}: {f.canary}" for f in found)
    # It looked where the issue says: a clean result is worth something.
    covered = scanner.covered
    assert covered["duckdb files"] >= 2  # the warehouse and a published version
    assert covered["dlt states decoded"] >= 3  # shop, payments, fx
    assert covered["sqlite rows in log"] > 0 and covered["sqlite rows in flow_run"] == 4
    assert covered["sqlite rows in artifact"] > 0 and covered["sqlite rows in events"] > 0
    assert covered["pickle"] >= 3  # the pipelines' traces
    assert covered["parquet"] > 0 and covered["gzip"] > 0 and covered["base64 decoded"] > 0
    assert covered["files under dbt_project/logs"] > 0
    assert covered["files under dbt_project/target"] > 0


def test_the_scanner_finds_what_is_planted(stack: Stack, tmp_path: Path) -> None:
    """Canaries planted in scratch copies of each kind of store — most where a byte search
    could not see them — each found where it is."""
    planted = {n: f"canary-planted-{secrets.token_hex(10)}" for n in range(9)}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scanner = Scanner({str(n): value for n, value in planted.items()}, scratch)

    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copyfile(stack.settings.warehouse, warehouse)
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(
            "update raw_shop.customers set email = ? "
            "where customer_id = (select min(customer_id) from raw_shop.customers)",
            [planted[0]],
        )
        [(state,)] = connection.execute(
            "select state from raw_shop._dlt_pipeline_state order by created_at desc limit 1"
        ).fetchall()
        doctored = compress_state(decompress_state(state) | {"planted": planted[1]})
        connection.execute("update raw_shop._dlt_pipeline_state set state = ?", [doctored])
    connection.close()

    prefect_home = tmp_path / "prefect"
    prefect_home.mkdir()
    for name in ("prefect.db", "prefect.db-wal"):
        shutil.copyfile(stack.prefect_home / name, prefect_home / name)
    with sqlite3.connect(prefect_home / "prefect.db") as connection:
        connection.execute(
            "update log set message = message || ? where rowid = (select min(rowid) from log)",
            [planted[2]],
        )
    connection.close()
    # As Prefect keeps a failed run's result: a pickled exception, in base64.
    (prefect_home / "result").write_bytes(base64.encodebytes(pickle.dumps(OSError(planted[7]))))

    pipelines = tmp_path / "pipelines"
    shutil.copytree(stack.settings.pipelines_dir, pipelines)
    [state_file] = pipelines.glob("tributary_fx/state.json")
    state_file.write_text(state_file.read_text().replace('"fx"', f'"fx-{planted[3]}"', 1))
    (pipelines / "job.jsonl.gz").write_bytes(gzip.compress(planted[4].encode()))
    pq.write_table(
        pa.table({"v": [planted[5]] * 3}),
        pipelines / "job.parquet",
        compression="gzip",
        write_statistics=False,
    )
    # As dlt ships its state to the warehouse: compressed, in a gzipped insert.
    insert = f"insert into _dlt_pipeline_state values ('{compress_state({'p': planted[6]})}')"
    (pipelines / "state.insert_values.gz").write_bytes(gzip.compress(insert.encode()))

    # As pydantic shortens a value in its errors: the secret's end only.
    output = f"[type=value_error, input_value={{'a': 'b...password': '{planted[8][-25:]}'}}"

    found = set(scanner.file(warehouse, "warehouse"))
    found |= set(scanner.tree(prefect_home, "prefect"))
    found |= set(scanner.tree(pipelines, "pipelines"))
    found |= set(scanner.text("stdout", output))
    expected = {
        Found("warehouse: raw_shop.customers", "0"),
        Found("warehouse: raw_shop._dlt_pipeline_state (decoded state)", "1"),
        Found("prefect/prefect.db: log", "2"),
        Found("pipelines/tributary_fx/state.json", "3"),
        Found("pipelines/job.jsonl.gz (gunzipped)", "4"),
        Found("pipelines/job.parquet (rows)", "5"),
        Found("pipelines/state.insert_values.gz (gunzipped) (base64)", "6"),
        Found("prefect/result (base64)", "7"),
        Found("stdout", "8 (in part)"),
    }
    assert expected <= found, expected - found
    assert {f.canary for f in found} == {f.canary for f in expected}
    # Where the bytes alone would have said nothing:
    for path, n in [
        (warehouse, 1),
        (pipelines / "job.jsonl.gz", 4),
        (pipelines / "job.parquet", 5),
        (pipelines / "state.insert_values.gz", 6),
        (prefect_home / "result", 7),
    ]:
        assert planted[n].encode() not in path.read_bytes(), path
