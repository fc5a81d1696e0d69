"""Write-audit-publish through the real `elt` and `dbt` flows on the small sample shop: a reader
in another process holds the published file across whole runs and never blocks them; a failing
dbt test publishes nothing and readers keep marts that agree; a selective build publishes only
what it built; a passing build that published something wrong is undone with one command; and a
corrupt working warehouse names its setting and comes back with one command."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from demo.paths import shop_sqlite_path, shop_url
from demo.simulate import simulate
from flows.dbt_build import DbtBuildParameters, build
from flows.elt import StepFailed, elt
from tests.integration.sources import read_shop
from tests.integration.stack import ORDERS, SEED, Loaded, serving
from tests.integration.test_elt_flow import MART_KEYS, Shop, assert_marts_match
from tests.locks import held_by_another_run
from tests.readers import held_connection, poller
from tributary import dev
from tributary.cli import app
from tributary.publish import Publication, current
from tributary.report import RunReport
from tributary.settings import DBT_PROJECT_DIR
from tributary.warehouse import RESTORE_COMMAND

pytestmark = pytest.mark.integration

# Which set a reader sees, and whether its marts agree: orders in fct_orders, in dim_customers
# and in fct_daily_revenue.
SEEN = """
    select
        (select version from tributary.publication),
        (select count(*) from marts.fct_orders),
        (select sum(order_count) from marts.dim_customers),
        (select sum(order_count) from marts.fct_daily_revenue)
"""


def _query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql, list(args)).fetchall()


def _published(report: RunReport) -> Publication:
    assert isinstance(report.published, Publication), report.published
    return report.published


def _readers_view(shop: Shop) -> Shop:
    """The shop's helpers, reading the published file as a reader does."""
    published = shop.settings.published
    return replace(shop, settings=shop.settings.model_copy(update={"warehouse_path": published}))


def _move_shop(shop: Shop, step: int) -> None:
    simulate(
        shop_url(shop.settings),
        shop.settings.demo_api_db,
        now=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
        seed=SEED + step,
        deletes=True,
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, loaded_shop: Loaded) -> Iterator[Shop]:
    """A copy of the session's shop after its first run (``first_run``)."""
    with serving(loaded_shop.copy(tmp_path_factory.mktemp("publish"))) as served:
        yield Shop(settings=served.settings, api_url=served.api_url, token=served.token)


@pytest.fixture(scope="module")
def first_run(loaded_shop: Loaded) -> RunReport:
    """The first run, made once per session on the shop this module copied."""
    return loaded_shop.report


@dataclass
class HeldAcrossRuns:
    opened: list[list[Any]]
    during: list[list[list[Any]]]
    after: list[list[Any]]
    fresh: list[dict[str, Any]]
    runs: list[RunReport]


@pytest.fixture(scope="module")
def held_across_runs(shop: Shop, first_run: RunReport) -> HeldAcrossRuns:
    """A reader holds the published file open across two whole runs (each after the shop
    moved on), querying it all the while; another keeps opening fresh connections."""
    link = shop.settings.published
    during: list[list[list[Any]]] = []
    stop = threading.Event()
    with held_connection(link) as reader, poller(link, SEEN) as fresh:
        opened = reader.query(SEEN)

        def keep_reading() -> None:
            while not stop.wait(0.3):
                during.append(reader.query(SEEN))

        reading = threading.Thread(target=keep_reading)
        reading.start()
        runs = []
        try:
            for step in (1, 2):
                _move_shop(shop, step)
                runs.append(elt())
        finally:
            stop.set()
            reading.join()
        after = reader.query(SEEN)
        seen_fresh = fresh.stop()
    return HeldAcrossRuns(opened, during, after, seen_fresh, runs)


def test_the_version_a_run_publishes_holds_that_runs_own_history(
    shop: Shop, first_run: RunReport
) -> None:
    """Readers of the published file (`tributary runs`, `status`) see the run that published
    it, with what it loaded — not only the runs before it."""
    publication = _published(first_run)
    [run] = _query(
        publication.path,
        "select flow_run_id, status, rows_loaded from ops.pipeline_runs",
    )
    assert run == (
        publication.flow_run_id,
        "completed",
        sum(load.rows_loaded for load in first_run.loads),
    )
    loads = _query(
        publication.path,
        "select dataset || '.' || table_name, rows_new, rows_updated, rows_deleted "
        "from ops.table_loads where flow_run_id = ? order by 1",
        publication.flow_run_id,
    )
    assert loads == sorted(
        (f"{load.dataset}.{table.table}", table.new, table.updated, table.deleted)
        for load in first_run.loads
        for table in load.tables
    )
    assert len(loads) >= 7


