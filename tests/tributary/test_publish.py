"""Write-audit-publish on real DuckDB files: what a build publishes, what readers in other
processes see while it does, what a failed or partial build leaves them, and the ways back
from a bad publication and from a corrupt working warehouse."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.locks import held_by_another_run
from tests.readers import held_connection
from tributary.cli import _print_summary
from tributary.dbt import DbtFailed, DbtSummary, NodeResult
from tributary.errors import is_transient
from tributary.publish import (
    MANIFEST,
    NotPublished,
    Publication,
    WarehouseInUse,
    current,
    not_published,
    publish,
    restore_published,
    restore_warehouse,
    state_path,
    versions,
)
from tributary.report import RunReport
from tributary.settings import ConfigurationError, Settings
from tributary.warehouse import (
    RESTORE_COMMAND,
    WarehouseBusy,
    WarehouseUnreadable,
    check_warehouse,
)

MARTS = {"marts.fct_orders", "marts.dim_customers", "marts.fct_daily_revenue"}
# The marts' figures must agree with each other in every published set.
AGREEMENT = """
    select
        (select count(*) from marts.fct_orders),
        (select sum(order_count) from marts.dim_customers),
        (select sum(order_count) from marts.fct_daily_revenue)
"""


def _model(relation: str, status: str = "success") -> NodeResult:
    name = relation.split(".")[1]
    return NodeResult(f"model.tributary.{name}", "model", status, 0.1, relation=relation)


def _test(name: str, status: str = "pass") -> NodeResult:
    return NodeResult(f"test.tributary.{name}", "test", status, 0.1, message=f"{status} {name}")


def _build(*relations: str) -> DbtSummary:
    return DbtSummary(
        command="build",
        nodes=[_model(r) for r in relations] + [_test(f"unique_{r}") for r in relations],
        invocation_id="inv-1",
    )


def _fill(settings: Settings, orders: int) -> None:
    """A working warehouse as dlt and dbt leave it: raw, staging, marts that agree, history."""
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.warehouse)) as warehouse:
        warehouse.execute(
            f"""
            create schema if not exists raw_shop;
            create or replace table raw_shop.orders as select range as order_id
                from range({orders});
            create or replace table raw_shop._dlt_loads as select 'load-1' as load_id;
            create schema if not exists raw_shop_staging;
            create or replace table raw_shop_staging.orders as select 1 as order_id;
            create schema if not exists marts;
            create or replace table marts.fct_orders (order_id bigint not null, customer_id
                bigint not null);
            insert into marts.fct_orders select range, range % 3 from range({orders});
            create or replace table marts.dim_customers as
                select customer_id, count(*) as order_count from marts.fct_orders group by 1;
            create or replace table marts.fct_daily_revenue as
                select date '2026-01-01' as order_date, count(*) as order_count
                from marts.fct_orders;
            create schema if not exists ops;
            create table if not exists ops.pipeline_runs (flow_run_id varchar primary key,
                status varchar not null);
            insert or replace into ops.pipeline_runs values ('run-{orders}', 'completed');
            create schema if not exists quarantine;
            create table if not exists quarantine.rows (source varchar, reason varchar);
            """
        )


def _query(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(autouse=True)
def last_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dbt's run_results.json as the build these tests publish left it."""
    run_results = tmp_path / "run_results.json"
    run_results.write_text(json.dumps({"metadata": {"invocation_id": "inv-1"}}))
    monkeypatch.setattr("tributary.dbt.RUN_RESULTS", run_results)
    return run_results


