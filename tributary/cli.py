"""`tributary` command line: `tributary demo` runs the whole path on the sample shop."""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING
from uuid import UUID

import duckdb
import typer
from rich.console import Console
from rich.table import Table

from tributary.cli_dev import dev_app
from tributary.cli_ops import next_steps, query, runs, status
from tributary.cli_sources import sources_app

if TYPE_CHECKING:
    from tributary.report import RunReport
    from tributary.settings import Settings

# No local variables in tracebacks: they would print settings, and settings hold secrets.
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False
)
console = Console()

# Prefect's local temporary server: no telemetry (there is no internet) and time for its first
# database migration on a fresh machine, which takes longer than the default 20 s here.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "1",
}
# A short demo log: the flow's own lines, not one line per dbt node (the UI keeps those).
QUIET_DEMO = {"DBT_LOG_LEVEL": "warn", "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING"}
# Measured with 83 task runs: stopping right after the last final state showed still caught the
# recorder mid-write (ERROR at stop); 3 s later it was idle.
TRAILING_EVENTS_GRACE_SECONDS = 3
DEMO_TOKEN_FILE = "demo_api_token"  # the sample API's bearer token, under the data folder


@app.callback()
def main() -> None:
    """tributary: dlt loads sources into DuckDB, dbt models them, Prefect runs both."""


demo_app = typer.Typer()  # help: the callback's docstring
app.add_typer(demo_app, name="demo")


def _demo_token(settings: Settings) -> str:
    """The sample API's bearer token: SOURCES__PAYMENTS__TOKEN when set, else the one kept in
    ``<data_dir>/demo_api_token`` (made once, readable by its owner only), so that the demo,
    `tributary demo serve` and a worker that reads the file agree."""
    token = os.environ.get("SOURCES__PAYMENTS__TOKEN")
    if token:
        return token
    path = settings.data_dir / DEMO_TOKEN_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


@demo_app.command("serve")
def demo_serve(
    port: int = typer.Option(8765, help="Port on 127.0.0.1."),
) -> None:
    """Keep the sample shop's payments and exchange-rates API up on loopback, for the
    deployments' runs on the sample shop (README "Run in production")."""
    import uvicorn

    from demo.api import create_app
    from tributary.settings import get_settings

    settings = get_settings()
    if not settings.demo_api_db.is_file():
        console.print(
            f"No sample shop at {settings.demo_api_db}: `tributary demo` generates it.",
            markup=False,
        )
        raise typer.Exit(code=1)
    token = _demo_token(settings)
    url = f"http://127.0.0.1:{port}"
    token_source = (
        "its value"
        if os.environ.get("SOURCES__PAYMENTS__TOKEN")
        else f"$(cat {settings.data_dir / DEMO_TOKEN_FILE})"
    )
    console.print(
        f"Sample API on {url}. In the environment of the runs (the worker's):\n"
        f"  export TRIBUTARY_PAYMENTS_API_URL={url} TRIBUTARY_FX_API_URL={url}\n"
        f"  export SOURCES__PAYMENTS__TOKEN={token_source}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        create_app(settings.demo_api_db, token), host="127.0.0.1", port=port, log_level="warning"
    )