def test_a_reader_holding_the_published_file_never_blocks_a_run_nor_sees_it_change(
    shop: Shop, first_run: RunReport, held_across_runs: HeldAcrossRuns
) -> None:
    held = held_across_runs
    first = _published(first_run)
    second, third = (_published(run) for run in held.runs)  # both runs completed and published
    assert first.version < second.version < third.version
    # the held connection reads the first set from start to end, however often it asks
    assert held.opened == [[first.version, ORDERS, ORDERS, ORDERS]]
    assert len(held.during) > 20
    assert all(answer == held.opened for answer in held.during)
    assert held.after == held.opened
    # a new connection sees the newest set, equal to what the sources say
    [(version, orders, *agreeing)] = _query(shop.settings.published, SEEN)
    assert version == third.version
    assert orders > ORDERS and agreeing == [orders, orders]
    assert_marts_match(_readers_view(shop), shop.expected())
    # fresh connections during the runs: only whole sets, in publication order, never an error
    assert len(held.fresh) > 20 and all("rows" in answer for answer in held.fresh), held.fresh
    seen = [answer["rows"][0] for answer in held.fresh]
    assert all(count == dim == daily for _, count, dim, daily in seen)
    versions_seen = [row[0] for row in seen]
    assert versions_seen == sorted(versions_seen)
    assert set(versions_seen) <= {first.version, second.version, third.version}