@pytest.fixture(autouse=True)
def lock_file_of_each_warehouse() -> Iterator[None]:
    """The warehouse lock as a run without a server takes it: a lock file beside each test's
    own warehouse. Later in a session the shared Prefect server's one global slot may still be
    leased (for up to 300 s) to a run another test killed, and these tests take the lock with
    a 1 s timeout, as `tributary publish restore` does."""
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def test_a_passing_build_publishes_a_whole_new_file_behind_the_readers_link(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "manifest.json"  # dbt's, as the build left it
    manifest.write_text('{"metadata": {"invocation_id": "inv-1"}, "nodes": {}}')
    monkeypatch.setattr("tributary.publish.MANIFEST", manifest)
    _fill(settings, orders=30)
    published = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)

    assert isinstance(published, Publication)
    link = settings.published
    assert link == settings.data_dir / "published.duckdb" and link.is_symlink()
    assert link.resolve() == published.path
    assert published.path.parent == settings.published_versions
    # complete and alone: no write-ahead log, no temporary file, not writable by readers
    assert sorted(p.name for p in settings.published_versions.iterdir()) == [
        published.version,
        f"{published.version}.state",  # the build's dbt state: what dev builds defer to
    ]
    assert published.path.stat().st_mode & 0o222 == 0
    assert _query(link, AGREEMENT) == [(30, 30, 30)]
    assert {(t.relation, t.rows, t.origin) for t in published.tables} == {
        ("marts.fct_orders", 30, "built by this build"),
        ("marts.dim_customers", 3, "built by this build"),
        ("marts.fct_daily_revenue", 1, "built by this build"),
        ("ops.pipeline_runs", 1, "history"),
        ("quarantine.rows", 0, "history"),
        ("raw_shop.orders", 30, "raw, as loaded"),
    }
    # staging, dlt's own tables and its staging datasets stay in the working warehouse
    schemas = {row[0] for row in _query(link, "select schema_name from duckdb_tables()")}
    assert schemas == {"marts", "ops", "quarantine", "raw_shop", "tributary"}
    assert (state_path(published.path) / "manifest.json").read_bytes() == manifest.read_bytes()
    [record] = _query(
        link, "select version, flow_run_id, dbt_invocation_id from tributary.publication"
    )
    assert record == (published.version, "run-1", "inv-1")
    # declared columns and keys come along, so a restored warehouse keeps them
    [(ddl,)] = _query(link, "select sql from duckdb_tables() where table_name = 'pipeline_runs'")
    assert "PRIMARY KEY" in ddl
    [(ddl,)] = _query(link, "select sql from duckdb_tables() where table_name = 'fct_orders'")
    assert "NOT NULL" in ddl
    assert current(settings) == published


def test_a_reader_holding_the_published_file_keeps_its_set_and_never_blocks_a_publish(
    tmp_path: Path,
) -> None:
    # one version kept: the reader's own is deleted under it, and it reads on regardless
    settings = Settings(data_dir=tmp_path, published_keep=1)
    _fill(settings, orders=30)
    publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    with held_connection(settings.published) as reader:
        assert reader.query(AGREEMENT) == [[30, 30, 30]]
        for orders, run in [(45, "run-2"), (60, "run-3")]:
            _fill(settings, orders=orders)  # the working warehouse is written meanwhile
            published = publish(settings, _build(*MARTS), flow_run_id=run, project=MARTS)
            assert isinstance(published, Publication)
            # the held connection still reads the set it opened; a new one reads the new set
            assert reader.query(AGREEMENT) == [[30, 30, 30]]
            assert _query(settings.published, AGREEMENT) == [(orders, orders, orders)]
            assert versions(settings) == [published.path]


def test_a_failed_build_publishes_nothing_and_says_what_readers_keep(
    settings: Settings,
) -> None:
    _fill(settings, orders=30)
    first = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    assert isinstance(first, Publication)
    _fill(settings, orders=45)
    failed = DbtSummary(
        command="build",
        nodes=[
            _model("marts.dim_customers"),
            _model("marts.fct_daily_revenue"),
            _test("accepted_values_currency", "fail"),
            _model("marts.fct_orders", "skipped"),
            _test("unique_fct_orders", "skipped"),
        ],
    )

    outcome = publish(settings, failed, flow_run_id="run-2", project=MARTS)
    assert isinstance(outcome, NotPublished)
    note = str(not_published(settings, DbtFailed("dbt build failed", failed)))
    assert str(outcome) == note
    when = f"{first.published_at:%Y-%m-%d %H:%M:%S} UTC"
    assert note == (
        f"not published: 1 failed, 2 skipped; readers keep the set published at {when} "
        f"by run run-1 ({first.version})"
    )
    assert versions(settings) == [first.path]
    assert _query(settings.published, AGREEMENT) == [(30, 30, 30)]


