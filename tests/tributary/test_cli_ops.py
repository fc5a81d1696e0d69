"""`tributary runs`, `status` and `query` on a real published file: run history written by
`tributary.ops`, published by `tributary.publish`, run journals written by `tributary.runs` —
and the working warehouse held open for writing by another process all the while."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    PREFECT_UI_URL,
    temporary_settings,
)
from typer.testing import CliRunner, Result

from ingestion.results import SourceLoad, TableLoad
from tributary.cli import app
from tributary.cli_ops import next_steps
from tributary.dbt import DbtSummary, NodeResult
from tributary.ops import RunRow, TableRow, write_runs
from tributary.publish import Publication, publish
from tributary.report import RunReport
from tributary.runs import JournalEntry, RunJournal
from tributary.settings import PROJECT_ROOT, Settings, get_settings

MARTS = {"marts.fct_orders", "marts.dim_customers"}
T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
RUNS = [
    RunRow(
        flow_run_id="run-1",
        flow_name="elt",
        deployment="elt/daily",
        status="completed",
        error=None,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=150),
        rows_loaded=1200,
        dbt_nodes_passed=80,
        dbt_nodes_failed=0,
        dbt_nodes_skipped=0,
        tables=[
            TableRow("raw_shop", "orders", ["1.1"], 1000, 1000, 0, 0),
            TableRow("raw_shop", "customers", ["1.1"], 200, 200, 0, 0),
        ],
    ),
    RunRow(
        flow_run_id="run-2",
        flow_name="elt",
        deployment="elt/incremental",
        status="failed",
        error="dbt build: 1 test failed: assert_orders_have_payments\nnot published: …",
        started_at=T0 + timedelta(minutes=15),
        finished_at=T0 + timedelta(minutes=16, seconds=5),
        rows_loaded=40,
        dbt_nodes_passed=70,
        dbt_nodes_failed=1,
        dbt_nodes_skipped=9,
        tables=[TableRow("raw_shop", "orders", ["2.1"], 40, 25, 15, 0)],
    ),
    RunRow(
        flow_run_id="run-3",
        flow_name="dbt",
        deployment="dbt/build",
        status="crashed",
        error="process 4242 ended without finishing the run (killed, or its machine stopped)",
        started_at=T0 + timedelta(minutes=30),
        finished_at=T0 + timedelta(minutes=30, seconds=20),
    ),
]


def _ops_json(row: RunRow) -> dict:
    return {
        "flow_run_id": row.flow_run_id,
        "flow": row.flow_name,
        "deployment": row.deployment,
        "status": row.status,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat(),
        "duration_seconds": (row.finished_at - row.started_at).total_seconds(),
        "rows_loaded": row.rows_loaded,
        "dbt_passed": row.dbt_nodes_passed,
        "dbt_failed": row.dbt_nodes_failed,
        "dbt_skipped": row.dbt_nodes_skipped,
        "error": row.error.splitlines()[0] if row.error else None,
        "source": "ops",
    }


def _build(*relations: str) -> DbtSummary:
    nodes = [
        NodeResult(f"model.tributary.{r.split('.')[1]}", "model", "success", 0.1, relation=r)
        for r in relations
    ]
    return DbtSummary(command="build", nodes=nodes, invocation_id="inv-1")


def _run_results(folder: Path) -> Path:
    """dbt's run_results.json as the build these tests publish left it."""
    run_results = folder / "run_results.json"
    run_results.write_text(json.dumps({"metadata": {"invocation_id": "inv-1"}}))
    return run_results


@pytest.fixture(autouse=True)
def last_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tributary.dbt.RUN_RESULTS", _run_results(tmp_path))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The commands' settings (from the environment), with the warehouse lock as a lock file."""
    monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield get_settings()
    get_settings.cache_clear()


def _publish_sample(settings: Settings) -> Publication:
    """A working warehouse with marts and three runs of history, published by run-4."""
    settings.warehouse.parent.mkdir(parents=True)
    with duckdb.connect(str(settings.warehouse)) as warehouse:
        warehouse.execute(
            """
            create schema raw_shop;
            create table raw_shop.orders as select range as order_id from range(1040);
            create schema marts;
            create table marts.fct_orders (order_id bigint not null, customer_id bigint,
                amount decimal(10, 2), ordered_at timestamptz);
            insert into marts.fct_orders values
                (1, 10, 12.50, '2026-11-01 06:00:00+00'),
                (2, 11, 7.25, '2026-11-01 07:30:00+00'),
                (3, null, 100.00, '2026-11-02 08:00:00+00');
            create table marts.dim_customers as
                select range as customer_id, 'customer ' || range as name from range(60);
            """
        )
    write_runs(settings, RUNS, now=T0)
    publication = publish(settings, _build(*MARTS), flow_run_id="run-4", project=MARTS)
    assert isinstance(publication, Publication)
    return publication