def test_an_analyst_builds_a_changed_mart_in_dev_and_reads_the_rest_from_production(
    shop: Shop, held_across_runs: HeldAcrossRuns, tmp_path: Path
) -> None:
    """`tributary dev build` on a copy of the project with one mart changed: only that mart
    (and its tests) builds, into the analyst's own file, from the published raw tables; its
    tests compare it with production's other marts (deferred); production's files are not
    touched, and neither the warehouse lock nor the working warehouse is ever needed — both
    are held here for the whole build."""
    settings = shop.settings.model_copy(update={"dev_path": tmp_path / "dev" / "ana.duckdb"})
    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    model = project / "models" / "marts" / "dim_customers.sql"
    model.write_text(
        model.read_text().replace(
            "        ) as lifetime_value\n\n    from customers",
            "        ) as lifetime_value,\n"
            "        coalesce(orders_per_customer.order_count, 0) > 1 as is_repeat_customer\n\n"
            "    from customers",
        )
    )
    assert "is_repeat_customer" in model.read_text()
    contract = project / "models" / "marts" / "_marts__models.yml"  # the marts enforce theirs
    contract.write_text(
        contract.read_text().replace(
            "        data_type: decimal(18, 2)\n        data_tests: [not_null]\n\n"
            "  - name: fct_daily_revenue",
            "        data_type: decimal(18, 2)\n        data_tests: [not_null]\n"
            "      - name: is_repeat_customer\n"
            "        description: More than one order.\n"
            "        data_type: boolean\n\n"
            "  - name: fct_daily_revenue",
        )
    )
    assert "is_repeat_customer" in contract.read_text()
    serving = current(shop.settings)
    assert serving is not None
    working = hashlib.sha256(shop.settings.warehouse.read_bytes()).hexdigest()

    with (
        held_by_another_run(shop.settings),
        duckdb.connect(str(shop.settings.warehouse)),  # a writer holds the working warehouse
    ):
        result = dev.build(settings, (), project, capture=True)
    assert result.returncode == 0, result.stdout + result.stderr

    run_results = dev.dev_path(settings).with_name("ana.target") / "run_results.json"
    executed = {r["unique_id"] for r in json.loads(run_results.read_text())["results"]}
    assert {node for node in executed if node.startswith("model.")} == {
        "model.tributary.dim_customers"
    }
    assert (
        "test.tributary.relationships_fct_orders_customer_id__customer_id__ref_dim_customers_"
        in {node.rsplit(".", 1)[0] for node in executed}
    )
    # the dev file: the changed mart, right by the sources; staging views; no other mart
    relations = dict(dev.describe(settings))
    assert relations["marts.dim_customers"] == "table"
    assert "marts.fct_orders" not in relations and "marts.fct_daily_revenue" not in relations
    assert {r for r, kind in relations.items() if kind == "view"} >= {
        "staging.stg_shop__orders",
        "staging.stg_shop__customers",
    }
    expected = shop.expected().dim_customers
    with duckdb.connect(str(dev.dev_path(settings)), read_only=True) as built:
        repeat = dict(
            built.sql("select customer_id, is_repeat_customer from marts.dim_customers").fetchall()
        )
    assert repeat == {key: row["order_count"] > 1 for key, row in expected.items()}
    assert any(repeat.values()) and not all(repeat.values())
    # production: the same published version, without the change; the working file untouched
    assert current(shop.settings) == serving
    columns = _query(
        shop.settings.published,
        "select column_name from duckdb_columns() where table_name = 'dim_customers'",
    )
    assert ("is_repeat_customer",) not in columns
    assert hashlib.sha256(shop.settings.warehouse.read_bytes()).hexdigest() == working

    # adding a mart: the new model alone builds, from the sources, in dev
    (project / "models" / "marts" / "customer_stores.sql").write_text(
        "select customer_id, count(distinct store_id) as stores\n"
        "from {{ ref('stg_shop__orders') }}\ngroup by 1\n"
    )
    result = dev.build(settings, (), project, capture=True)
    assert result.returncode == 0, result.stdout + result.stderr
    executed = {r["unique_id"] for r in json.loads(run_results.read_text())["results"]}
    assert {node for node in executed if node.startswith("model.")} == {
        "model.tributary.dim_customers",  # still changed against production
        "model.tributary.customer_stores",
    }
    source_stores = read_shop(
        shop_sqlite_path(shop.settings),
        "select customer_id, count(distinct store_id) from orders group by 1",
    )
    with duckdb.connect(str(dev.dev_path(settings)), read_only=True) as built:
        stores = built.sql("select customer_id, stores from marts.customer_stores").fetchall()
    assert sorted(stores) == sorted(source_stores)

    # the dev-data limit: the last 30 days of orders, their items and payments
    result = dev.init(settings, project, days=30, capture=True)
    assert result.returncode == 0, result.stdout + result.stderr
    placed = {
        order_id: datetime.fromisoformat(str(at))
        for order_id, at in read_shop(
            shop_sqlite_path(shop.settings), "select order_id, ordered_at from orders"
        )
    }
    newest = max(placed.values())
    recent = {order_id for order_id, at in placed.items() if at >= newest - timedelta(days=30)}
    items = read_shop(shop_sqlite_path(shop.settings), "select order_id from order_items")
    with dev.connect(settings) as built:  # its views read production as `prod`
        dev_orders = {row[0] for row in built.sql("from staging.stg_shop__orders").fetchall()}
        [(dev_items,)] = built.sql("select count(*) from staging.stg_shop__order_items").fetchall()
        [(strays,)] = built.sql(
            "select count(*) from staging.stg_payments__payments "
            "where order_id not in (select order_id from staging.stg_shop__orders)"
        ).fetchall()
    assert dev_orders == recent and 0 < len(recent) < len(placed)
    assert dev_items == sum(1 for (order_id,) in items if order_id in recent)
    assert strays == 0


def test_the_dbt_flow_builds_an_analysts_dev_warehouse_without_touching_production(
    shop: Shop, held_across_runs: HeldAcrossRuns
) -> None:
    """`dbt/build` with `target: dev` (as `python -m flows.dbt_build --target dev`): the selected
    mart and its children build in-process into that analyst's own file, every node a task run
    of the flow run, the rest read from production — while the warehouse lock and a writer on
    the working warehouse are held, with no run journaled and nothing published."""
    serving = current(shop.settings)
    working = hashlib.sha256(shop.settings.warehouse.read_bytes()).hexdigest()
    journals = sorted((shop.settings.data_dir / "ops" / "runs").glob("*"))
    with (
        held_by_another_run(shop.settings),
        duckdb.connect(str(shop.settings.warehouse)),
    ):
        state = build(
            DbtBuildParameters(target="dev", select=["fct_orders+"], analyst="bo"),
            return_state=True,
        )
    summary = state.result()
    built = {node.unique_id for node in summary.nodes if node.resource_type == "model"}
    assert built == {"model.tributary.fct_orders"}, summary.statuses
    assert summary.passed and summary.tests_passed >= 5

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    # one task run per node of the build, and per staging view of the dev file it made first
    names = sorted(task.name.split(" ", 1)[1] for task in tasks)
    nodes = [  # test.<project>.<name>.<hash>, unit_test.<project>.<model>.<name>
        node.unique_id.split(".")[3 if node.resource_type == "unit_test" else 2]
        for node in summary.nodes
    ]
    views = [name for name in names if name.startswith("stg_")]
    assert sorted([*nodes, *views]) == names and len(views) == 7, names

    path = shop.settings.data_dir / "dev" / "bo.duckdb"
    with dev.connect(shop.settings.model_copy(update={"dev_path": path})) as built_dev:
        orders = dict(
            built_dev.sql("select order_id, order_total from marts.fct_orders").fetchall()
        )
    with duckdb.connect(str(shop.settings.published), read_only=True) as published:
        assert orders == dict(
            published.sql("select order_id, order_total from marts.fct_orders").fetchall()
        )
    assert orders == {key: row["order_total"] for key, row in shop.expected().fct_orders.items()}
    assert current(shop.settings) == serving
    assert hashlib.sha256(shop.settings.warehouse.read_bytes()).hexdigest() == working
    assert sorted((shop.settings.data_dir / "ops" / "runs").glob("*")) == journals