def test_a_selective_build_carries_the_other_marts_over_from_the_published_set(
    settings: Settings,
) -> None:
    _fill(settings, orders=30)
    first = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    assert isinstance(first, Publication)
    # what a failed build leaves in the working warehouse must not reach readers
    _fill(settings, orders=45)
    with duckdb.connect(str(settings.warehouse)) as warehouse:
        warehouse.execute("insert into marts.dim_customers values (99, 1000)")

    second = publish(
        settings, _build("marts.fct_daily_revenue"), flow_run_id="run-2", project=MARTS
    )

    assert isinstance(second, Publication)
    origins = {t.relation: t.origin for t in second.tables}
    assert origins == {
        "marts.fct_daily_revenue": "built by this build",
        "marts.fct_orders": f"carried over from {first.version}",
        "marts.dim_customers": f"carried over from {first.version}",
        "ops.pipeline_runs": "history",
        "quarantine.rows": "history",
        "raw_shop.orders": "raw, as loaded",
    }
    for table in ("marts.fct_orders", "marts.dim_customers"):
        sql = f"select * from {table} order by all"
        assert _query(second.path, sql) == _query(first.path, sql), table
    assert _query(settings.published, AGREEMENT) == [(30, 30, 45)]
    assert _query(settings.published, "select count(*) from ops.pipeline_runs") == [(2,)]


def test_a_selective_build_with_nothing_published_yet_publishes_nothing(
    settings: Settings,
) -> None:
    _fill(settings, orders=30)
    outcome = publish(settings, _build("marts.fct_orders"), flow_run_id="run-1", project=MARTS)
    assert isinstance(outcome, NotPublished)
    assert "marts.dim_customers, marts.fct_daily_revenue" in outcome.reason
    assert str(outcome).endswith("readers have no published set yet")
    assert not settings.published.exists() and versions(settings) == []


def test_a_build_another_dbt_command_followed_publishes_nothing(
    settings: Settings, last_invocation: Path
) -> None:
    _fill(settings, orders=30)
    first = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    # another build (a failed one, say) wrote the working warehouse before this one's publish
    last_invocation.write_text(json.dumps({"metadata": {"invocation_id": "inv-2"}}))
    _fill(settings, orders=45)
    outcome = publish(settings, _build(*MARTS), flow_run_id="run-2", project=MARTS)
    assert isinstance(outcome, NotPublished) and outcome.current == first
    assert outcome.reason.startswith("another dbt invocation (inv-2) ran after this build")
    assert _query(settings.published, AGREEMENT) == [(30, 30, 30)]


def test_a_resumed_build_publishes_what_its_failed_attempt_built_too(settings: Settings) -> None:
    _fill(settings, orders=30)
    retry = DbtSummary(
        command="retry",
        nodes=[_test("accepted_values_currency"), _model("marts.fct_orders")],
        resumed=[_model("marts.dim_customers"), _model("marts.fct_daily_revenue")],
    )
    published = publish(settings, retry, flow_run_id="run-1", project=MARTS)
    assert isinstance(published, Publication)
    assert {t.relation for t in published.tables if t.origin == "built by this build"} == MARTS


def test_old_versions_go_and_readers_can_be_sent_back_to_a_kept_one(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, published_keep=2)
    _fill(settings, orders=30)
    made = [
        publish(settings, _build(*MARTS), flow_run_id=f"run-{n}", project=MARTS) for n in range(3)
    ]
    paths = [p.path for p in made if isinstance(p, Publication)]
    assert versions(settings) == paths[1:]
    if MANIFEST.is_file():  # each kept version's dbt state stays with it, and goes with it
        states = sorted(settings.published_versions.glob("*.state"))
        assert states == [state_path(path) for path in paths[1:]]

    back = restore_published(settings)  # to the one before the current
    assert back.path == paths[1] and settings.published.resolve() == paths[1]
    restore_published(settings, paths[1].name)  # by name, idempotent
    with pytest.raises(ConfigurationError, match="No version older"):
        restore_published(settings)
    with pytest.raises(ConfigurationError, match="No kept version 'nope'"):
        restore_published(settings, "nope")

    fourth = publish(settings, _build(*MARTS), flow_run_id="run-4", project=MARTS)
    assert isinstance(fourth, Publication)
    assert versions(settings) == [paths[2], fourth.path]
    assert settings.published.resolve() == fourth.path


def test_the_version_readers_get_is_kept_even_when_the_clock_went_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, published_keep=1)
    _fill(settings, orders=30)
    first = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    assert isinstance(first, Publication)
    # a version stamped by a clock that was ahead: every later name sorts before it
    ahead = first.path.with_name("published-29991231T000000000000Z.duckdb")
    ahead.write_bytes(first.path.read_bytes())
    published = publish(settings, _build(*MARTS), flow_run_id="run-2", project=MARTS)
    assert isinstance(published, Publication)
    assert versions(settings) == [published.path, ahead]
    assert current(settings) == published


