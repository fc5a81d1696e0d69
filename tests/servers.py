"""Throwaway databases on the PostgreSQL and MariaDB servers on this machine."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tributary.settings import Settings

SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/",
}


@contextmanager
def throwaway_database(server: str) -> Iterator[str]:
    """The URL of a new, empty database on the server, dropped afterwards. A server that is
    not running skips the test, or fails it in CI, where it must be up."""
    admin = create_engine(SERVERS[server], isolation_level="AUTOCOMMIT")
    name = f"tributary_test_{secrets.token_hex(4)}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f"create database {name}"))
    except OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"{server} is not running: {exc}")
        pytest.skip(f"{server} is not running")
    try:
        yield make_url(SERVERS[server]).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"drop database if exists {name}"))
        admin.dispose()


def run_sql(url: str, sql: str) -> None:
    """Runs ``sql`` (several statements, ``%%`` for a literal ``%``) in one transaction."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(sql)
    finally:
        engine.dispose()


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows ``sql`` reads from the database at ``url``, as tuples."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


@contextmanager
def database_with(server: str, *sql: str) -> Iterator[str]:
    """A throwaway database on ``server`` holding what ``sql`` makes, run one piece at a time
    (on MariaDB one statement each: PyMySQL runs no batches)."""
    with throwaway_database(server) as url:
        for statements in sql:
            run_sql(url, statements)
        yield url


@contextmanager
def table_with(url: str, name: str, sql: str) -> Iterator[None]:
    """Table ``name`` made by ``sql`` in the database at ``url`` for the block, dropped after."""
    try:
        run_sql(url, sql)
        yield
    finally:
        run_sql(url, f"drop table if exists {name}")


def declared(folder: Path, source: str, url: str, tables: dict[str, Any]) -> Settings:
    """Settings whose ``sources.yml`` (in ``folder``) declares only ``source``: ``tables`` of
    the database at ``url``, merged on their keys by ``updated_at``; data in ``folder/data``."""
    folder.mkdir(parents=True, exist_ok=True)
    declaration = {
        "type": "sql_database",
        "credentials": url,
        "defaults": {"mode": "merge", "cursor": "updated_at"},
        "tables": tables,
    }
    (folder / "sources.yml").write_text(yaml.safe_dump({"sources": {source: declaration}}))
    return Settings(data_dir=folder / "data", sources_file=folder / "sources.yml")