@dataclass
class FailedRun:
    error: StepFailed
    kept: Publication


@pytest.fixture(scope="module")
def failed_run(shop: Shop, held_across_runs: HeldAcrossRuns) -> FailedRun:
    """New orders arrive while one raw payment carries a currency no rate exists for: the
    payments test fails, so fct_orders is skipped while dim_customers and fct_daily_revenue
    rebuild with the new orders — the half-built set readers must never get."""
    kept = current(shop.settings)
    assert kept is not None
    _move_shop(shop, 3)
    with duckdb.connect(str(shop.settings.warehouse)) as warehouse:
        warehouse.execute(
            "update raw_payments.payments set currency = 'XXX' where payment_id = "
            "(select payment_id from raw_payments.payments where currency = 'EUR' "
            "order by updated_at, payment_id limit 1)"
        )
    with pytest.raises(StepFailed) as failure:
        elt()
    return FailedRun(failure.value, kept)


def test_a_failing_test_publishes_nothing_and_readers_keep_marts_that_agree(
    shop: Shop, failed_run: FailedRun
) -> None:
    kept = failed_run.kept
    message = str(failed_run.error)
    assert message.startswith("dbt build: DbtFailed:")
    assert "accepted_values_stg_payments__payments_currency" in message
    when = f"{kept.published_at:%Y-%m-%d %H:%M:%S} UTC"
    assert (
        f"readers keep the set published at {when} by run {kept.flow_run_id} ({kept.version})"
        in message
    )
    [note] = [line for line in message.splitlines() if line.startswith("not published: ")]
    failed, skipped = (int(part.split()[0]) for part in note.split(";")[0][15:].split(", "))
    assert failed == 1 and skipped > 0
    # the working warehouse holds the disagreeing marts of the issue ...
    [(orders, in_customers)] = shop.query(
        "select (select count(*) from marts.fct_orders), "
        "(select sum(order_count) from marts.dim_customers)"
    )
    assert in_customers > orders
    # ... and readers still get the last good set, whole
    assert current(shop.settings) == kept
    [(version, orders, *agreeing)] = _query(shop.settings.published, SEEN)
    assert version == kept.version and agreeing == [orders, orders]


@pytest.fixture(scope="module")
def fixed_run(shop: Shop, failed_run: FailedRun) -> RunReport:
    with duckdb.connect(str(shop.settings.warehouse)) as warehouse:
        warehouse.execute(
            "update raw_payments.payments set currency = 'EUR' where currency = 'XXX'"
        )
    return elt()


def test_once_the_data_is_fixed_the_next_run_publishes_again(
    shop: Shop, failed_run: FailedRun, fixed_run: RunReport
) -> None:
    published = _published(fixed_run)
    assert published.version > failed_run.kept.version
    assert {t.relation for t in published.tables if t.origin == "built by this build"} == set(
        MART_KEYS
    )
    assert "## Published" in fixed_run.to_markdown()
    assert f"get version {published.version}" in fixed_run.to_markdown()
    assert_marts_match(_readers_view(shop), shop.expected())


@dataclass
class SelectiveBuild:
    before: Publication
    after: Publication