@demo_app.command("stop")
def demo_stop() -> None:
    """Stop the Prefect server `tributary demo` keeps running (its runs stay in its database)."""
    from tributary import demo_server
    from tributary.settings import get_settings

    settings = get_settings()
    server = demo_server.stop(settings)
    if server is None:
        console.print("The demo's Prefect server is not running.")
        return
    console.print(
        f"Stopped the demo's Prefect server ({server.ui}); its database stays in "
        f"{demo_server.folder(settings)}, and the next `tributary demo` starts it again.",
        markup=False,
    )


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    orders: int = typer.Option(10_000, help="Orders in a newly generated sample shop."),
    seed: int = typer.Option(42, help="Seed of the sample shop."),
) -> None:
    """Generate (or move forward) the sample shop, serve its API, run `elt` once, summarise."""
    if ctx.invoked_subcommand is not None:
        return
    for name, value in {**PREFECT_DEFAULTS, **QUIET_DEMO}.items():
        os.environ.setdefault(name, value)
    from tributary import demo_server
    from tributary.commands import command
    from tributary.settings import get_settings

    settings = get_settings()
    # Before Prefect is imported: it reads PREFECT_API_URL once, when it loads.
    kept = "PREFECT_API_URL" not in os.environ
    if kept:
        server, started = demo_server.ensure(settings)
        os.environ["PREFECT_API_URL"] = server.url
        console.print(
            f"{'Started' if started else 'Using'} the demo's Prefect server, {server.ui} — it "
            "keeps running for the next demo and for you to browse; "
            f"{command('tributary', 'demo', 'stop')} stops it"
        )
    from demo import paths
    from demo.api import serve_in_background
    from demo.generate import generate
    from demo.simulate import simulate
    from flows.elt import elt
    from tributary.runs import local_run

    if kept:  # its work pool and the warehouse's concurrency limit (kept when they exist)
        from tributary.server import setup_server

        setup_server(settings)
    shop_url = paths.shop_url(settings)
    if not paths.shop_exists(settings):
        console.print(f"Generating the sample shop ({orders:,} orders) at {shop_url} …")
        generate(shop_url, settings.demo_api_db, orders=orders, seed=seed, progress=True)
    else:
        change = simulate(shop_url, settings.demo_api_db, seed=seed, deletes=True)
        console.print(f"Moved the sample shop forward: {change.describe()}")

    token = os.environ.setdefault("SOURCES__PAYMENTS__TOKEN", _demo_token(settings))
    with serve_in_background(settings.demo_api_db, token) as base_url:
        os.environ["TRIBUTARY_PAYMENTS_API_URL"] = base_url
        os.environ["TRIBUTARY_FX_API_URL"] = base_url
        get_settings.cache_clear()
        console.print(f"Sample payments API on {base_url}; running the `elt` flow …")
        with local_run("elt"):
            state = elt(return_state=True)
        report = state.result()
    if kept:  # the server stays: it records what is sent after this process has gone
        _drain()
    else:
        _settle(state.state_details.flow_run_id)
    _print_summary(report)
    for line in next_steps(server.ui if kept else None):
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def _drain() -> None:
    """Send the events and logs this process still holds to the server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all()
    APILogWorker.drain_all()


def _settle(flow_run_id: UUID | None, timeout: float = 30) -> None:
    """Let the temporary Prefect server record the run before it stops at exit.

    The flow returns while its last events are still on their way; stopping the server then
    cancels their recording mid-write and it logs errors. Send what is queued, then wait until
    the server shows every task run of the flow run in a final state, and give the events that
    trail those states (prefect-dbt's node tasks send several each) a moment to be written.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _drain()
    if flow_run_id is None:
        return
    runs_of_flow = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            task_runs = client.read_task_runs(flow_run_filter=runs_of_flow)
            if all(run.state is not None and run.state.is_final() for run in task_runs):
                time.sleep(TRAILING_EVENTS_GRACE_SECONDS)
                return
            time.sleep(0.2)


def _print_summary(report: RunReport) -> None:
    from tributary.publish import Publication

    table = Table(
        title="Rows loaded this run",
        caption="loaded: rows written, counting the rows re-read unchanged inside the cursor's "
        "lag window; new: keys the warehouse did not hold; updated: rows that changed",
    )
    for column in ("raw table", "loaded", "new", "updated", "deleted"):
        table.add_column(column, justify="left" if column == "raw table" else "right")
    for load in report.loads:
        for row in load.tables:
            table.add_row(
                f"{load.dataset}.{row.table}",
                *(f"{n:,}" for n in (row.loaded, row.new, row.updated, row.deleted)),
            )
    console.print(table)
    dbt = report.dbt
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(dbt.statuses.items()))
    console.print(
        f"dbt build: {dbt.models_built} models built, {dbt.tests_passed} tests passed "
        f"(nodes: {statuses})"
    )
    published = report.published
    if not isinstance(published, Publication):
        console.print(f"Marts: {published}", soft_wrap=True, markup=False)
        return
    # What readers see: the published file, which no run writes in place.
    with duckdb.connect(str(published.link), read_only=True) as readers:
        names = readers.sql(
            "select table_name from duckdb_tables() where schema_name = 'marts' order by 1"
        ).fetchall()
        marts = {
            name: readers.sql(f"select count(*) from marts.{name}").fetchone()[0]
            for (name,) in names
        }
    console.print(
        "Marts: " + ", ".join(f"marts.{name} {rows:,} rows" for name, rows in marts.items())
    )
    # Not wrapped: the path is there to be copied.
    console.print(f"Published: {published.describe()}", soft_wrap=True, markup=False)
    console.print(
        f"Query it with `duckdb -readonly {published.link}`, or in Python "
        f"`duckdb.connect({str(published.link)!r}, read_only=True)`; a run never blocks it.",
        soft_wrap=True,
        markup=False,
    )


