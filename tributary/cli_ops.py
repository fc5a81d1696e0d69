"""`tributary runs`, `tributary status`, `tributary query`: read-only views for analysts.

They read the published file (``TRIBUTARY_PUBLISHED_PATH``) and the run journals, never the
working warehouse: a read-only DuckDB connection to that file from another process blocks every
writer of it, so a reader there would stop the pipeline. The published file is written once and
never in place, so reading it blocks nothing. Its ``ops`` schema holds every run up to the one
that published it (a run records itself just before it publishes); the run journals
(``tributary.runs``) add the rest: a run under way, or one that ended without publishing and
waits for the next run to write its history.

Nothing here imports Prefect (``tributary.runs``, ``tributary.publish`` and ``tributary.ops``
do, through ``tributary.lock``): that import takes seconds, and these commands should not.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import duckdb
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tributary.commands import command
from tributary.orphans import pid_alive
from tributary.settings import (
    MART_SCHEMAS,
    PUBLICATION_SCHEMA,
    ConfigurationError,
    Settings,
    get_settings,
)

console = Console()

# A reader of the published file reaches nothing else: no ATTACH (of the working warehouse, say),
# no COPY TO, no file reads, no extension installs; and no query can switch that back on. Set
# after connecting: given to `connect`, it stops DuckDB loading its time zone extension when TZ
# is set. Times in UTC, as the warehouse keeps them and `runs` and `status` print them.
READER_SETTINGS = (
    "set TimeZone = 'UTC'; set enable_external_access = false; set lock_configuration = true"
)
# tributary.publish names where a carried-over table came from "carried over from <version>",
# and a version file after its time of publication: "<stem>-20260101T060000123456Z.duckdb".
CARRIED_OVER = "carried over from "
VERSION_TIME = re.compile(r"-(\d{8}T\d{12}Z)\.duckdb$")
SQLITE = "sqlite+aiosqlite:///"
STATUS_STYLES = {"completed": "green", "failed": "red", "crashed": "red", "running": "yellow"}


class RunStatus(StrEnum):
    failed = "failed"
    crashed = "crashed"
    completed = "completed"
    running = "running"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=code)


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigurationError as exc:
        raise _fail(str(exc), 2) from None


def _one_line(exc: BaseException) -> str:
    """DuckDB's message on one line: its lines up to the `LINE n:` pointer into the SQL."""
    lines: list[str] = []
    for line in str(exc).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or type(exc).__name__


def _nothing_published(settings: Settings) -> str:
    return (
        f"Nothing is published yet: {settings.published} does not exist. `make demo` (or "
        f"`{command('tributary', 'demo')}`) loads the sample shop and publishes its marts; a "
        "run publishes once every node of its dbt build has passed."
    )


