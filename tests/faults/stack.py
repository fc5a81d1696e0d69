"""One trial's world: a scratch data folder, a sample shop (SQLite, or a throwaway PostgreSQL
database), the demo API with its fault knobs, and `python -m flows.elt` run as a user would —
configured by environment variables only, in its own process group, killed from outside."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from demo.api import Faults, serve_in_background
from demo.generate import generate
from demo.simulate import simulate
from tests.processes import Process, living, processes

Backend = Literal["sqlite", "postgresql"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgresql")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

ORDERS = 300
# A run that takes longer than this is stopped and counted as stuck (a run here takes ~25 s).
RUN_TIMEOUT_SECONDS = 300
# After a kill of the main process alone, how long its watchdog gets to stop what it left
# (tributary/orphans.py gives them 5 s after SIGTERM).
ORPHAN_GRACE_SECONDS = 20
FLOW_RUN_NAME = re.compile(r"Beginning flow run '([^']+)' for flow 'elt'")


@dataclass
class Run:
    """One `elt` run as the harness saw it."""

    label: str
    returncode: int | None  # None: stopped by the harness (a kill, or stuck)
    output: str
    seconds: float
    killed: str | None = None  # "group" or "main" when the harness killed it
    stuck: bool = False  # did not end within RUN_TIMEOUT_SECONDS
    orphans: list[Process] = field(default_factory=list)  # alive ORPHAN_GRACE_SECONDS after

    @property
    def completed(self) -> bool:
        return self.returncode == 0

    @property
    def flow_run_name(self) -> str | None:
        found = FLOW_RUN_NAME.search(self.output)
        return found.group(1) if found else None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the local PostgreSQL server, dropped afterwards (forcibly: a
    killed run's connections may linger for a moment)."""
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"tributary_faults_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.execute(text(f"create database {name}"))
    try:
        yield make_url(POSTGRES_ADMIN).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"drop database if exists {name} with (force)"))
        admin.dispose()


