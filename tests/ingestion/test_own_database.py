"""A database of another shape than the sample shop, declared in a sources file and loaded with
no Python: a schema other than the default, wildcards and excludes, a table without a primary
key (replaced whole), an insert-only log (appended on its identity), a table without a change
timestamp (merged whole), text-only columns, and mixed-case names. Values are compared with the
source after a first load and after changes, deletes included."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import yaml
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from ingestion import declared
from ingestion.guards import DeletesStopped
from ingestion.pipeline import run_source
from tests.servers import database_with
from tributary.cli import app
from tributary.settings import ConfigurationError, Settings

SCHEMA = """
create schema sales;
create table sales.accounts (
    account_id serial primary key, name text not null, tier text,
    updated_at timestamptz not null default now()
);
create table sales.order_lines (order_ref text, sku text, qty text);
create table sales.events (event_id bigint generated always as identity, kind text not null);
create table sales.notes (note_id integer primary key, body text);
create table sales.tmp_scratch (x integer primary key);
insert into sales.accounts (name, tier, updated_at)
    select 'account ' || i, case when i %% 3 = 0 then 'gold' end,
           timestamptz '2026-01-01 00:00+00' + i * interval '1 minute'
    from generate_series(1, 500) as i;
insert into sales.order_lines select 'o' || (i %% 50), 'sku-' || i, (i %% 7)::text
    from generate_series(1, 300) as i;