@contextmanager
def _published(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the published file; exit 1 saying why when there is none."""
    link = settings.published
    if not link.exists():  # also a link whose version is gone
        raise _fail(_nothing_published(settings))
    try:
        connection = duckdb.connect(str(link), read_only=True)
    except duckdb.Error as exc:
        raise _fail(f"Cannot open the published file {link}: {_one_line(exc)}") from None
    with connection:
        connection.execute(READER_SETTINGS)
        yield connection


@contextmanager
def _dev(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """The analyst's dev warehouse, read-only, as its views expect it (``tributary.dev``)."""
    from tributary import dev

    try:
        connection = dev.connect(settings)
    except (ConfigurationError, duckdb.Error) as exc:
        raise _fail(_one_line(exc)) from None
    with connection:
        connection.execute(READER_SETTINGS)
        yield connection


def _has_table(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        connection.execute(
            "select 1 from duckdb_tables() where schema_name = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(value: datetime | None, seconds: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:%Y-%m-%d %H:%M:%S}" if seconds else f"{value:%Y-%m-%d %H:%M}"


def _span(seconds: float | None) -> str:
    """A duration or an age, short: `42s`, `3m 05s`, `2h 05m`, `3d 04h`."""
    if seconds is None:
        return "—"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d {hrs:02d}h"
    if hours:
        return f"{hours}h {mins:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _table(title: str, *columns: str) -> Table:
    """A table of short cells that stay on one line each; a name starting `>` is a column of
    numbers, right-aligned."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in columns:
        right = column.startswith(">")
        table.add_column(column.removeprefix(">"), justify="right" if right else "left",
                         no_wrap=True)  # fmt: skip
    return table


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_jsonable, ensure_ascii=False)


# ── tributary runs ────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class RunLine:
    """One run as `tributary runs` shows it, wherever it was found."""

    flow_run_id: str
    flow: str | None
    deployment: str | None
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    rows_loaded: int | None
    dbt_passed: int | None
    dbt_failed: int | None
    dbt_skipped: int | None
    error: str | None
    source: str

    @property
    def sort_time(self) -> datetime:
        return self.started_at or self.finished_at or datetime.min.replace(tzinfo=UTC)


def _first_line(error: str | None) -> str | None:
    if not error:
        return None
    return next((line.strip() for line in error.splitlines() if line.strip()), None)


def _journal_entries(settings: Settings) -> list[dict[str, Any]]:
    """The run journals of this warehouse, as JSON (``tributary.runs.JournalEntry``); a file
    removed meanwhile (its run wrote its history) or half-readable is skipped."""
    entries = []
    folder = settings.runs_dir
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(entry, dict) and entry.get("warehouse") == str(settings.warehouse):
            entries.append(entry)
    return entries


def _time(value: str | None) -> datetime | None:
    return _utc(datetime.fromisoformat(value)) if value else None


def _journal_run(entry: dict[str, Any], now: datetime) -> RunLine:
    final = entry.get("final")
    status = entry.get("status", "running")
    row = final or entry.get("progress") or {}
    started = _time(entry.get("started_at"))
    error = row.get("error") if final else None
    finished = _time(final.get("finished_at")) if final else None
    # The pid, not the journal's lock: taking the lock, even for a moment, could make its run
    # fail to start.
    if final is None and not pid_alive(int(entry.get("pid", 0))):
        status = "crashed"
        error = f"process {entry.get('pid')} is gone; the next run records this run as crashed"
    end = finished or now
    return RunLine(
        flow_run_id=entry["flow_run_id"],
        flow=entry.get("flow_name"),
        deployment=entry.get("deployment"),
        status=status,
        started_at=started,
        finished_at=finished,
        duration_seconds=(end - started).total_seconds() if started else None,
        rows_loaded=row.get("rows_loaded"),
        dbt_passed=row.get("dbt_nodes_passed"),
        dbt_failed=row.get("dbt_nodes_failed"),
        dbt_skipped=row.get("dbt_nodes_skipped"),
        error=_first_line(error),
        source="journal",
    )


def _ops_runs(
    connection: duckdb.DuckDBPyConnection, status: str | None, skip: list[str], limit: int
) -> list[RunLine]:
    if not _has_table(connection, "ops", "pipeline_runs"):
        return []
    rows = connection.execute(
        "select flow_run_id, flow_name, deployment, status, error, started_at, finished_at, "
        "rows_loaded, dbt_nodes_passed, dbt_nodes_failed, dbt_nodes_skipped "
        "from ops.pipeline_runs "
        "where (?::varchar is null or status = ?) and not list_contains(?::varchar[], flow_run_id) "
        "order by started_at desc, flow_run_id limit ?",
        [status, status, skip, limit],
    ).fetchall()
    lines = []
    for run_id, flow, deployment, state, error, started, finished, *counts in rows:
        started, finished = _utc(started), _utc(finished)
        lines.append(
            RunLine(
                run_id,
                flow,
                deployment,
                state,
                started,
                finished,
                (finished - started).total_seconds(),
                *counts,
                error=_first_line(error),
                source="ops",
            )
        )
    return lines


def _publishing_run(connection: duckdb.DuckDBPyConnection, known: set[str]) -> RunLine | None:
    """The run that published the current set, unless its history is already to be seen."""
    if not _has_table(connection, PUBLICATION_SCHEMA, "publication"):
        return None
    [(run_id, published_at)] = connection.execute(
        f"select flow_run_id, published_at from {PUBLICATION_SCHEMA}.publication"
    ).fetchall()
    if run_id is None or run_id in known:
        return None
    if (
        _has_table(connection, "ops", "pipeline_runs")
        and connection.execute(
            "select 1 from ops.pipeline_runs where flow_run_id = ?", [run_id]
        ).fetchall()
    ):
        return None
    return RunLine(
        flow_run_id=run_id,
        flow=None,
        deployment=None,
        status="published",
        started_at=None,
        finished_at=_utc(published_at),
        duration_seconds=None,
        rows_loaded=None,
        dbt_passed=None,
        dbt_failed=None,
        dbt_skipped=None,
        error=None,
        source="publication",
    )


def collect_runs(settings: Settings, status: str | None, limit: int) -> tuple[list[RunLine], bool]:
    """The newest runs (at most ``limit``), from the published history and the run journals;
    and whether anything is published."""
    now = datetime.now(UTC)
    journal = [_journal_run(entry, now) for entry in _journal_entries(settings)]
    lines = [line for line in journal if status is None or line.status == status]
    published = settings.published.exists()
    if published:
        with _published(settings) as connection:
            skip = [line.flow_run_id for line in journal]
            lines += _ops_runs(connection, status, skip, limit)
            if status is None:
                publisher = _publishing_run(connection, set(skip))
                lines += [publisher] if publisher else []
    lines.sort(key=lambda line: line.sort_time, reverse=True)
    return lines[:limit], published


def _note(line: RunLine, settings: Settings) -> str | None:
    """What a row of the table cannot hold: the error's first line, and where a run not (yet)
    in the published history was found."""
    if line.source == "publication":
        return (
            f"run {line.flow_run_id} published the set readers get now, at "
            f"{_when(line.finished_at, seconds=True)} UTC; its own history row comes with the "
            "next publication"
        )
    if line.source == "journal":
        journal = settings.runs_dir / f"{line.flow_run_id}.json"
        where = (
            f"under way ({journal})"
            if line.status == "running"
            else f"its history waits in {journal} for the next run"
        )
        return f"{where}{': ' + line.error if line.error else ''}"
    return line.error


def runs(
    limit: int = typer.Option(20, min=1, help="At most this many runs, newest first."),
    status: RunStatus | None = typer.Option(None, help="Only the runs with this status."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list instead."),
) -> None:
    """Recent `elt` and `dbt` runs, newest first: status, duration, rows, dbt nodes, errors.

    Reads the published file and the run journals, never the working warehouse: safe while a
    run writes it."""
    settings = _settings()
    lines, published = collect_runs(settings, status.value if status else None, limit)
    if as_json:
        if published or lines:
            typer.echo(_dumps([asdict(line) for line in lines]))
        if not published:
            raise _fail(_nothing_published(settings))
        return
    if lines:
        table = _table("Runs, newest first", "started (UTC)", "flow", "status", ">took", ">rows",
                       "dbt", "")  # fmt: skip
        notes: list[str] = []
        for line in lines:
            note = _note(line, settings)
            notes += [note] if note else []
            dbt = (line.dbt_passed, line.dbt_failed, line.dbt_skipped)
            table.add_row(
                Text(_when(line.started_at)),
                Text(line.deployment or line.flow or "—"),
                Text(line.status, style=STATUS_STYLES.get(line.status, "")),
                Text(_span(line.duration_seconds)),
                Text("—" if line.rows_loaded is None else f"{line.rows_loaded:,}"),
                Text("—" if dbt == (None, None, None) else "/".join(str(n or 0) for n in dbt)),
                Text(f"({len(notes)})" if note else ""),
            )
        console.print(table)
        typer.echo("dbt: nodes passed/failed/skipped.")
        for number, note in enumerate(notes, 1):
            typer.echo(f"({number}) {note}")
    elif published:
        typer.echo(
            "No runs recorded yet"
            + (f" with status {status.value}." if status else ".")
            + " The published history holds the runs up to the one that published it."
        )
    if not published:
        raise _fail(_nothing_published(settings))


# ── tributary status ──────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class SourceFreshness:
    dataset: str
    table: str
    last_loaded_at: datetime
    rows_last_run: int
    flow_run_id: str
    age_hours: float
    stale: bool
    source: str


@dataclass(frozen=True)
class MartFreshness:
    relation: str
    rows: int
    published_at: datetime
    as_of: datetime
    """When it was built: the publication that made it, or for a table carried over from an
    earlier version, that version's time — it is at least that old."""
    carried_over_from: str | None
    flow_run_id: str | None
    age_hours: float
    stale: bool


@dataclass(frozen=True)
class Status:
    published_file: str
    version: str
    published_at: datetime
    flow_run_id: str | None
    stale_after_hours: float
    sources: list[SourceFreshness]
    marts: list[MartFreshness]


def _version_time(version: str) -> datetime | None:
    found = VERSION_TIME.search(version)
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def collect_status(settings: Settings) -> Status:
    """Freshness of each raw table (its latest load, from ops and the run journals) and of each
    mart in the published set, against TRIBUTARY_STALE_AFTER_HOURS."""
    now = datetime.now(UTC)
    limit = settings.stale_after_hours

    def hours(since: datetime) -> float:
        return (now - since).total_seconds() / 3600

    latest: dict[tuple[str, str], tuple[datetime, int, str, str]] = {}
    with _published(settings) as connection:
        if not _has_table(connection, PUBLICATION_SCHEMA, "publication"):
            raise _fail(
                f"{settings.published} holds no {PUBLICATION_SCHEMA}.publication: tributary "
                "did not publish it"
            )
        [(version, published_at, run_id)] = connection.execute(
            f"select version, published_at, flow_run_id from {PUBLICATION_SCHEMA}.publication"
        ).fetchall()
        published_at = _utc(published_at)
        marts = connection.execute(
            f"select relation, row_count, origin from {PUBLICATION_SCHEMA}.published_tables "
            "where split_part(relation, '.', 1) in (select unnest(?::varchar[])) order by 1",
            [list(MART_SCHEMAS)],
        ).fetchall()
        if _has_table(connection, "ops", "table_loads"):
            for dataset, table, loaded_at, rows, load_run in connection.execute(
                "select dataset, table_name, loaded_at, rows_loaded, flow_run_id "
                "from ops.table_loads qualify row_number() over "
                "(partition by dataset, table_name order by loaded_at desc) = 1"
            ).fetchall():
                latest[dataset, table] = (_utc(loaded_at), rows, load_run, "ops")
    for entry in _journal_entries(settings):
        row = entry.get("final") or entry.get("progress")
        if not row:
            continue
        loaded_at = _time(row["finished_at"])
        for table in row.get("tables", []):
            key = (table["dataset"], table["table_name"])
            if key not in latest or latest[key][0] < loaded_at:
                latest[key] = (loaded_at, table["rows_loaded"], row["flow_run_id"], "journal")
    sources = [
        SourceFreshness(dataset, table, at, rows, load_run, hours(at), hours(at) > limit, origin)
        for (dataset, table), (at, rows, load_run, origin) in sorted(latest.items())
    ]
    mart_lines = []
    for relation, rows, origin in marts:
        carried = origin.removeprefix(CARRIED_OVER) if origin.startswith(CARRIED_OVER) else None
        as_of = (_version_time(carried) if carried else None) or published_at
        mart_lines.append(
            MartFreshness(
                relation=relation,
                rows=rows,
                published_at=published_at,
                as_of=as_of,
                carried_over_from=carried,
                flow_run_id=None if carried else run_id,
                age_hours=hours(as_of),
                stale=hours(as_of) > limit,
            )
        )
    return Status(
        str(settings.published), version, published_at, run_id, limit, sources, mart_lines
    )


def status(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Freshness of each raw table and published mart; stale past TRIBUTARY_STALE_AFTER_HOURS.

    Reads the published file and the run journals, never the working warehouse: safe while a
    run writes it."""
    settings = _settings()
    found = collect_status(settings)
    if as_json:
        typer.echo(_dumps(asdict(found)))
        return
    typer.echo(
        f"Published: {found.version}, at {_when(found.published_at, seconds=True)} UTC by run "
        f"{found.flow_run_id or 'none (by hand)'} ({found.published_file})"
    )
    typer.echo(f"Stale: older than {found.stale_after_hours:g} h (TRIBUTARY_STALE_AFTER_HOURS).")

    def flag(stale: bool) -> Text:
        return Text("stale", style="bold red") if stale else Text("ok", style="green")

    if found.sources:
        table = _table(
            "Raw tables: latest load",
            "raw table", "loaded (UTC)", ">age", ">rows", "fresh", "from",
        )  # fmt: skip
        for source in found.sources:
            table.add_row(
                Text(f"{source.dataset}.{source.table}"),
                Text(_when(source.last_loaded_at)),
                Text(_span(source.age_hours * 3600)),
                Text(f"{source.rows_last_run:,}"),
                flag(source.stale),
                Text(source.source),
            )
        console.print(table)
    else:
        typer.echo("Raw tables: no load in the published history or a run journal yet.")
    table = _table("Marts readers get", "mart", ">rows", "as of (UTC)", ">age", "fresh", "from")
    for mart in found.marts:
        age = _span(mart.age_hours * 3600)
        table.add_row(
            Text(mart.relation),
            Text(f"{mart.rows:,}"),
            Text(_when(mart.as_of)),
            Text(f"≥ {age}" if mart.carried_over_from else age),
            flag(mart.stale),
            Text("carried" if mart.carried_over_from else "built"),
        )
    console.print(table)
    carried = sorted({m.carried_over_from for m in found.marts if m.carried_over_from})
    if carried:
        typer.echo(
            "carried: carried over from an earlier version, not built by the run that published "
            f"this set; as old as that version ({', '.join(carried)}) at least."
        )
    stale = [f"{s.dataset}.{s.table}" for s in found.sources if s.stale]
    stale += [m.relation for m in found.marts if m.stale]
    if stale:
        typer.echo(f"{len(stale)} stale: {', '.join(stale)}")


# ── tributary query ───────────────────────────────────────────────────────────────────────────


def _cell(value: Any) -> Text:
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, datetime | date | time):
        return Text(value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat())
    return Text(str(value))


def _numeric(rows: list[tuple[Any, ...]], column: int) -> bool:
    values = [row[column] for row in rows if row[column] is not None]
    return bool(values) and all(
        isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values
    )


def _rows_table(columns: list[str], rows: list[tuple[Any, ...]], total: str) -> Table:
    """The rows as a table; one block per row (column, value) when that table would not fit
    the terminal, as `psql` does with `\\x`, rather than squeeze every value to a few letters."""
    table = Table(caption=total)
    for index, name in enumerate(columns):
        table.add_column(Text(name), justify="right" if _numeric(rows, index) else "left")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    unbounded = console.options.update_width(sys.maxsize)
    if console.measure(table, options=unbounded).maximum <= console.width:
        return table
    blocks = Table("column", "value", caption=f"{total}, a block per row")
    for number, row in enumerate(rows, 1):
        if number > 1:
            blocks.add_section()
        for name, value in zip(columns, row, strict=True):
            blocks.add_row(Text(name), _cell(value))
    return blocks


def query(
    sql: str = typer.Argument(..., help='SQL, e.g. "from marts.fct_orders limit 5".'),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (a header, then the rows)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of objects."),
    max_rows: int = typer.Option(
        50, min=0, help="Print at most this many rows and say how many were left out; 0: all."
    ),
    dev: bool = typer.Option(
        False, "--dev", help="Your dev warehouse (tributary dev), with production as prod."
    ),
) -> None:
    """Run SQL on the published file, read-only; safe while a run loads and builds.

    The published file holds the schemas marts, ops, quarantine, tributary and the raw
    tables; the query reaches no other file (no ATTACH, COPY or file reads) and never the
    working warehouse. With --dev: your dev warehouse, production's published file as the
    catalog prod. Times are shown in UTC."""
    if as_csv and as_json:
        raise _fail("tributary query: choose one of --csv and --json", 2)
    settings = _settings()
    with _dev(settings) if dev else _published(settings) as connection:
        try:
            result = connection.execute(sql)
            if result.description is None:
                typer.echo("OK (the statement returned no rows)")
                return
            columns = [column[0] for column in result.description]
            rows = result.fetchmany(max_rows) if max_rows else result.fetchall()
            left_out = 0
            while max_rows and (more := result.fetchmany(10_000)):
                left_out += len(more)
        except duckdb.Error as exc:
            message = _one_line(exc)
            if "read-only mode" in message:
                message = f"the published file is read-only ({message})"
            elif "disabled by configuration" in message:
                message = f"it reads the published file and nothing else ({message})"
            raise _fail(f"tributary query: {message}") from None
    note = f"… {left_out:,} more row(s) not shown (--max-rows {max_rows})" if left_out else None
    if as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        typer.echo(buffer.getvalue(), nl=False)
    elif as_json:
        typer.echo(_dumps([dict(zip(columns, row, strict=True)) for row in rows]))
    else:
        console.print(_rows_table(columns, rows, f"{len(rows) + left_out:,} row(s)"))
    if note:
        # Beside the rows on a terminal; out of the CSV or JSON a program reads.
        typer.echo(note, err=as_csv or as_json)


# ── the end of `tributary demo` ───────────────────────────────────────────────────────────────


def next_steps(kept_server: str | None = None) -> list[str]:
    """What to do after `tributary demo`: query, runs, status, the run report, the Prefect UI,
    dbt docs. ``kept_server``: the UI of the server the demo keeps running; else Prefect's own
    settings say where its UI and its database are."""
    from prefect.settings import PREFECT_UI_URL, get_current_settings

    prefect = get_current_settings()
    report = "the Prefect artifact `elt-run-report`, beside every flow and task run"
    ui_url = PREFECT_UI_URL.value()
    if kept_server:
        where = [
            f"{report}: {kept_server}/artifacts/key/elt-run-report",
            f"(the demo's Prefect server keeps running: {command('tributary', 'demo', 'stop')})",
        ]
    elif ui_url:  # the run reported to a long-lived server (PREFECT_API_URL)
        where = [f"{report}: {ui_url}/artifacts/key/elt-run-report"]
    else:
        url = prefect.server.database.connection_url
        database = url.get_secret_value() if url else ""
        if database.startswith(SQLITE):
            database = database.removeprefix(SQLITE)
        else:
            database = "Prefect's database"
        base = f"http://{prefect.server.api.host}:{prefect.server.api.port}"
        where = [
            f"{report}, in {database}; the demo's temporary Prefect server stopped with it, so:",
            f"{command('prefect', 'server', 'start')}, then {base}/artifacts/key/elt-run-report",
        ]
    steps = [
        ("query the marts", f"{command('tributary', 'query', 'from marts.fct_orders limit 5')}"
         "  (also --csv, --json; read-only, a run never blocks it)"),
        ("recent runs", command("tributary", "runs")),
        ("freshness", command("tributary", "status")),
        ("the run report", where[0]),
        *(("", line) for line in where[1:]),
        ("dbt docs", "make docs  (served on loopback)"),
    ]  # fmt: skip
    return ["Next:", *(f"  {label:<18}{text}" for label, text in steps)]