@dataclass
class Stack:
    """A trial's scratch world; ``runs`` lists every `elt` run started in it."""

    backend: Backend
    root: Path
    data_dir: Path
    shop_url: str  # SQLAlchemy URL the harness reads the shop with
    api_url: str
    token: str
    faults: Faults
    prefect_home: Path
    seed: int
    runs: list[Run] = field(default_factory=list)
    steps: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    keep: bool = False  # keep the folder afterwards (a trial that found something)

    # --- the product, driven from outside ------------------------------------------------

    def env(self, **changes: str | None) -> dict[str, str]:
        """A local run's environment: settings and secrets only through variables."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TRIBUTARY_", "SOURCES__", "PREFECT_", "DBT_"))
        }
        env.update(
            TRIBUTARY_DATA_DIR=str(self.data_dir),
            TRIBUTARY_PAYMENTS_API_URL=self.api_url,
            TRIBUTARY_FX_API_URL=self.api_url,
            SOURCES__PAYMENTS__TOKEN=self.token,
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
            PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL="WARNING",
            DO_NOT_TRACK="1",
            DBT_LOG_LEVEL="warn",
            RUNTIME__DLTHUB_TELEMETRY="false",
        )
        if self.backend == "postgresql":
            env["TRIBUTARY_SHOP_URL"] = self.shop_url.replace("+psycopg", "")
        env.update(self.extra_env)
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def start(self, label: str, command: Sequence[str] = ()) -> tuple[subprocess.Popen[str], Path]:
        """`python -m flows.elt` (or ``command``) in its own process group, output to a file."""
        log = self.root / f"run-{len(self.runs) + 1:02d}-{label}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                list(command) or [PYTHON, "-m", "flows.elt"],
                cwd=PROJECT_ROOT,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        return process, log

    def run(self, label: str, command: Sequence[str] = ()) -> Run:
        """One run to its end (or to the timeout: stuck)."""
        process, log = self.start(label, command)
        started = time.monotonic()
        stuck = False
        try:
            process.wait(timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            stuck = True
        finally:
            self._stop_group(process)
        run = Run(
            label,
            None if stuck else process.returncode,
            log.read_text(errors="replace"),
            time.monotonic() - started,
            stuck=stuck,
        )
        self.runs.append(run)
        return run

    def tributary(self, label: str, *args: str) -> Run:
        """The `tributary` command line, as a user types it."""
        return self.run(label, [str(Path(PYTHON).parent / "tributary"), *args])

    def run_killed(
        self,
        label: str,
        *,
        after: float | None = None,
        when: Any = None,
        main_only: bool = False,
    ) -> Run:
        """A run SIGKILLed ``after`` seconds, or as soon as ``when()`` is true: its whole
        process group, or (``main_only``) its main process alone, after which whatever it left
        gets ORPHAN_GRACE_SECONDS to go before it counts as an orphan."""
        process, log = self.start(label)
        started = time.monotonic()
        deadline = started + RUN_TIMEOUT_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            if (after is not None and time.monotonic() - started >= after) or (
                when is not None and when()
            ):
                break
            time.sleep(0.01 if when is not None else 0.05)
        killed: str | None = None
        orphans: list[Process] = []
        stuck = False
        if process.poll() is None:
            if time.monotonic() >= deadline:
                stuck = True
            elif main_only:
                left = [
                    p
                    for p in processes().values()
                    if p.pgrp == process.pid and p.pid != process.pid
                ]
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed = "main"
                grace = time.monotonic() + ORPHAN_GRACE_SECONDS
                while living(left) and time.monotonic() < grace:
                    time.sleep(0.2)
                orphans = living(left)
            else:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                killed = "group"
        self._stop_group(process)
        run = Run(
            label,
            None if killed or stuck else process.returncode,
            log.read_text(errors="replace"),
            time.monotonic() - started,
            killed=killed,
            stuck=stuck,
            orphans=orphans,
        )
        self.runs.append(run)
        return run

    @staticmethod
    def _stop_group(process: subprocess.Popen[str]) -> None:
        """Whatever is left of the run's process group (ours to clean up, counted before)."""
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.wait()

    def recover(self, cap: int = 3) -> Run | None:
        """Re-run until a run completes, at most ``cap`` times; None: it never did (stuck)."""
        for attempt in range(1, cap + 1):
            run = self.run(f"recover-{attempt}")
            if run.completed:
                return run
        return None

    # --- the sources ---------------------------------------------------------------------

    def simulate(self, *, deletes: bool = True) -> None:
        """Move the shop (and the payment provider) forward one step, stamped now."""
        self.steps += 1
        simulate(
            self.shop_url,
            self.api_db,
            now=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
            seed=self.seed * 1000 + self.steps,
            deletes=deletes,
        )

    @property
    def api_db(self) -> Path:
        return self.data_dir / "payments_api.sqlite"

    def shop(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run SQL on the shop database (either backend); returns rows when it has any."""
        engine = create_engine(self.shop_url)
        try:
            with engine.begin() as connection:
                result = connection.execute(text(sql), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def shop_table(self, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """A shop table's columns and rows."""
        engine = create_engine(self.shop_url)
        try:
            with engine.connect() as connection:
                result = connection.execute(text(f"select * from {table}"))
                return list(result.keys()), [tuple(row) for row in result]
        finally:
            engine.dispose()

    def shop_script(self, script: str) -> None:
        """Several statements on a SQLite shop."""
        assert self.backend == "sqlite", "a script of statements is for the SQLite shop"
        with sqlite3.connect(self.data_dir / "shop.sqlite") as connection:
            connection.executescript(script)
        connection.close()

    def store_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one query on the payment provider's store."""
        with sqlite3.connect(self.api_db) as connection:
            rows = connection.execute(sql).fetchall()
        connection.close()
        return rows

    def store(self, script: str) -> None:
        """Run SQL on the payment provider's store behind the API."""
        with sqlite3.connect(self.api_db) as connection:
            connection.executescript(script)
        connection.close()

    def api_faults(self, **knobs: Any) -> None:
        """Set the demo API's knobs (the rest off); a running server reads them per request."""
        for name in Faults.model_fields:
            if name != "seed":
                setattr(self.faults, name, knobs.get(name, Faults.model_fields[name].default))

    # --- what the harness reads back -----------------------------------------------------

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def published(self) -> Path:
        return self.data_dir / "published.duckdb"

    def query(self, sql: str, path: Path | None = None) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(path or self.warehouse), read_only=True) as connection:
            return connection.execute(sql).fetchall()

    def published_version(self) -> str | None:
        """The version file readers get now."""
        return os.readlink(self.published) if self.published.is_symlink() else None


@contextmanager
def stack(
    root: Path,
    backend: Backend,
    *,
    seed: int,
    prefect_home: Path,
    orders: int = ORDERS,
    keep: bool = False,
) -> Iterator[Stack]:
    """A fresh trial world under ``root``: a generated shop, the API serving it. The folder is
    removed afterwards unless ``keep`` (or the stack's ``keep``) says otherwise."""
    root.mkdir(parents=True)
    data_dir = root / "data"
    data_dir.mkdir()
    with ExitStack() as cleanup:
        if backend == "postgresql":
            shop_url = cleanup.enter_context(postgres_database())
        else:
            shop_url = f"sqlite:///{data_dir / 'shop.sqlite'}"
        generate(shop_url, data_dir / "payments_api.sqlite", orders=orders, seed=seed)
        token = secrets.token_urlsafe(12)
        faults = Faults(seed=seed)
        api_url = cleanup.enter_context(
            serve_in_background(data_dir / "payments_api.sqlite", token, faults=faults)
        )
        # A connection the API closes on purpose is logged by uvicorn as an error: expected here.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        world = Stack(
            backend=backend,
            root=root,
            data_dir=data_dir,
            shop_url=shop_url,
            api_url=api_url,
            token=token,
            faults=faults,
            prefect_home=prefect_home,
            seed=seed,
            keep=keep,
        )
        yield world
    if not world.keep:
        shutil.rmtree(root, ignore_errors=True)