insert into sales.events (kind) select 'kind ' || (i %% 4) from generate_series(1, 200) as i;
insert into sales.notes select i, 'note ' || i from generate_series(1, 40) as i;
"""


def declaration(url: str, **tables: object) -> dict:
    return {
        "sources": {
            "erp": {
                "type": "sql_database",
                "credentials": url,
                "schema": "sales",
                "defaults": {"mode": "merge", "cursor": "updated_at", "lag": 0},
                "tables": {"*": None, **tables},
                "exclude": ["tmp_*"],
            }
        }
    }


GOOD = {
    "order_lines": {"mode": "replace"},
    "events": {"mode": "append", "primary_key": "event_id", "cursor": "event_id"},
}


@pytest.fixture(scope="module")
def erp() -> Iterator[str]:
    with database_with("postgresql", SCHEMA) as url:
        yield url


def _settings(tmp_path: Path, url: str, **tables: object) -> Settings:
    path = tmp_path / "sources.yml"
    path.write_text(yaml.safe_dump(declaration(url, **tables)))
    return Settings(data_dir=tmp_path, sources_file=path)


def _source(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return sorted(tuple(row) for row in connection.execute(text(sql)))
    finally:
        engine.dispose()


def _warehouse(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as connection:
        return sorted(connection.execute(sql).fetchall())


def _assert_equal_to_source(settings: Settings, url: str) -> None:
    assert _warehouse(
        settings, "select account_id, name, tier, updated_at from raw_erp.accounts"
    ) == _source(
        url,
        "select account_id, name, tier, updated_at from sales.accounts",
    )
    assert _warehouse(settings, "select order_ref, sku, qty from raw_erp.order_lines") == _source(
        url, "select order_ref, sku, qty from sales.order_lines"
    )
    assert _warehouse(settings, "select event_id, kind from raw_erp.events") == _source(
        url, "select event_id, kind from sales.events"
    )
    assert _warehouse(settings, "select note_id, body from raw_erp.notes") == _source(
        url, "select note_id, body from sales.notes"
    )
    for table, key in [("accounts", "account_id"), ("events", "event_id"), ("notes", "note_id")]:
        assert (
            _warehouse(
                settings, f"select {key} from raw_erp.{table} group by 1 having count(*) > 1"
            )
            == []
        ), f"duplicate keys in raw_erp.{table}"


def test_a_table_without_a_key_under_merge_is_a_configuration_error(
    erp: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, erp, events=GOOD["events"])
    with pytest.raises(ConfigurationError) as failure:
        run_source("erp", settings)
    message = str(failure.value)
    assert "sources.erp.tables.order_lines: mode merge needs a primary_key" in message
    assert not settings.warehouse.exists() or _warehouse(
        settings,
        "select count(*) from information_schema.tables where table_schema = 'raw_erp'",
    ) == [(0,)]


def test_a_missing_cursor_column_is_named_with_the_columns_there(erp: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, erp, **GOOD, notes={"cursor": "changed_at"})
    with pytest.raises(ConfigurationError, match=r"sources.erp.tables.notes: cursor changed_at: "
                       r"no such column in notes; its columns are note_id, body"):  # fmt: skip
        run_source("erp", settings)


def test_a_database_of_another_shape_loads_and_follows_its_changes(
    erp: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, erp, **GOOD)
    first = run_source("erp", settings)
    assert {t.table: t.new for t in first.tables} == {
        "accounts": 500,
        "events": 200,
        "notes": 40,
        "order_lines": 300,
    }
    _assert_equal_to_source(settings, erp)
    assert _warehouse(
        settings,
        "select count(*) from information_schema.tables where table_name = 'tmp_scratch'",
    ) == [(0,)]

    engine = create_engine(erp)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "update sales.accounts set tier = 'silver', updated_at = now() where account_id <= 5;"
            "insert into sales.accounts (name) values ('new one');"
            "insert into sales.events (kind) select 'late' from generate_series(1, 7);"
            "delete from sales.notes where note_id in (3, 4);"
            "update sales.notes set body = 'edited' where note_id = 10;"
            "delete from sales.order_lines where sku = 'sku-1';"
            "update sales.order_lines set qty = '99' where sku = 'sku-2';"
        )
    engine.dispose()
    second = run_source("erp", settings)
    by_table = {t.table: t for t in second.tables}
    assert (by_table["accounts"].new, by_table["accounts"].updated) == (1, 5)
    assert by_table["events"].new == 7
    assert by_table["notes"].deleted == 2 and by_table["notes"].updated == 1
    _assert_equal_to_source(settings, erp)

    third = run_source("erp", settings)  # nothing changed: nothing new, nothing lost
    assert all(t.new == 0 and t.updated == 0 and t.deleted == 0 for t in third.tables)
    _assert_equal_to_source(settings, erp)


def test_check_prints_what_each_table_will_do(
    erp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, erp, **GOOD)
    monkeypatch.setenv("TRIBUTARY_SOURCES_FILE", str(settings.sources_path))
    monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(tmp_path))
    from tributary.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["sources", "check"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        rows = {
            cells[0]: cells[1:]
            for line in result.output.splitlines()
            if (cells := [c.strip() for c in line.strip("│ ").split("│")]) and len(cells) >= 5
        }
        assert rows["accounts"][:3] == ["merge", "account_id", "updated_at"]
        assert rows["order_lines"][:3] == ["replace", "—", "—"]
        assert rows["events"][:3] == ["append", "event_id", "event_id"]
        assert rows["notes"][:2] == ["merge", "note_id"]
        assert "tmp_scratch" not in rows

        (tmp_path / "bad").mkdir()
        bad = _settings(tmp_path / "bad", erp, events=GOOD["events"])
        monkeypatch.setenv("TRIBUTARY_SOURCES_FILE", str(bad.sources_path))
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["sources", "check"])
        assert result.exit_code == 1
        assert "sources.erp.tables.order_lines: mode merge needs a primary_key" in result.output
    finally:
        get_settings.cache_clear()


def test_discover_writes_a_declaration_that_loads(erp: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["sources", "discover", erp, "--name", "erp", "--schema", "sales"]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "sources.yml"
    path.write_text(result.output)
    erp_source = declared.load(path, tmp_path).sources["erp"]
    tables = erp_source.tables  # type: ignore[union-attr]
    assert tables["accounts"].mode == "merge" and tables["accounts"].cursor == "updated_at"
    assert tables["order_lines"].mode == "replace"
    assert tables["events"].mode == "append" and tables["events"].cursor == "event_id"
    assert tables["notes"].mode == "merge" and tables["notes"].cursor is None
    settings = Settings(data_dir=tmp_path, sources_file=path)
    run_source("erp", settings)
    _assert_equal_to_source(settings, erp)


def test_an_emptied_table_read_whole_stops_before_deleting(erp: str, tmp_path: Path) -> None:
    """Last in the module: it empties tables. A table with no cursor is re-read whole each run;
    the source emptied, the run stops before the warehouse loses its copy, and deletes only
    when confirmed — with or without a key."""
    settings = _settings(tmp_path, erp, **GOOD)
    run_source("erp", settings)
    lines = _warehouse(settings, "select count(*) from raw_erp.order_lines")
    notes = _warehouse(settings, "select count(*) from raw_erp.notes")
    assert lines[0][0] > 0 and notes[0][0] > 0
    engine = create_engine(erp)
    with engine.begin() as connection:
        connection.exec_driver_sql("delete from sales.order_lines; delete from sales.notes;")
    engine.dispose()
    with pytest.raises(DeletesStopped) as stopped:
        run_source("erp", settings)
    message = str(stopped.value)
    assert f"raw_erp.order_lines: this run would delete {lines[0][0]:,} of its" in message
    assert f"raw_erp.notes: this run would delete {notes[0][0]:,} of its" in message
    assert _warehouse(settings, "select count(*) from raw_erp.order_lines") == lines
    assert _warehouse(settings, "select count(*) from raw_erp.notes") == notes
    confirmed = run_source("erp", settings, confirm_deletes=True)
    by_table = {t.table: t for t in confirmed.tables}
    assert by_table["order_lines"].deleted == lines[0][0]
    assert by_table["notes"].deleted == notes[0][0]
    _assert_equal_to_source(settings, erp)


def _hash(salt: str, value: str | None) -> str | None:
    return None if value is None else hashlib.sha256((salt + value).encode()).hexdigest()


def test_masked_and_left_out_columns_never_reach_the_warehouse_in_clear(
    erp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a first load streams in bulk, the next reads incrementally through dlt, a
    row from the future is quarantined — each path hashes the masked columns and never reads
    the excluded one."""
    salt = "pepper-" + tmp_path.name
    monkeypatch.setenv("TRIBUTARY_TEST_MASK_SALT", salt)
    engine = create_engine(erp)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "create schema crm;"
            "create table crm.people (person_id integer primary key, email text not null,"
            " phone text, notes text, updated_at timestamptz not null);"
            "insert into crm.people select i, 'person' || i || '@example.com',"
            " case when i %% 5 <> 0 then '+44 20 7946 ' || i end, 'private note ' || i,"
            " timestamptz '2026-01-01 00:00+00' + i * interval '1 second'"
            " from generate_series(1, 300) as i;"
            "insert into crm.people values (999, 'future@example.com', null, 'x',"
            " timestamptz '2099-01-01 00:00+00');"
        )
    engine.dispose()
    path = tmp_path / "sources.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "crm": {
                        "type": "sql_database",
                        "credentials": erp,
                        "schema": "crm",
                        "mask_salt": {"env": "TRIBUTARY_TEST_MASK_SALT"},
                        "defaults": {"cursor": "updated_at", "lag": 0},
                        "tables": {
                            "people": {
                                "mask": ["email", "phone"],
                                "columns": {"exclude": ["notes"]},
                            }
                        },
                    }
                }
            }
        )
    )
    settings = Settings(data_dir=tmp_path, sources_file=path)

    def expected() -> list[tuple]:
        return sorted(
            (person_id, _hash(salt, email), _hash(salt, phone))
            for person_id, email, phone in _source(
                erp, "select person_id, email, phone from crm.people where person_id <> 999"
            )
        )

    first = run_source("crm", settings)
    assert first.rows_quarantined == 1
    assert _warehouse(settings, "select person_id, email, phone from raw_crm.people") == expected()
    engine = create_engine(erp)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "update crm.people set email = 'changed' || person_id || '@example.org',"
            " updated_at = now() where person_id <= 10;"
            "insert into crm.people values (301, 'new@example.com', '+1 555 0100', 'y', now());"
        )
    engine.dispose()
    run_source("crm", settings)
    assert _warehouse(settings, "select person_id, email, phone from raw_crm.people") == expected()
    assert "notes" not in {
        name
        for (name,) in _warehouse(
            settings,
            "select column_name from information_schema.columns where table_name = 'people'",
        )
    }
    payloads = _warehouse(settings, "select payload from quarantine.rows where source = 'crm'")
    assert len(payloads) == 1 and _hash(salt, "future@example.com") in payloads[0][0]
    # Nowhere on disk in clear: not in the warehouse file, the quarantine, dlt's packages.
    files = [settings.warehouse, *settings.pipelines_dir.rglob("*")]
    # (not digits alone: hex digests hold any run of them)
    clear = [b"@example.com", b"@example.org", b"private note", b"+44 20 7946"]
    for file in files:
        if file.is_file():
            content = file.read_bytes()
            assert not [c for c in clear if c in content], file