@pytest.fixture
def published(settings: Settings) -> Publication:
    """The sample, published in this test's own data folder, for a test that changes it."""
    return _publish_sample(settings)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Publication]]:
    """The sample published once, for the tests that only read it."""
    root = tmp_path_factory.mktemp("sample")
    with (
        pytest.MonkeyPatch.context() as patch,
        temporary_settings(restore_defaults={PREFECT_API_URL}),
    ):
        patch.setattr("tributary.dbt.RUN_RESULTS", _run_results(root))
        yield root / "data", _publish_sample(Settings(data_dir=root / "data"))


@pytest.fixture
def shared(
    sample: tuple[Path, Publication], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Publication]]:
    """The commands' settings pointing at the shared sample."""
    data_dir, publication = sample
    monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    yield get_settings(), publication
    get_settings.cache_clear()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def writer_holding(path: Path) -> Iterator[None]:
    """Another process holding the working warehouse open for writing, as a run does."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb\n"
            f"connection = duckdb.connect({str(path)!r})\n"
            "connection.execute('create table if not exists raw_shop.held (x int)')\n"
            "print('writing', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == "writing\n"
        yield
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def test_runs_lists_the_published_history_and_the_run_that_published(
    shared: tuple[Settings, Publication],
) -> None:
    _, published = shared
    result = invoke("runs", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {
            "flow_run_id": "run-4",
            "flow": None,
            "deployment": None,
            "status": "published",
            "started_at": None,
            "finished_at": published.published_at.isoformat(),
            "duration_seconds": None,
            "rows_loaded": None,
            "dbt_passed": None,
            "dbt_failed": None,
            "dbt_skipped": None,
            "error": None,
            "source": "publication",
        },
        *(_ops_json(row) for row in reversed(RUNS)),
    ]
    failed = invoke("runs", "--json", "--status", "failed")
    assert json.loads(failed.output) == [_ops_json(RUNS[1])]
    newest = invoke("runs", "--json", "--limit", "2")
    assert [run["flow_run_id"] for run in json.loads(newest.output)] == ["run-4", "run-3"]

    table = invoke("runs")
    assert table.exit_code == 0 and "\x1b[" not in table.output  # not a terminal: no colours
    lines = table.output.splitlines()
    rows = [line.split() for line in lines]
    assert [
        "2026-11-01", "06:15", "elt/incremental", "failed", "1m", "05s", "40", "70/1/9", "(3)"
    ] in rows  # fmt: skip
    assert ["2026-11-01", "06:00", "elt/daily", "completed", "2m", "30s", "1,200", "80/0/0"] in rows
    assert ["—", "—", "published", "—", "—", "—", "(1)"] in rows
    assert "(3) dbt build: 1 test failed: assert_orders_have_payments" in lines
    assert "not published" not in table.output  # the error's first line only
    assert (
        f"(1) run run-4 published the set readers get now, at "
        f"{published.published_at:%Y-%m-%d %H:%M:%S} UTC; its own history row comes with the "
        "next publication"
    ) in lines


def test_runs_shows_what_only_the_run_journals_know(
    settings: Settings, published: Publication
) -> None:
    """A run under way, one that ended with its history waiting in its journal, and one whose
    process is gone: none of them is in the published ops yet."""
    ended = RunRow(
        flow_run_id="run-7",
        flow_name="dbt",
        deployment=None,
        status="failed",
        error="dbt build failed (DbtFailed)\nmore",
        started_at=T0 + timedelta(hours=1),
        finished_at=T0 + timedelta(hours=1, seconds=42),
    )
    gone = subprocess.Popen(["true"])
    gone.wait()
    settings.runs_dir.mkdir(parents=True)
    for entry in (
        JournalEntry(
            flow_run_id="run-7",
            flow_name="dbt",
            deployment=None,
            warehouse=str(settings.warehouse),
            pid=os.getpid(),
            started_at=ended.started_at,
            status="failed",
            final=ended,
        ),
        JournalEntry(
            flow_run_id="run-8",
            flow_name="elt",
            deployment="elt/incremental",
            warehouse=str(settings.warehouse),
            pid=gone.pid,
            started_at=T0 + timedelta(hours=2),
        ),
        JournalEntry(  # another warehouse's run: not this history
            flow_run_id="run-9",
            flow_name="elt",
            deployment=None,
            warehouse="/elsewhere/warehouse.duckdb",
            pid=os.getpid(),
            started_at=T0,
        ),
    ):
        path = settings.runs_dir / f"{entry.flow_run_id}.json"
        path.write_text(entry.model_dump_json())
    loads = [SourceLoad("fx", "raw_fx", ["5.1"], [TableLoad("rates", 31, 31, 0)])]
    running = RunJournal.open(settings, flow_run_id="run-5", flow_name="elt", deployment=None)
    try:
        running.record(RunReport(warehouse=settings.warehouse, loads=loads))
        result = invoke("runs", "--json")
        only_running = invoke("runs", "--json", "--status", "running")
        table = invoke("runs")
    finally:
        running.finish("completed", None, RunReport(warehouse=settings.warehouse, loads=loads))

    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)
    assert [(r["flow_run_id"], r["status"], r["source"]) for r in runs] == [
        ("run-5", "running", "journal"),
        ("run-4", "published", "publication"),
        ("run-8", "crashed", "journal"),
        ("run-7", "failed", "journal"),
        ("run-3", "crashed", "ops"),
        ("run-2", "failed", "ops"),
        ("run-1", "completed", "ops"),
    ]
    now = datetime.now(UTC)
    run_5, _, run_8, run_7, *_ = runs
    assert run_5["rows_loaded"] == 31 and run_5["finished_at"] is None
    assert 0 <= run_5["duration_seconds"] < (now - running.entry.started_at).total_seconds()
    assert run_8["error"] == (
        f"process {gone.pid} is gone; the next run records this run as crashed"
    )
    assert (run_7["duration_seconds"], run_7["error"]) == (42.0, "dbt build failed (DbtFailed)")
    assert [r["flow_run_id"] for r in json.loads(only_running.output)] == ["run-5"]
    assert f"(1) under way ({settings.runs_dir / 'run-5.json'})" in table.output.splitlines()
    assert (
        f"(4) its history waits in {settings.runs_dir / 'run-7.json'} for the next run: "
        "dbt build failed (DbtFailed)"
    ) in table.output.splitlines()


def test_status_flags_what_is_older_than_the_stale_setting(
    settings: Settings, published: Publication
) -> None:
    # A build of fct_orders alone: dim_customers is carried over, as old as the first version.
    later = publish(settings, _build("marts.fct_orders"), flow_run_id="run-6", project=MARTS)
    assert isinstance(later, Publication)
    running = RunJournal.open(settings, flow_run_id="run-5", flow_name="elt", deployment=None)
    loads = [SourceLoad("fx", "raw_fx", ["5.1"], [TableLoad("rates", 31, 31, 0)])]
    try:
        running.record(RunReport(warehouse=settings.warehouse, loads=loads))
        result = invoke("status", "--json")
        table = invoke("status")
    finally:
        running.finish("completed", None, RunReport(warehouse=settings.warehouse, loads=loads))

    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert (found["version"], found["flow_run_id"]) == (later.version, "run-6")
    assert found["stale_after_hours"] == 26
    recorded = running.entry.progress
    assert recorded is not None
    source_keys = ("dataset", "table", "last_loaded_at", "rows_last_run", "flow_run_id", "stale")
    assert [tuple(s[k] for k in (*source_keys, "source")) for s in found["sources"]] == [
        ("raw_fx", "rates", recorded.finished_at.isoformat(), 31, "run-5", False, "journal"),
        ("raw_shop", "customers", RUNS[0].finished_at.isoformat(), 200, "run-1", True, "ops"),
        ("raw_shop", "orders", RUNS[1].finished_at.isoformat(), 40, "run-2", True, "ops"),
    ]
    mart_keys = ("relation", "rows", "published_at", "as_of", "carried_over_from", "flow_run_id")
    first, second = published.published_at.isoformat(), later.published_at.isoformat()
    assert [tuple(m[k] for k in (*mart_keys, "stale")) for m in found["marts"]] == [
        ("marts.dim_customers", 60, second, first, published.version, None, False),
        ("marts.fct_orders", 3, second, second, None, "run-6", False),
    ]
    assert 0 <= found["marts"][0]["age_hours"] - found["marts"][1]["age_hours"] < 1 / 60
    assert table.exit_code == 0 and "\x1b[" not in table.output
    assert "2 stale: raw_shop.customers, raw_shop.orders" in table.output
    assert f"as old as that version ({published.version}) at least" in table.output
    [dim_customers] = [line for line in table.output.splitlines() if "dim_customers" in line]
    assert dim_customers.split()[1] == "60" and dim_customers.split()[-2:] == ["ok", "carried"]


def test_status_with_a_tighter_setting_calls_the_marts_stale(
    shared: tuple[Settings, Publication], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIBUTARY_STALE_AFTER_HOURS", "0.0000001")
    get_settings.cache_clear()
    found = json.loads(invoke("status", "--json").output)
    assert found["stale_after_hours"] == 0.0000001
    assert all(mart["stale"] for mart in found["marts"])


def test_query_prints_the_rows_of_the_published_marts(shared: tuple[Settings, Publication]) -> None:
    sql = "from marts.fct_orders order by order_id"
    as_csv = invoke("query", sql, "--csv")
    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.stdout == (
        "order_id,customer_id,amount,ordered_at\n"
        "1,10,12.50,2026-11-01 06:00:00+00:00\n"
        "2,11,7.25,2026-11-01 07:30:00+00:00\n"
        "3,,100.00,2026-11-02 08:00:00+00:00\n"
    )
    as_json = invoke("query", "select order_id, customer_id, amount from marts.fct_orders "
                     "order by order_id", "--json")  # fmt: skip
    assert json.loads(as_json.stdout) == [
        {"order_id": 1, "customer_id": 10, "amount": 12.5},
        {"order_id": 2, "customer_id": 11, "amount": 7.25},
        {"order_id": 3, "customer_id": None, "amount": 100.0},
    ]
    table = invoke("query", sql)
    assert table.exit_code == 0 and "\x1b[" not in table.output
    [row_3] = [line for line in table.output.splitlines() if "100.00" in line]
    assert [cell.strip() for cell in row_3.split("│")[1:5]] == [
        "3", "NULL", "100.00", "2026-11-02 08:00:00+00:00"
    ]  # fmt: skip
    assert "3 row(s)" in table.output

    narrow = CliRunner().invoke(app, ["query", sql, "--max-rows", "1"], env={"COLUMNS": "60"})
    cells = [[c.strip() for c in line.split("│")[1:3]] for line in narrow.output.splitlines()]
    assert [cell for cell in cells if len(cell) == 2] == [
        ["order_id", "1"], ["customer_id", "10"], ["amount", "12.50"],
        ["ordered_at", "2026-11-01 06:00:00+00:00"],
    ]  # fmt: skip
    assert "3 row(s), a block per row" in narrow.output

    shortened = invoke("query", "from marts.dim_customers order by customer_id", "--max-rows", "5")
    assert "customer 4" in shortened.output and "customer 5" not in shortened.output
    assert "… 55 more row(s) not shown (--max-rows 5)" in shortened.output
    csv_rows = invoke("query", "from marts.dim_customers", "--csv", "--max-rows", "5")
    assert len(csv_rows.stdout.splitlines()) == 6  # the note went to stderr
    assert "… 55 more row(s)" in csv_rows.stderr
    everything = invoke("query", "from marts.dim_customers", "--csv", "--max-rows", "0")
    assert len(everything.stdout.splitlines()) == 61 and not everything.stderr


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "drop table marts.fct_orders",
            "tributary query: the published file is read-only (Invalid Input Error: Cannot "
            'execute statement of type "DROP" on database "published" which is attached in '
            "read-only mode!)",
        ),
        (
            "insert into marts.fct_orders (order_id) values (4)",
            "tributary query: the published file is read-only (Invalid Input Error: Cannot "
            'execute statement of type "INSERT" on database "published" which is attached in '
            "read-only mode!)",
        ),
        ("selec 1", 'tributary query: Parser Error: syntax error at or near "selec"'),
        (
            "from marts.fct_order",
            "tributary query: Catalog Error: Table with name fct_order does not exist! "
            'Did you mean "fct_orders"?',
        ),
    ],
)
def test_query_refuses_writes_and_names_sql_errors_on_one_line(
    shared: tuple[Settings, Publication], sql: str, expected: str
) -> None:
    _, published = shared
    before = _digest(published.path)
    result = invoke("query", sql)
    assert result.exit_code == 1
    assert result.stderr == expected + "\n" and not result.stdout
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert _digest(published.path) == before


def test_query_reaches_no_other_file(shared: tuple[Settings, Publication]) -> None:
    """Not even the working warehouse, through ATTACH: that would block the runs."""
    settings, _ = shared
    result = invoke("query", f"attach '{settings.warehouse}' as working")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "tributary query: it reads the published file and nothing else (Permission Error: "
    )
    assert result.stderr.count("\n") == 1


def test_readers_work_while_a_run_holds_the_working_warehouse(
    shared: tuple[Settings, Publication],
) -> None:
    settings, _ = shared
    with writer_holding(settings.warehouse):
        # the hold is real: any reader of the working warehouse would fail now
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(settings.warehouse), read_only=True)
        counted = invoke("query", "select count(*) as n from marts.fct_orders", "--json")
        history = invoke("runs", "--json")
        status = invoke("status", "--json")
    assert json.loads(counted.stdout) == [{"n": 3}]
    assert len(json.loads(history.stdout)) == 4
    assert status.exit_code == 0, status.output


def test_nothing_published_says_what_to_run(settings: Settings) -> None:
    for args in (("runs",), ("runs", "--json"), ("status",), ("query", "select 1")):
        result = invoke(*args)
        assert result.exit_code == 1, args
        assert isinstance(result.exception, SystemExit)
        assert result.stderr == (
            f"Nothing is published yet: {settings.published} does not exist. `make demo` (or "
            f"`{Path(sys.executable).parent / 'tributary'} demo`) loads the sample shop and "
            "publishes its marts; a run publishes once every node of its dbt build has passed.\n"
        )


def test_colours_only_on_a_terminal(shared: tuple[Settings, Publication]) -> None:
    tributary = Path(sys.executable).parent / "tributary"
    env = {**os.environ, "COLUMNS": "200"}
    piped = subprocess.run([tributary, "runs"], env=env, capture_output=True, text=True, check=True)
    assert "\x1b[" not in piped.stdout and "completed" in piped.stdout
    leader, follower = pty.openpty()
    with subprocess.Popen([tributary, "runs"], env=env, stdout=follower, cwd=PROJECT_ROOT):
        os.close(follower)
        output = b""
        while chunk := _read(leader):
            output += chunk
    os.close(leader)
    assert b"\x1b[" in output and b"completed" in output


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other side closed
        return b""


def test_the_demo_ends_with_what_to_do_next(settings: Settings) -> None:
    """Without PREFECT_API_URL the demo ran on a temporary server, which has stopped. Its
    database is set here: the test session's own Prefect server has another one."""
    bin_dir = Path(sys.executable).parent
    home = settings.data_dir / "prefect-home"
    with temporary_settings(
        updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{home}/prefect.db"},
        restore_defaults={PREFECT_API_URL, PREFECT_UI_URL},
    ):
        steps = next_steps()
    assert steps == [
        "Next:",
        f"  query the marts   {bin_dir / 'tributary'} query 'from marts.fct_orders limit 5'  "
        "(also --csv, --json; read-only, a run never blocks it)",
        f"  recent runs       {bin_dir / 'tributary'} runs",
        f"  freshness         {bin_dir / 'tributary'} status",
        "  the run report    the Prefect artifact `elt-run-report`, beside every flow and task "
        f"run, in {home}/prefect.db; the demo's temporary Prefect server stopped with it, so:",
        f"                    {bin_dir / 'prefect'} server start, then "
        "http://127.0.0.1:4200/artifacts/key/elt-run-report",
        "  dbt docs          make docs  (served on loopback)",
    ]


def test_the_demo_names_the_server_it_keeps_and_how_to_stop_it() -> None:
    bin_dir = Path(sys.executable).parent
    steps = next_steps("http://127.0.0.1:4200")
    assert steps[4:6] == [
        "  the run report    the Prefect artifact `elt-run-report`, beside every flow and task "
        "run: http://127.0.0.1:4200/artifacts/key/elt-run-report",
        f"                    (the demo's Prefect server keeps running: {bin_dir / 'tributary'} "
        "demo stop)",
    ]