@app.command()
def run(
    source: list[str] = typer.Option(
        [],
        "--source",
        help="A source declared in sources.yml (repeat the option); default: every source.",
    ),
    tag: list[str] = typer.Option(
        [], "--tag", help="Ingest the sources with this tag (repeatable), e.g. intraday."
    ),
    confirm_deletes: bool = typer.Option(
        False, help="Go ahead with deletes a run stopped (more than TRIBUTARY_DELETE_MAX_SHARE)."
    ),
) -> None:
    """Run the `elt` flow once, here: ingest, dbt build, publish, record. Exit 1 if it fails."""
    for name, value in {**PREFECT_DEFAULTS, **QUIET_DEMO}.items():
        os.environ.setdefault(name, value)
    from pydantic import ValidationError

    from flows.elt import EltParameters, elt
    from tributary.runs import local_run
    from tributary.settings import ConfigurationError

    try:
        params = EltParameters(
            **({"sources": source} if source else {}),
            tags=tag,
            confirm_deletes=confirm_deletes,
        )
    except (ValidationError, ConfigurationError) as exc:
        typer.echo(f"tributary run: {exc}", err=True)
        raise typer.Exit(code=2) from None
    with local_run("elt"):
        state = elt(params, return_state=True)
    _settle(state.state_details.flow_run_id)
    if not state.is_completed():
        typer.echo(f"The run failed: {state.message}", err=True)
        raise typer.Exit(code=1)
    _print_summary(state.result())