def test_publish_restore_points_readers_back_and_refuses_during_a_run(
    settings: Settings,
) -> None:
    _fill(settings, orders=30)
    first = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    _fill(settings, orders=45)
    publish(settings, _build(*MARTS), flow_run_id="run-2", project=MARTS)
    assert _query(settings.published, AGREEMENT) == [(45, 45, 45)]

    with held_by_another_run(settings), pytest.raises(WarehouseInUse, match="holds the warehouse"):
        restore_published(settings)
    assert restore_published(settings) == first
    assert _query(settings.published, AGREEMENT) == [(30, 30, 30)]


def test_a_file_in_the_readers_place_is_never_overwritten(settings: Settings) -> None:
    _fill(settings, orders=30)
    settings.published.write_text("somebody's notes")
    with pytest.raises(ConfigurationError, match="TRIBUTARY_PUBLISHED_PATH"):
        publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    assert settings.published.read_text() == "somebody's notes"


def test_a_truncated_warehouse_names_the_setting_and_the_way_back(settings: Settings) -> None:
    _fill(settings, orders=30)
    os.truncate(settings.warehouse, 1000)
    with pytest.raises(WarehouseUnreadable) as failure:
        check_warehouse(settings)
    message = str(failure.value)
    assert f"TRIBUTARY_WAREHOUSE_PATH: {settings.warehouse} is not a readable DuckDB" in message
    assert f"`{RESTORE_COMMAND}`" in message
    assert not is_transient(failure.value)


def test_a_reader_holding_the_working_warehouse_is_told_to_open_the_published_file(
    settings: Settings,
) -> None:
    _fill(settings, orders=30)
    with held_connection(settings.warehouse), pytest.raises(WarehouseBusy) as failure:
        check_warehouse(settings)
    message = str(failure.value)
    assert f"TRIBUTARY_WAREHOUSE_PATH: another process holds {settings.warehouse}" in message
    assert f"open the published file {settings.published} read-only" in message
    assert is_transient(failure.value)  # still waited out and retried


def test_warehouse_restore_rebuilds_from_the_published_set_and_forgets_dlt_state(
    settings: Settings,
) -> None:
    _fill(settings, orders=30)
    published = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    assert isinstance(published, Publication)
    pipelines = settings.pipelines_dir
    (pipelines / "tributary_shop" / "state").mkdir(parents=True)
    (pipelines / "tributary_shop.bulk.json").write_text("{}")
    (pipelines / "tributary_shop.lock").touch()
    os.truncate(settings.warehouse, 1000)
    broken = settings.warehouse.read_bytes()

    with held_by_another_run(settings), pytest.raises(WarehouseInUse):
        restore_warehouse(settings)
    result = restore_warehouse(settings)

    [aside] = result.moved
    assert aside.name.startswith("warehouse.duckdb.corrupt-") and aside.read_bytes() == broken
    assert result.restored_from == published
    assert result.removed_state == [
        pipelines / "tributary_shop",
        pipelines / "tributary_shop.bulk.json",
    ]
    assert sorted(p.name for p in pipelines.iterdir()) == ["tributary_shop.lock"]
    check_warehouse(settings)
    assert _query(settings.warehouse, AGREEMENT) == [(30, 30, 30)]
    schemas = {r[0] for r in _query(settings.warehouse, "select schema_name from duckdb_tables()")}
    # the publication's record stays behind, and so does raw: every source reloads whole
    assert schemas == {"marts", "ops", "quarantine"}
    with duckdb.connect(str(settings.warehouse)) as warehouse:  # writable again
        warehouse.execute("insert into ops.pipeline_runs values ('run-2', 'completed')")
    # a readable warehouse is replaced only on purpose
    with pytest.raises(ConfigurationError, match="opens fine"):
        restore_warehouse(settings)
    assert restore_warehouse(settings, force=True).restored_from == published


def test_a_published_file_named_like_a_schema_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TRIBUTARY_PUBLISHED_PATH: marts\.duckdb"):
        Settings(data_dir=tmp_path, published_path=tmp_path / "marts.duckdb")


def test_the_demo_summary_reads_the_marts_readers_get(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(settings, orders=30)
    published = publish(settings, _build(*MARTS), flow_run_id="run-1", project=MARTS)
    _fill(settings, orders=45)  # the working warehouse moved on; readers did not
    _print_summary(RunReport(warehouse=settings.warehouse, dbt=_build(), published=published))
    output = " ".join(capsys.readouterr().out.split())
    assert "marts.fct_orders 30 rows" in output
    assert f"Query it with `duckdb -readonly {settings.published}`" in output
    assert f"duckdb.connect('{settings.published}', read_only=True)" in output
