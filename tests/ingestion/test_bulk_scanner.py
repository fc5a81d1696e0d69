"""The rest of a PostgreSQL table read whole comes through DuckDB's scanner where its column
types allow, else through the ADBC stream; either way the warehouse must hold exactly what a
run that lets dlt read the whole table holds (`bulk_reads: false`), value for value — awkward
values included (NULLs everywhere, empty and non-ASCII text, NaN and infinities, timestamps
before 1970 and at microseconds) — and the source's own values where Python can compare them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from sqlalchemy import create_engine, text

from ingestion.pipeline import run_source
from ingestion.sql_database import bulk, scanner
from tests.servers import throwaway_database
from tributary.settings import Settings

SCHEMA = """
create table plain (
    id bigint primary key, small smallint, whole integer, flag boolean, label text,
    code varchar(12), ratio double precision, weight real, day date,
    at_utc timestamptz, at_local timestamp, updated_at timestamp not null
);
insert into plain
select i, (i %% 300)::smallint - 150, i * 7919 - 2000000, case i %% 3 when 0 then null
        else i %% 2 = 0 end,
    case i %% 5 when 0 then null when 1 then '' when 2 then 'Zürich — 東京 ' || i
        else 'row ' || i end,
    'c' || i, case i %% 7 when 0 then 'NaN'::float8 when 1 then '-Infinity'::float8
        when 2 then null else i / 3.0 end,
    (i / 7.0)::real, date '1961-04-12' + i, timestamptz '1969-07-20 20:17:40.123456+00'
        + i * interval '1 hour 1.000001 second',
    case when i %% 4 = 0 then null else timestamp '1999-12-31 23:59:59.999999'
        + i * interval '1 minute' end,
    timestamp '2026-01-01' + i * interval '1 minute'
from generate_series(1, 3000) as i;
create table typed (
    id integer primary key, grade char(3), opens time, blob bytea, price money,
    updated_at timestamp not null
);
insert into typed
select i, case when i %% 6 = 0 then null else 'g' || (i %% 9) end,
    time '06:30:00.5' + i * interval '7 seconds', decode(md5(i::text), 'hex'),
    (i * 1.25)::numeric::money, timestamp '2026-01-01' + i * interval '1 minute'
from generate_series(1, 2000) as i;
"""
KEYS = {"plain": "id", "typed": "id"}


@pytest.fixture(scope="module")
def source() -> Iterator[str]:
    with throwaway_database("postgresql") as url:
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(SCHEMA)
        finally:
            engine.dispose()
        yield url


def _settings(folder: Path, url: str, *, bulk_reads: bool) -> Settings:
    path = folder / "sources.yml"
    folder.mkdir(parents=True, exist_ok=True)
    declaration = {
        "type": "sql_database",
        "credentials": url,
        "bulk_reads": bulk_reads,
        "defaults": {"mode": "merge", "cursor": "updated_at", "lag": 0},
        "tables": dict.fromkeys(KEYS),
    }
    path.write_text(yaml.safe_dump({"sources": {"ext": declaration}}))
    return Settings(data_dir=folder, sources_file=path)


def _differences(left: Path, right: Path, table: str) -> list[tuple[Any, ...]]:
    """Rows of one warehouse's raw table missing from the other's, both ways (DuckDB compares:
    NaN equals NaN there)."""
    with duckdb.connect() as connection:
        connection.execute(f"attach '{left}' as l (read_only)")
        connection.execute(f"attach '{right}' as r (read_only)")
        columns = [
            name
            for (name,) in connection.execute(
                "select column_name from information_schema.columns where table_catalog = 'l' "
                "and table_schema = 'raw_ext' and table_name = ? and column_name not like "
                "'\\_dlt\\_%' escape '\\' order by ordinal_position",
                [table],
            ).fetchall()
        ]
        assert len(columns) > 3, columns
        listed = ", ".join(columns)
        return connection.execute(
            f"(select {listed} from l.raw_ext.{table} except all "
            f"select {listed} from r.raw_ext.{table}) union all "
            f"(select {listed} from r.raw_ext.{table} except all "
            f"select {listed} from l.raw_ext.{table})"
        ).fetchall()


def test_the_scanner_and_the_adbc_stream_load_what_dlt_would(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert scanner.available(), "the duckdb-ext-postgres wheel is a dependency"
    scanned: list[str] = []
    scan_rest = bulk._scan_rest

    def spy(connection: Any, raw_table: str, url: Any, read: bulk.BulkRead, *rest: Any) -> int:
        scanned.append(read.table)
        return scan_rest(connection, raw_table, url, read, *rest)

    monkeypatch.setattr(bulk, "_scan_rest", spy)
    streamed = _settings(tmp_path / "streamed", source, bulk_reads=True)
    first = run_source("ext", streamed)
    assert scanned == ["plain"]  # typed holds char(n), time, bytea, money: the ADBC stream
    assert {t.table: t.new for t in first.tables} == {"plain": 3000, "typed": 2000}

    whole = _settings(tmp_path / "whole", source, bulk_reads=False)
    run_source("ext", whole)
    for table in KEYS:
        assert _differences(streamed.warehouse, whole.warehouse, table) == [], table
        with duckdb.connect(str(streamed.warehouse), read_only=True) as warehouse:
            [(rows, keys, loads)] = warehouse.execute(
                f"select count(*), count(distinct id), count(distinct _dlt_load_id) "
                f"from raw_ext.{table}"
            ).fetchall()
        assert (rows, keys, loads) == (len(_source_ids(source, table)), rows, 1), table

    # The scanned table against the source itself, column by column where Python compares.
    with duckdb.connect(str(streamed.warehouse), read_only=True) as warehouse:
        raw = warehouse.execute(
            "select id, small, whole, flag, label, code, day, at_utc, at_local, updated_at "
            "from raw_ext.plain order by id"
        ).fetchall()
    assert raw == _source_rows(
        source,
        "select id, small, whole, flag, label, code, day, at_utc, at_local, updated_at "
        "from plain order by id",
    )


def _source_ids(url: str, table: str) -> list[int]:
    return [row[0] for row in _source_rows(url, f"select id from {table}")]


def _source_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def test_the_scanners_connection_string_carries_no_password() -> None:
    from sqlalchemy.engine import make_url

    url = make_url(
        "postgresql+psycopg://reader:s3cr'et@db.internal:6432/shop?sslmode=require"
        "&application_name=it's"
    )
    dsn = scanner.connection_string(url)
    assert "s3cr" not in dsn
    assert dsn == (
        "host='db.internal' port='6432' dbname='shop' user='reader' sslmode='require' "
        "application_name='it\\'s'"
    )


def test_adbc_connections_to_one_server_share_its_database(source: str) -> None:
    """Making an ADBC database reads the server's types (~30 ms); a run connects several times,
    so connections to one URL come from one database, which closing them leaves open."""
    from sqlalchemy.engine import make_url

    from ingestion.sql_database import adbc

    url = make_url(source)
    first = adbc.connect(url)
    with adbc.connect(url) as second:
        assert second._db is first._db
        with second.cursor() as cursor:
            cursor.execute("select count(*) from plain")
            assert cursor.fetchone() == (3000,)
    first.close()
    with adbc.record_batches(url, "select id from typed order by id limit 3") as reader:
        assert reader.read_all().column("id").to_pylist() == [1, 2, 3]