@app.command()
def release(
    ref: str = typer.Option("HEAD", help="The commit to release: a branch, tag or hash."),
    point: bool = typer.Option(
        True, "--point/--no-point", help="Point the deployments at it (the server's variable)."
    ),
) -> None:
    """Pin what the deployments run: the commit's files (nothing uncommitted) in a folder of
    their own, and the deployments' next runs in it. Run it again to roll forward; point the
    variable `tributary_release` at an earlier folder to roll back."""
    from prefect.settings import PREFECT_API_URL

    from tributary.release import VARIABLE, make_release, point_deployments
    from tributary.settings import ConfigurationError, get_settings

    try:
        made = make_release(get_settings(), ref)
    except ConfigurationError as exc:
        console.print(str(exc), markup=False)
        raise typer.Exit(code=1) from None
    verb = "Released" if made.made else "Already released"
    console.print(
        f"{verb} {made.commit[:12]} ({ref}) in {made.folder}", markup=False, soft_wrap=True
    )
    if not point:
        return
    if not PREFECT_API_URL.value():
        console.print(
            "PREFECT_API_URL is not set, so no deployment was pointed at it; against your "
            f"server: `prefect variable set {VARIABLE} {made.folder} --overwrite`",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    point_deployments(made)
    console.print(f"The deployments' next runs use it (Prefect variable {VARIABLE}).", markup=False)


@app.command("server-setup")
def server_setup() -> None:
    """Prepare the Prefect server at PREFECT_API_URL: work pool, warehouse limit, automations."""
    from prefect.settings import PREFECT_API_URL

    from tributary.server import setup_server
    from tributary.settings import get_settings

    if not PREFECT_API_URL.value():
        console.print("PREFECT_API_URL is not set: point it at your Prefect server first.")
        raise typer.Exit(code=2)
    result = setup_server(get_settings())
    for line in result.created:
        console.print(f"created  {line}")
    for line in result.kept:
        console.print(f"kept     {line}")
    for line in result.skipped:
        console.print(f"skipped  {line}")


warehouse_app = typer.Typer(no_args_is_help=True, help="The working warehouse dlt and dbt write.")
publish_app = typer.Typer(no_args_is_help=True, help="The published file readers open.")
app.add_typer(warehouse_app, name="warehouse")
app.add_typer(publish_app, name="publish")


@warehouse_app.command("restore")
def warehouse_restore(
    force: bool = typer.Option(False, help="Replace a working warehouse that opens fine too."),
) -> None:
    """Replace an unreadable working warehouse with the last published version; the next run
    reloads every source."""
    from tributary.publish import WarehouseInUse, restore_warehouse
    from tributary.settings import ConfigurationError, get_settings

    settings = get_settings()
    try:
        result = restore_warehouse(settings, force=force)
    except (WarehouseInUse, ConfigurationError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None
    for aside in result.moved:
        typer.echo(f"moved aside   {aside}")
    if result.restored_from is None:
        typer.echo("no published version to restore from: the next run builds from nothing")
    else:
        typer.echo(
            f"restored      {settings.warehouse} from {result.restored_from.describe()} "
            "(marts, run history, quarantine)"
        )
    for path in result.removed_state:
        typer.echo(f"removed       {path} (dlt state for the old warehouse)")
    typer.echo(
        "Next: run the `elt` flow (`python -m flows.elt`, or `prefect deployment run "
        "'elt/daily'`); it reloads every source whole."
    )


@publish_app.command("restore")
def publish_restore(
    version: str | None = typer.Option(
        None,
        help="A kept version's file name (`tributary publish list`); default: the one "
        "before the current.",
    ),
) -> None:
    """Point the published file back at an earlier kept version."""
    from tributary.publish import WarehouseInUse, restore_published
    from tributary.settings import ConfigurationError, get_settings

    try:
        publication = restore_published(get_settings(), version)
    except (WarehouseInUse, ConfigurationError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None
    typer.echo(
        f"{publication.link} now gives {publication.describe()}; readers see it when they "
        "next connect."
    )


@publish_app.command("list")
def publish_list() -> None:
    """The kept published versions, oldest first; `*` marks the one readers get."""
    from tributary.publish import read_publication, versions
    from tributary.settings import MART_SCHEMAS, get_settings

    settings = get_settings()
    link = settings.published
    serving = link.resolve() if link.is_symlink() else None
    typer.echo(f"Versions behind {link}:")
    for path in versions(settings):
        publication = read_publication(path, link)
        marts = ", ".join(
            f"{t.relation} {t.rows:,}"
            for t in publication.tables
            if t.relation.split(".", 1)[0] in MART_SCHEMAS
        )
        typer.echo(
            f"{'*' if path == serving else ' '} {publication.version}  "
            f"{publication.published_at:%Y-%m-%d %H:%M:%S} UTC  "
            f"run {publication.flow_run_id or 'none'}  {marts}"
        )


app.add_typer(sources_app, name="sources")
app.add_typer(dev_app, name="dev")
app.command()(runs)
app.command()(status)
app.command()(query)
quarantine_app = typer.Typer(no_args_is_help=True, help="Rows kept out of raw, and why.")
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(
    source: str | None = typer.Option(None, help="Only this source's rows."),
    table: str | None = typer.Option(None, help="Only this table's rows."),
    replayed: bool = typer.Option(False, help="Also the rows already replayed or superseded."),
    limit: int = typer.Option(50, help="At most this many rows, newest first."),
) -> None:
    """The quarantined rows: source, table, key, why, how often and since when."""
    from tributary.commands import command
    from tributary.lock import warehouse_lock
    from tributary.settings import get_settings
    from tributary.warehouse import check_warehouse

    settings = get_settings()
    filters, values = ["true"], []
    for column, value in (("source", source), ("table_name", table)):
        if value is not None:
            filters.append(f"{column} = ?")
            values.append(value)
    if not replayed:
        filters.append("replayed_at is null")
    # The working warehouse, for a moment, under the lock: a run never finds it held.
    with warehouse_lock(settings):
        check_warehouse(settings)
        with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
            if not warehouse.execute(
                "select 1 from duckdb_tables() where schema_name = 'quarantine'"
            ).fetchall():
                rows, total = [], 0
            else:
                where = " and ".join(filters)
                [(total,)] = warehouse.execute(
                    f"select count(*) from quarantine.rows where {where}", values
                ).fetchall()
                rows = warehouse.execute(
                    "select source, table_name, row_key, reason, times_seen, first_seen_at, "
                    f"last_seen_at, replayed_at from quarantine.rows where {where} "
                    "order by last_seen_at desc limit ?",
                    [*values, limit],
                ).fetchall()
    typer.echo(f"Quarantined rows ({total:,}), newest first:")
    for row_source, row_table, key, reason, seen, first, _, done in rows:
        closed = f", replayed {done:%Y-%m-%d %H:%M}" if done else ""
        typer.echo(
            f"  {row_source}.{row_table} {key or '(no key)'}: {reason} "
            f"[seen {seen}x since {first:%Y-%m-%d %H:%M} UTC{closed}]"
        )
    if total > len(rows):
        typer.echo(f"… {total - len(rows):,} more (--limit).")
    if rows:
        typer.echo(
            "Each row's payload is in quarantine.rows (payload). Once the cause is fixed, load "
            f"the rows that pass the contract now: {command('tributary', 'quarantine', 'replay')} "
            "<source>"
        )


@quarantine_app.command("replay")
def quarantine_replay(
    source: str = typer.Argument(..., help="The source whose rows to replay."),
    table: list[str] = typer.Option([], "--table", help="Only this table (repeatable)."),
) -> None:
    """Load the quarantined rows that pass the source's contract now (merged on their key, no
    cursor moves); rows whose key raw holds already are closed; the rest stay, with why."""
    from ingestion import registry
    from ingestion.replay import replay_quarantined
    from tributary.settings import ConfigurationError, get_settings

    try:
        registry.check_names([source], get_settings(), "tributary quarantine replay")
    except ConfigurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    try:
        result = replay_quarantined(source, get_settings(), table)
    except ConfigurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from None
    for name, rows in sorted(result.replayed.items()):
        typer.echo(f"replayed      {source}.{name}: {rows:,} row(s) loaded")
    for name, rows in sorted(result.superseded.items()):
        typer.echo(
            f"superseded    {source}.{name}: {rows:,} row(s) raw already holds a newer copy of"
        )
    for (name, reason), rows in sorted(result.still_failing.items()):
        typer.echo(f"still failing {source}.{name}: {rows:,} row(s): {reason}")
    if not (result.replayed or result.superseded or result.still_failing):
        typer.echo(f"Nothing quarantined for {source}.")