@pytest.fixture(scope="module")
def selective_build(shop: Shop, fixed_run: RunReport) -> SelectiveBuild:
    """`dbt/build` of one mart, after something (an earlier failed build, a hand edit) left the
    working warehouse's other marts differing from what readers have."""
    before = _published(fixed_run)
    with duckdb.connect(str(shop.settings.warehouse)) as warehouse:
        warehouse.execute(
            "delete from marts.dim_customers where customer_id = "
            "(select min(customer_id) from marts.dim_customers);"
            "update marts.fct_daily_revenue set revenue = 0"
        )
    build(DbtBuildParameters(select=["fct_daily_revenue"]))
    after = current(shop.settings)
    assert after is not None
    return SelectiveBuild(before, after)


def test_a_selective_build_publishes_what_it_built_and_carries_the_rest_over(
    shop: Shop, selective_build: SelectiveBuild
) -> None:
    before, after = selective_build.before, selective_build.after
    assert after.version > before.version
    assert {t.relation: t.origin for t in after.tables if t.relation in MART_KEYS} == {
        "marts.fct_daily_revenue": "built by this build",
        "marts.fct_orders": f"carried over from {before.version}",
        "marts.dim_customers": f"carried over from {before.version}",
    }
    for table in ("marts.fct_orders", "marts.dim_customers"):
        sql = f"select * from {table} order by all"
        assert _query(after.path, sql) == _query(before.path, sql), table
    # rebuilt from the working warehouse's staging, not the edited table
    assert_marts_match(_readers_view(shop), shop.expected())


def test_publish_restore_sends_readers_back_one_version(
    shop: Shop, selective_build: SelectiveBuild
) -> None:
    result = CliRunner().invoke(app, ["publish", "restore"])
    assert result.exit_code == 0, result.output
    before = selective_build.before
    assert f"{shop.settings.published} now gives version {before.version}" in result.output
    [seen] = _query(shop.settings.published, SEEN)
    assert seen[0] == before.version
    sql = "select * from marts.fct_daily_revenue order by all"
    assert _query(shop.settings.published, sql) == _query(before.path, sql)


@dataclass
class Corrupted:
    error: StepFailed
    restore_output: str
    restored_from: Publication
    rerun: RunReport


@pytest.fixture(scope="module")
def corrupted(shop: Shop, selective_build: SelectiveBuild) -> Corrupted:
    """The working warehouse cut short, a run, `tributary warehouse restore`, another run."""
    restored_from = current(shop.settings)
    assert restored_from is not None
    with open(shop.settings.warehouse, "r+b") as warehouse:
        warehouse.truncate(1000)
    with pytest.raises(StepFailed) as failure:
        elt()
    # the command exactly as the error prints it, run by a shell as a user would
    [printed] = re.findall(r"`([^`]*warehouse restore)`", str(failure.value))
    restore = subprocess.run(printed, shell=True, capture_output=True, text=True, timeout=300)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    return Corrupted(failure.value, restore.stdout, restored_from, elt())


def test_a_corrupt_warehouse_names_its_setting_and_one_command_brings_it_back(
    shop: Shop, corrupted: Corrupted
) -> None:
    warehouse = shop.settings.warehouse
    message = str(corrupted.error)
    assert message.startswith("ingest shop: WarehouseUnreadable: TRIBUTARY_WAREHOUSE_PATH: ")
    assert f"{warehouse} is not a readable DuckDB database" in message
    assert f"`{RESTORE_COMMAND}`" in message
    assert "credentials" not in message and "internet" not in message

    output = corrupted.restore_output
    [aside] = [line.split()[-1] for line in output.splitlines() if line.startswith("moved aside")]
    assert Path(aside).name.startswith("warehouse.duckdb.corrupt-")
    assert Path(aside).stat().st_size == 1000
    assert f"restored      {warehouse} from {corrupted.restored_from.describe()}" in output
    assert f"removed       {shop.settings.pipelines_dir / 'tributary_shop'}" in output

    # the next run reloads every source whole and the marts equal the sources again
    loaded = {
        f"{load.dataset}.{table.table}": table.new
        for load in corrupted.rerun.loads
        for table in load.tables
    }
    [(orders,)] = shop.query("select count(*) from raw_shop.orders")
    assert loaded["raw_shop.orders"] == orders > ORDERS
    assert_marts_match(shop, shop.expected())
    assert_marts_match(_readers_view(shop), shop.expected())
    # and the run history published before the corruption is still there
    history = {
        run
        for (run,) in _query(
            corrupted.restored_from.path, "select flow_run_id from ops.pipeline_runs"
        )
    }
    assert history and history <= {
        run for (run,) in shop.query("select flow_run_id from ops.pipeline_runs")
    }
