"""Runs one source into the warehouse and says what it changed there."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import dlt
import duckdb
import pyarrow.parquet as pq
from dlt.common.json import json as dlt_json
from dlt.common.pipeline import LoadInfo
from dlt.common.schema import Schema
from dlt.common.schema.utils import get_root_table
from dlt.destinations.sql_client import SqlClientBase
from dlt.extract import DltSource
from dlt.pipeline.exceptions import PipelineStepFailed
from sqlalchemy.engine import URL

from ingestion import drift, guards, registry
from ingestion.drift import SchemaChange
from ingestion.guards import Contract, DeletesStopped, GuardError
from ingestion.quarantine import Journal, QuarantineCount, Rejected
from ingestion.quarantine import flush as flush_quarantine
from ingestion.registry import Built
from ingestion.results import SourceLoad, TableLoad
from ingestion.sql_database import bulk
from ingestion.sql_database.keys import KeySnapshot, delete_missing, missing_keys
from ingestion.sql_database.keys import snapshot as key_snapshot
from tributary.commands import command
from tributary.lock import file_lock, warehouse_lock
from tributary.settings import ConfigurationError, Settings
from tributary.warehouse import sql_string, warehouse_open


def dataset_name(source: str) -> str:
    return f"raw_{source}"


def never_loaded(sources: Sequence[str], settings: Settings) -> list[str]:
    """Those of ``sources`` the working warehouse holds no completed load of: a new warehouse,
    one made again by `tributary warehouse restore`, a newly declared source."""
    if not sources or not settings.warehouse.exists():
        return list(sources)
    with (
        warehouse_lock(settings),
        warehouse_open(settings) as path,
        duckdb.connect(str(path)) as connection,
    ):
        schemas = {
            schema
            for (schema,) in connection.execute(
                "select table_schema from information_schema.tables where table_name = '_dlt_loads'"
            ).fetchall()
        }
        loaded = {
            source
            for source in sources
            if dataset_name(source) in schemas
            and connection.execute(
                f'select exists (select 1 from "{dataset_name(source)}"._dlt_loads'
                " where status = 0)"
            ).fetchone()[0]
        }
    return [source for source in sources if source not in loaded]


class _Warehouse(dlt.destinations.duckdb):  # type: ignore[misc]
    """dlt's duckdb destination, resolving its configuration once per pipeline instead of on
    every call: dlt resolves the whole configuration against every provider each time it asks
    for the capabilities (about eight times a run) and for each client it makes (some thirty:
    every step, count and state read) — about half of a no-change run. Clients for the same
    dataset and schema share the resolved configuration, and so its credentials' DuckDB
    connection pool, as dlt's own load step already shares it between its worker threads (the
    file still closes when the last borrower returns its connection). Each run makes a new
    pipeline, so a setting changed between runs is seen."""

    _partial: Any = None
    _resolved: dict[tuple[Any, ...], Any]

    @property
    def destination_type(self) -> str:  # dlt's own: its name, sections and state stay duckdb's
        return "dlt.destinations.duckdb"

    def configuration(self, initial_config: Any, accept_partial: bool = False) -> Any:
        if accept_partial:  # only `capabilities` asks for a partial one, to read it
            if self._partial is None:
                self._partial = super().configuration(initial_config, accept_partial=True)
            return self._partial
        # A client's own: what its caller bound (dataset, default schema) tells them apart.
        key = (
            type(initial_config).__name__,
            *(
                (name, repr(value))
                for name, value in sorted(dict(initial_config or {}).items())
                if value is not None
            ),
        )
        if not hasattr(self, "_resolved"):
            self._resolved = {}
        if key not in self._resolved:
            self._resolved[key] = super().configuration(initial_config)
        return self._resolved[key]


def make_pipeline(source: str, settings: Settings) -> dlt.Pipeline:
    """One pipeline per source; its local state lives under the settings' data directory so
    separate warehouses (tests, environments) never share incremental state."""
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    return dlt.pipeline(
        pipeline_name=f"tributary_{source}",
        pipelines_dir=str(settings.pipelines_dir),
        destination=_Warehouse(str(settings.warehouse)),
        dataset_name=dataset_name(source),
    )


# A table of the client's dataset in the warehouse: DuckDB's own catalog functions, a few
# times faster than information_schema (which also spans every attached database).
_IN_DATASET = "database_name = current_database() and schema_name = %s"


@contextmanager
def _sql_client(pipeline: dlt.Pipeline, client: SqlClientBase[Any] | None) -> Iterator[Any]:
    """``client`` if given, else a new one of the pipeline's: each new one resolves dlt's
    destination configuration and opens a DuckDB connection, so a step reuses its own."""
    if client is not None:
        yield client
    else:
        with pipeline.sql_client() as opened:
            yield opened


def _count_rows(
    pipeline: dlt.Pipeline,
    tables: list[str],
    load_ids: Sequence[str] | None = None,
    client: SqlClientBase[Any] | None = None,
) -> dict[str, int]:
    """Rows per table now in the warehouse, or only those these loads inserted or replaced
    (counted in the warehouse, so right for a resumed load too). A nested table (an API's
    list field, ``deals__tags``) has no load id of its own: its rows count with their root
    row's. A table that does not exist yet counts 0."""
    if not tables or load_ids == []:
        return dict.fromkeys(tables, 0)
    with _sql_client(pipeline, client) as client:
        columns: dict[str, set[str]] = {}
        for table, column in client.execute_sql(
            "select table_name, column_name from duckdb_columns() "
            f"where {_IN_DATASET} and column_name in ('_dlt_load_id', '_dlt_root_id')",
            client.dataset_name,
        ):
            columns.setdefault(table, set()).add(column)
        marks = ", ".join(["%s"] * len(load_ids or ()))
        counts = {}
        for table in tables:
            name = client.make_qualified_table_name(table)
            has = columns.get(table, set())
            if not has:
                counts[table] = 0
                continue
            if not load_ids:
                query = f"select count(*) from {name}"
            elif "_dlt_load_id" in has:
                query = f"select count(*) from {name} where _dlt_load_id in ({marks})"
            else:
                root = get_root_table(pipeline.default_schema.tables, table)["name"]
                query = (
                    f"select count(*) from {name} where _dlt_root_id in (select _dlt_id from "
                    f"{client.make_qualified_table_name(root)} where _dlt_load_id in ({marks}))"
                )
            parameters = list(load_ids) if load_ids else []
            counts[table] = client.execute_sql(query, *parameters)[0][0]
        return counts


def _key_columns(schema: Schema, table: str) -> list[str]:
    """The table's key as the pipeline's schema holds it (none for a table never loaded: an
    empty source table has no schema yet). Take ``pipeline.default_schema`` once per step and
    pass it: dlt reads and parses the schema file again on each access of that property."""
    if table not in schema.tables:
        return []
    columns = schema.get_table_columns(table)
    return [name for name, column in columns.items() if column.get("primary_key")]


def _integer_key(schema: Schema, table: str) -> bool:
    columns = schema.get_table_columns(table)
    keys = _key_columns(schema, table)
    return len(keys) == 1 and columns[keys[0]].get("data_type") == "bigint"


def _pending_parquet(pipeline: dlt.Pipeline) -> dict[str, list[str]]:
    """The parquet files per table that the normalised packages are about to load."""
    files: dict[str, list[str]] = {}
    for load_id in pipeline.list_normalized_load_packages():
        info = pipeline.get_load_package_info(load_id)
        for job in info.jobs.get("new_jobs", []):
            if job.job_file_info.file_format == "parquet":
                files.setdefault(job.job_file_info.table_name, []).append(job.file_path)
    return files


def _changes(
    pipeline: dlt.Pipeline,
    tables: list[str],
    *,
    refreshed: bool = False,
    whole: Collection[str] = (),
    client: SqlClientBase[Any] | None = None,
) -> dict[str, tuple[int, int, int]]:
    """(new, updated, deleted) per table, read off the pending parquet files against the
    warehouse before they load: new keys, keys whose loaded columns differ, and flagged soft
    deletes of keys the warehouse holds. Rows re-read unchanged (the lag window) count in none.
    Tables without parquet files are left out, and so are those without a primary key unless
    in ``whole``. ``refreshed``: the load drops the tables first, so every row counts as new.

    ``whole``: tables re-read whole that replace their warehouse copy (no cursor): a key the
    warehouse holds and the package does not counts as deleted; a table without a key counts
    its net change of rows (new when it grew, deleted when it shrank)."""
    files = _pending_parquet(pipeline)
    changes: dict[str, tuple[int, int, int]] = {}
    if not files.keys() & set(tables):
        return changes
    with _sql_client(pipeline, client) as client:
        existing = {
            row[0]
            for row in client.execute_sql(
                f"select table_name from duckdb_tables() where {_IN_DATASET}",
                client.dataset_name,
            )
        }
        schema = pipeline.default_schema
        for table in tables:
            keys = _key_columns(schema, table)
            if table not in files:
                continue
            if not keys:
                if table in whole and table in existing and not refreshed:
                    paths = ", ".join(sql_string(path) for path in files[table])
                    [(now,)] = client.execute_sql(
                        f"select count(*) from read_parquet([{paths}], union_by_name = true)"
                    )
                    raw = client.make_qualified_table_name(table)
                    [(held,)] = client.execute_sql(f"select count(*) from {raw}")
                    changes[table] = (max(now - held, 0), 0, max(held - now, 0))
                continue
            columns = schema.get_table_columns(table)
            flagged = [name for name, column in columns.items() if column.get("hard_delete")]
            paths = ", ".join(sql_string(path) for path in files[table])
            package = f"read_parquet([{paths}], union_by_name = true)"
            deleted_flag = " or ".join(f"p.{name} is not null" for name in flagged) or "false"
            key_list = ", ".join(keys)
            if refreshed or table not in existing:
                [(new,)] = client.execute_sql(
                    f"select count(*) from (select distinct {key_list} from {package} p "
                    f"where not ({deleted_flag}))"
                )
                changes[table] = (new, 0, 0)
                continue
            raw = client.make_qualified_table_name(table)
            in_raw = {
                row[0]
                for row in client.execute_sql(
                    f"select column_name from duckdb_columns() where {_IN_DATASET} "
                    "and table_name = %s",
                    client.dataset_name,
                    table,
                )
            }
            shared = [
                row[0]
                for row in client.execute_sql(f"describe select * from {package}")
                if row[0] in in_raw and not row[0].startswith("_dlt_")
            ]
            differs = " or ".join(f"p.{name} is distinct from r.{name}" for name in shared)
            on = " and ".join(f"p.{key} = r.{key}" for key in keys)
            [(new, updated, deleted)] = client.execute_sql(
                f"""
                select
                    count(distinct ({key_list})) filter (where r_key is null and not gone),
                    count(distinct ({key_list})) filter (where r_key is not null and not gone
                        and changed),
                    count(distinct ({key_list})) filter (where r_key is not null and gone)
                from (
                    select {", ".join(f"p.{key}" for key in keys)},
                        r.{keys[0]} as r_key,
                        ({deleted_flag}) as gone,
                        ({differs or "false"}) as changed
                    from {package} p left join {raw} r on {on}
                )
                """
            )
            if table in whole:
                [(deleted,)] = client.execute_sql(
                    f"select count(*) from {raw} r where not exists "
                    f"(select 1 from {package} p where {on})"
                )
            changes[table] = (new, updated, deleted)
    return changes


def _loaded_rows(pipeline: dlt.Pipeline) -> dict[str, int]:
    """Rows normalised per data table in this run (dlt's own tables left out)."""
    trace = pipeline.last_trace
    info = trace.last_normalize_info if trace else None
    counts = info.row_counts if info else {}
    return {table: rows for table, rows in counts.items() if not table.startswith("_dlt")}


def _full_reads(pipeline: dlt.Pipeline, dlt_source: DltSource, refresh: str | None) -> set[str]:
    """The tables this run reads whole: refreshed, or with no incremental state yet."""
    selected = set(dlt_source.resources.selected)
    if refresh:
        return selected
    state = pipeline.state.get("sources", {}).get(dlt_source.name, {}).get("resources", {})
    return {table for table in selected if not state.get(table, {}).get("incremental")}


def _bulk_eligible(built: Built, full_reads: set[str]) -> set[str]:
    """Whole-table reads that can stream: merged on a key, incremental on a cursor."""
    return {
        table
        for table in full_reads
        if (plan := built.plans[table]).mode == "merge" and plan.keys and plan.cursor
    }


def _bulk_reads(pipeline: dlt.Pipeline, built: Built, tables: set[str]) -> list[bulk.BulkRead]:
    """What to stream after the load: per table, the rows below the cursor dlt just set."""
    [load_id] = pipeline.list_normalized_load_packages()[-1:]
    resources = pipeline.state.get("sources", {}).get(built.name, {}).get("resources", {})
    reads = []
    for table in sorted(tables):
        plan = built.plans[table]
        assert plan.cursor is not None
        cursor = resources.get(table, {}).get("incremental", {}).get(plan.cursor, {})
        if cursor.get("last_value") is None:  # an empty table: nothing below
            continue
        reads.append(
            bulk.BulkRead(
                table=table,
                load_id=load_id,
                below=bulk.cursor_value(cursor["last_value"]),
                keys=[plan.raw(key) for key in plan.keys],
                cursor=plan.cursor,
                soft_delete=plan.soft_delete if plan.delete_flagged else None,
                schema=built.db_schema,
                raw_table=plan.raw_table,
                labels=dict(plan.raw_columns),
                mask=[plan.raw(column) for column in plan.mask],
            )
        )
    return reads


def _completed_loads(pipeline: dlt.Pipeline, load_ids: Collection[str]) -> set[str]:
    """Which of ``load_ids`` the warehouse holds as completed loads of this pipeline."""
    if not load_ids:
        return set()
    with pipeline.sql_client() as client:
        loads = client.make_qualified_table_name("_dlt_loads")
        if not client.execute_sql(
            f"select 1 from duckdb_tables() where {_IN_DATASET} and table_name = '_dlt_loads'",
            client.dataset_name,
        ):
            return set()
        rows = client.execute_sql(
            f"select load_id from {loads} where status = 0 and load_id in "
            f"({', '.join(['%s'] * len(load_ids))})",
            *load_ids,
        )
    return {row[0] for row in rows}


def _finish_bulk_plan(
    pipeline: dlt.Pipeline, url: URL, plan: Path, mask_salt: str | None = None
) -> None:
    """Streams the planned rest of each table read whole whose load has completed, keeps the
    reads whose load is still pending, and forgets those whose load will never complete (its
    package was aborted or discarded: the table is read whole again). Call it holding the
    warehouse lock."""
    reads = bulk.read_plan(plan)
    if not reads:
        plan.unlink(missing_ok=True)
        return
    completed = _completed_loads(pipeline, {read.load_id for read in reads})
    pending = set(pipeline.list_normalized_load_packages())
    streams = [read for read in reads if read.load_id in completed]
    if streams:
        with pipeline.sql_client() as client:
            for read in streams:
                raw = client.make_qualified_table_name(read.raw_table or read.table)
                bulk.stream_rest(client.native_connection, raw, url, read, mask_salt)
    waiting = [read for read in reads if read.load_id in pending and read.load_id not in completed]
    if waiting:
        bulk.write_plan(plan, waiting)
    else:
        plan.unlink(missing_ok=True)


def _contracts(built: Built, dlt_source: DltSource, cursor_limit: datetime) -> list[Contract]:
    """What each selected table's rows must satisfy: a key, a cursor not beyond
    ``cursor_limit``, the declared column types, the accepted values."""
    accepted = built.accepted_values
    contracts = []
    for name in dlt_source.resources.selected:
        resource = dlt_source.resources[name]
        columns = resource.compute_table_schema()["columns"]
        contracts.append(
            Contract(
                table=built.raw_name(name),
                keys=[column for column, hints in columns.items() if hints.get("primary_key")],
                cursor=guards.cursor_column(resource),
                cursor_limit=cursor_limit,
                columns=columns,
                accepted_values=accepted.get(name, {}),
            )
        )
    return contracts


def _journal(settings: Settings, pipeline_name: str) -> Journal:
    return Journal(settings.pipelines_dir / f"{pipeline_name}.quarantine")


def _package_rows(package: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, row) for every data row an extracted package holds (dlt's own tables left out)."""
    for path in sorted((package / "new_jobs").iterdir()):
        table = path.name.split(".", 1)[0]
        if table.startswith("_dlt"):
            continue
        if ".parquet" in path.name:
            for row in pq.read_table(path).to_pylist():
                yield table, row
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:
            for line in handle:
                if line.strip():
                    items = dlt_json.typed_loads(line)
                    for item in items if isinstance(items, list) else [items]:
                        yield table, item


def _set_aside(
    pipeline: dlt.Pipeline, journal: Journal, settings: Settings, error: BaseException
) -> list[str]:
    """Moves every extracted package out of the pipeline (into ``<pipeline>.set-aside/``) and
    quarantines its rows with the error: a package that cannot be normalised would otherwise
    be normalised again, and fail again, on every run. Returns the load ids set aside."""
    extracted = Path(pipeline.working_dir) / "normalize" / "extracted"
    aside = settings.pipelines_dir / f"{pipeline.pipeline_name}.set-aside"
    moved = []
    for load_id in pipeline.list_extracted_load_packages():
        package = extracted / load_id
        reason = f"load package {load_id} could not be normalised: {type(error).__name__}: {error}"
        schema = pipeline.default_schema
        keys = {table: _key_columns(schema, table) for table in schema.tables}
        journal.append(
            [
                Rejected(
                    table,
                    reason[:2000],
                    row,
                    {key: row.get(key) for key in keys.get(table, [])} or None,
                )
                for table, row in _package_rows(package)
            ]
        )
        journal.seal(load_id)
        aside.mkdir(parents=True, exist_ok=True)
        shutil.move(package, aside / load_id)
        moved.append(load_id)
    return moved


def _flush_journal(pipeline: dlt.Pipeline, source: str, journal: Journal) -> list[QuarantineCount]:
    """Moves the journaled rows into ``quarantine.rows``; call it holding the warehouse lock."""
    with pipeline.sql_client() as client:
        return flush_quarantine(client.native_connection, source, journal)


def _normalize(pipeline: dlt.Pipeline, source: str, journal: Journal, settings: Settings) -> None:
    """``pipeline.normalize()``; a package it cannot normalise is set aside, its rows
    quarantined, and the run fails saying so — the next run starts clean."""
    try:
        pipeline.normalize()
    except PipelineStepFailed as exc:
        cause = exc.exception
        if isinstance(cause, OSError | MemoryError):
            raise
        moved = _set_aside(pipeline, journal, settings, cause)
        with warehouse_lock(settings):
            _flush_journal(pipeline, source, journal)
        raise GuardError(
            f"{pipeline.pipeline_name}: load package {', '.join(moved)} could not be "
            f"normalised ({type(cause).__name__}: {cause}); it was set aside in "
            f"{settings.pipelines_dir / (pipeline.pipeline_name + '.set-aside')} and its rows "
            "quarantined (quarantine.rows). Fix the source or the contract, then replay them."
        ) from exc


def _quarantine_duplicates(
    pipeline: dlt.Pipeline, journal: Journal, *, collapse_identical: bool
) -> None:
    """Quarantines every row of a key that occurs more than once in the pending packages, and
    takes them out of the packages' files. ``collapse_identical``: copies that agree in every
    column are one row sent twice (a repeated API page): dlt's merge keeps one, nothing is
    quarantined."""
    pending = pipeline.list_normalized_load_packages()
    schema = pipeline.default_schema
    for table, paths in _pending_parquet(pipeline).items():
        keys = _key_columns(schema, table)
        if not keys:
            continue
        duplicated = guards.duplicate_keys(paths, keys, collapse_identical=collapse_identical)
        if duplicated.num_rows == 0:
            continue
        removed = guards.remove_keys(paths, duplicated.select(keys))
        counts = {tuple(row[key] for key in keys): row["copies"] for row in duplicated.to_pylist()}
        journal.append(
            [
                Rejected(
                    table,
                    f"duplicate key: {counts[tuple(row[key] for key in keys)]} rows in one read "
                    f"share this {', '.join(keys)}",
                    {name: value for name, value in row.items() if not name.startswith("_dlt")},
                    {key: row[key] for key in keys},
                )
                for row in removed
            ]
        )
    journal.seal(pending[-1] if pending else None)


def _counts_path(settings: Settings, pipeline: dlt.Pipeline) -> Path:
    return settings.pipelines_dir / f"{pipeline.pipeline_name}.counts.json"


def _ledger_path(settings: Settings, pipeline: dlt.Pipeline) -> Path:
    return settings.pipelines_dir / f"{pipeline.pipeline_name}.unreported.json"


def _write_json(path: Path, value: Any) -> None:
    """Replace ``path`` whole: a kill leaves the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value))
    partial.replace(path)


def _load_counts(
    settings: Settings,
    pipeline: dlt.Pipeline,
    tables: list[str],
    full_reads: set[str],
    fresh: bool,
    streamed: Collection[str] = (),
) -> tuple[dict[str, int], dict[str, tuple[int, int, int]]]:
    """(rows per table before, (new, updated, deleted) per table) for the pending packages,
    read off them against the warehouse before anything of them loads, and kept in a file
    until a later run has settled them (``_settle_counts``): a run that finishes a load an
    earlier one started reports what that load changed, not what is left of it, and a run
    killed after its load but before it reported is counted by the next one."""
    path = _counts_path(settings, pipeline)
    pending = list(pipeline.list_normalized_load_packages())
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["load_ids"] == pending:
            changes = {table: tuple(value) for table, value in saved["changes"].items()}
            return saved["before"], changes  # type: ignore[return-value]
    # A table read whole is compared with its warehouse copy, unless most of it streams in
    # after the load (``streamed``): then the package holds only its newest rows.
    whole = full_reads - set(streamed)
    with pipeline.sql_client() as client:
        before = _count_rows(pipeline, tables, client=client)
        changes = _changes(
            pipeline,
            [t for t in tables if t not in streamed],
            refreshed=fresh,
            whole=whole,
            client=client,
        )
    _write_json(
        path,
        {
            "load_ids": pending,
            "tables": tables,
            "whole": sorted(whole),
            "fresh": fresh,
            "before": before,
            "changes": changes,
        },
    )
    return before, changes


def _table_loads(
    tables: Sequence[str],
    before: dict[str, int],
    after: dict[str, int],
    loaded: dict[str, int],
    changes: dict[str, tuple[int, int, int]],
    *,
    fresh: bool,
    whole: Collection[str],
    removed: dict[str, int],
    rejected: dict[str, int],
) -> list[TableLoad]:
    """What a load did per table: its counted changes, or for a table they leave out (read
    whole without a key, streamed, not arrow) its change of row totals."""
    table_loads = []
    for table in tables:
        if table in changes:
            new, updated, deleted = changes[table]
        else:
            new = after[table] - (0 if fresh or table in whole else before[table])
            updated, deleted = loaded.get(table, 0) - new, 0
        table_loads.append(
            TableLoad(
                table=table,
                loaded=loaded.get(table, 0),
                new=new,
                updated=updated,
                deleted=deleted + removed.get(table, 0),
                quarantined=rejected.get(table, 0),
            )
        )
    return table_loads


def _settle_counts(settings: Settings, pipeline: dlt.Pipeline, keep: bool) -> None:
    """Move the last load's counts into the ledger of loads not yet reported (``keep``), or
    forget them. Call it holding the warehouse lock, before anything new loads: a run killed
    between its load and its report left only the counts read before the load, and what its
    deletes after the load did is read off the table as the kill left it (raw tables change
    only under this pipeline's lock). Counts of a load still pending stay for its resume;
    those of a load that will never complete (its package aborted) go."""
    path = _counts_path(settings, pipeline)
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if set(saved["load_ids"]) & set(pipeline.list_normalized_load_packages()):
        return
    completed = _completed_loads(pipeline, saved["load_ids"])
    if keep and completed:
        load_ids = sorted(completed)
        if "result" in saved:
            tables = saved["result"]
        else:
            before, changes = saved["before"], saved["changes"]
            names = saved.get("tables", list(before))  # files older runs wrote lack these
            after = _count_rows(pipeline, names)
            # What the deletes after the load removed: what the load should have left, less
            # what the table holds.
            removed = {
                table: max(
                    (0 if saved.get("fresh") else before[table]) + new - deleted - after[table], 0
                )
                for table, (new, _, deleted) in changes.items()
                if table in before and table in after
            }
            tables = [
                asdict(load)
                for load in _table_loads(
                    names,
                    before,
                    after,
                    _count_rows(pipeline, names, load_ids),
                    {table: tuple(value) for table, value in changes.items()},
                    fresh=saved.get("fresh", False),
                    whole=saved.get("whole", ()),
                    removed=removed,
                    rejected={},
                )
            ]
        ledger = _ledger_path(settings, pipeline)
        entries = json.loads(ledger.read_text()) if ledger.is_file() else []
        if not any(entry["load_ids"] == load_ids for entry in entries):
            entries.append({"load_ids": load_ids, "tables": tables})
            _write_json(ledger, entries)
    path.unlink()


def _unreported(
    settings: Settings, pipeline: dlt.Pipeline, history: Callable[[], Collection[str]]
) -> list[dict[str, Any]]:
    """The ledger's loads that no run has reported: in neither ``ops.table_loads`` nor
    ``history()`` (the load ids of run journals not yet written there). Reported ones leave
    the ledger."""
    ledger = _ledger_path(settings, pipeline)
    if not ledger.is_file():
        return []
    entries = json.loads(ledger.read_text())
    wanted = sorted({load_id for entry in entries for load_id in entry["load_ids"]})
    with pipeline.sql_client() as client:
        has_ops = client.execute_sql(
            f"select 1 from duckdb_tables() where {_IN_DATASET} and table_name = 'table_loads'",
            "ops",
        )
        rows = (
            client.execute_sql(
                "select distinct unnest(load_ids) from ops.table_loads where dataset = %s "
                "and list_has_any(load_ids, %s)",
                pipeline.dataset_name,
                wanted,
            )
            if has_ops and wanted
            else []
        )
    reported = {row[0] for row in rows} | set(history())
    left = [entry for entry in entries if not reported & set(entry["load_ids"])]
    if left != entries:
        if left:
            _write_json(ledger, left)
        else:
            ledger.unlink()
    return left


def _carry(own: list[TableLoad], entries: Sequence[dict[str, Any]]) -> list[TableLoad]:
    """This load's tables with the unreported loads' counts added."""
    totals = {load.table: load for load in own}
    for entry in entries:
        for values in entry["tables"]:
            earlier = TableLoad(**values)
            mine = totals.get(earlier.table)
            totals[earlier.table] = (
                earlier
                if mine is None
                else TableLoad(
                    table=mine.table,
                    loaded=mine.loaded + earlier.loaded,
                    new=mine.new + earlier.new,
                    updated=mine.updated + earlier.updated,
                    deleted=mine.deleted + earlier.deleted,
                    quarantined=mine.quarantined + earlier.quarantined,
                )
            )
    return list(totals.values())


def _guard_soft_deletes(
    settings: Settings,
    dataset: str,
    before: dict[str, int],
    changes: dict[str, tuple[int, int, int]],
) -> list[str]:
    """Messages for the tables whose deletes found before the load (flagged soft deletes,
    rows gone from a table read whole) are beyond the delete guard."""
    return [
        message
        for table, (_, _, deleted) in changes.items()
        if (message := guards.check_deletes(f"{dataset}.{table}", deleted, before[table], settings))
    ]


def _reconcile(
    pipeline: dlt.Pipeline,
    snapshots: Sequence[KeySnapshot],
    settings: Settings,
    confirmed: bool,
) -> tuple[dict[str, int], list[str]]:
    """Deletes the warehouse rows whose key the source no longer holds (hard deletes), unless
    that is beyond the delete guard for any table: then nothing is deleted and the messages
    say why. The snapshots were read after extraction, so every key loaded now was in them
    unless it has since been deleted. Returns rows deleted per table, and the messages."""
    if not snapshots:
        return {}, []
    with pipeline.sql_client() as client:
        connection = client.native_connection
        missing = {
            snap.raw_table: missing_keys(
                connection, client.make_qualified_table_name(snap.raw_table), snap
            )
            for snap in snapshots
        }
        totals = _count_rows(pipeline, list(missing), client=client)
        stops = (
            []
            if confirmed
            else [
                message
                for table, gone in missing.items()
                if (
                    message := guards.check_deletes(
                        f"{pipeline.dataset_name}.{table}", gone.num_rows, totals[table], settings
                    )
                )
            ]
        )
        if stops:
            return {}, stops
        return {
            table: delete_missing(connection, client.make_qualified_table_name(table), gone)
            for table, gone in missing.items()
        }, []


def _quarantine_problems(
    dataset: str, counts: list[QuarantineCount], loaded: dict[str, int], settings: Settings
) -> list[str]:
    """Messages for the tables whose newly quarantined rows are beyond the quarantine guard."""
    new: dict[str, int] = {}
    for count in counts:
        new[count.table] = new.get(count.table, 0) + count.new_rows
    problems = []
    for table, rows in sorted(new.items()):
        read = loaded.get(table, 0) + rows
        if rows > settings.quarantine_max_rows and rows > settings.quarantine_max_share * read:
            problems.append(
                f"{dataset}.{table}: {rows:,} of the {read:,} rows read were quarantined "
                f"({rows / read:.0%}), more than TRIBUTARY_QUARANTINE_MAX_SHARE "
                f"({settings.quarantine_max_share:.0%}) and TRIBUTARY_QUARANTINE_MAX_ROWS "
                f"({settings.quarantine_max_rows}); the rest loaded. See why with: select "
                f"reason, count(*) from quarantine.rows where table_name = '{table}' group by 1"
            )
    return problems


def _stored_columns(pipeline: dlt.Pipeline) -> dict[str, dict[str, Any]]:
    """The columns per table the pipeline's schema holds from earlier loads (none yet: {})."""
    if not pipeline.default_schema_name:
        return {}
    return drift.stored_columns(pipeline.default_schema.tables)


def _refuse_money_in_cents(
    source: str, built: Built, selected: Collection[str], stored: dict[str, dict[str, Any]]
) -> None:
    """Stops before reading when a PostgreSQL ``money`` column is stored as an integer: an
    earlier release loaded money as its count of cents, and a row loaded now as an amount into
    that column would be rounded to a whole unit beside rows in cents."""
    found = [
        (plan.raw_table, plan.raw(column))
        for resource in selected
        if (plan := built.plans.get(resource)) is not None
        for column in plan.money
        if stored.get(plan.raw_table, {}).get(plan.raw(column), {}).get("data_type") == "bigint"
    ]
    if found:
        columns = ", ".join(f"{dataset_name(source)}.{table}.{column}" for table, column in found)
        reload = drift.reload_instruction(source, (table for table, _ in found))
        raise ConfigurationError(
            f"{columns}: PostgreSQL money, held as a count of cents by an earlier "
            "load; it now loads as its amount, and a new row would be rounded into that "
            f"column. Reload the table: {reload}. Nothing was read."
        )


def _evolve(
    pipeline: dlt.Pipeline,
    dlt_source: DltSource,
    settings: Settings,
    changes: list[SchemaChange],
    stored: dict[str, dict[str, Any]],
) -> None:
    """Lets a database table's changed columns load: a column the source no longer has
    becomes nullable (its new rows hold NULL there; a NOT NULL column would fail every load),
    in the pipeline's schema and the warehouse, and is marked gone there (reported once); a
    new column is added nullable (the warehouse cannot add a NOT NULL column to a table that
    holds rows), and a column that comes back is no longer marked gone."""
    if not changes:
        return
    gone = [
        (change.table, change.previous or change.column)
        for change in changes
        if change.change in ("removed", "renamed")
    ]
    back = [(change.table, change.column) for change in changes if change.change != "removed"]
    relax = [(t, c) for t, c in gone if not stored[t][c].get("nullable", True)]
    tables = pipeline.default_schema.tables
    for table, column in gone:
        tables[table]["columns"][column][drift.GONE] = True  # type: ignore[literal-required]
        tables[table]["columns"][column]["nullable"] = True
    for table, column in back:
        tables[table]["columns"].get(column, {}).pop(drift.GONE, None)  # type: ignore[misc]
    pipeline.schemas.save_schema(pipeline.default_schema)
    if relax:
        with warehouse_lock(settings), pipeline.sql_client() as client:
            for table, column in relax:
                client.execute_sql(
                    f"alter table {client.make_qualified_table_name(table)} alter column "
                    f"{client.escape_column_name(column)} drop not null"
                )
    for table, column in back:
        dlt_source.resources[table].apply_hints(
            columns={column: {"name": column, "nullable": True}}
        )


def run_source(
    source: str,
    settings: Settings,
    **options: Any,
) -> SourceLoad:
    """``load_source`` with dlt's failures explained: the step, the error's last line (not a
    traceback), and — when a package stays pending — dlt commands that work as printed (dlt's
    own need ``--pipelines-dir`` for tributary's pipelines)."""
    try:
        return load_source(source, settings, **options)
    except PipelineStepFailed as exc:
        raise PipelineFailed(_explain(exc, source, settings)) from exc


class PipelineFailed(RuntimeError):
    """A dlt step failed; the message says which, why, and what to run about it."""


def _last_error(text: str) -> str:
    """The error a message ends on: the last ``SomeError: …`` line of a traceback in it, or
    its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*: ", line)]
    return errors[-1] if errors else (lines[0] if lines else text)


def _explain(exc: PipelineStepFailed, source: str, settings: Settings) -> str:
    cause = exc.exception
    name = f"tributary_{source}"
    message = (
        f"{name}: dlt's {exc.step} step failed: {type(cause).__name__}: {_last_error(str(cause))}"
    )
    try:
        pending = make_pipeline(source, settings).has_pending_data
    except Exception:  # the explanation must not hide the failure
        pending = False
    if pending:
        dlt_cli = command("dlt", "pipeline", "--pipelines-dir", settings.pipelines_dir, name)
        message += (
            ". Its load package stays pending and the next run loads it first. Inspect it: "
            f"`{dlt_cli} info`; drop it and the cursors it moved: `{dlt_cli} abort-packages`"
        )
    return message


def load_source(
    source: str,
    settings: Settings,
    *,
    full_refresh: bool = False,
    refresh_tables: Sequence[str] = (),
    window: tuple[str, str] | None = None,
    reconcile_deletes: bool | None = None,
    confirm_deletes: bool = False,
    history: Callable[[], Collection[str]] | None = None,
) -> SourceLoad:
    """Extract, normalise and load one source.

    ``full_refresh`` drops all the source's tables and incremental state first and reloads them;
    ``refresh_tables`` does that for the named tables only (and loads only them); ``window``
    (ISO dates) reloads an API source's [start, end) range without touching its incremental
    state. ``reconcile_deletes`` overrides the tables' declared ``reconcile_deletes`` (deleting
    a database's hard-deleted rows after the load, at the cost of one key scan per table).

    Nothing is trusted blindly: rows that break the source's contract (no key, a cursor in the
    future, a wrong type, a value outside its set, a key sent twice) are quarantined instead of
    loaded; a load that would delete more of a table than ``TRIBUTARY_DELETE_MAX_SHARE`` stops
    before deleting unless ``confirm_deletes``; too many quarantined rows fail the source
    after the rest has loaded. Each raises ``GuardError`` naming the table.

    Extraction runs outside the warehouse lock, so sources extract while another writes; the
    load holds it. Packages an interrupted earlier attempt left pending are loaded first (a
    retry finishes that work instead of repeating it), then the source is read again for what
    changed since — unlike ``dlt.Pipeline.run``, which stops after the pending packages: a run
    that says it completed holds the source as it was when the run began. The result counts
    both loads, each once.

    ``history`` is for a caller that writes each result to ``ops.table_loads``: it returns
    the load ids of results reported but not yet written there. Given it, the loads an earlier
    run made and never reported (killed between its load and its report) are counted in this
    result (``SourceLoad.carried``), once.
    """
    options: dict[str, Any] = {
        "full_refresh": full_refresh,
        "refresh_tables": refresh_tables,
        "window": window,
        "reconcile_deletes": reconcile_deletes,
        "confirm_deletes": confirm_deletes,
        "history": history,
    }
    first = _load_pass(source, settings, **options)
    if not first.resumed:
        return first
    # The pending packages are loaded; now what the source did since the run that left them.
    return _after_resume(first, _load_pass(source, settings, **options), history is not None)


def _after_resume(first: SourceLoad, second: SourceLoad, ledgered: bool) -> SourceLoad:
    """One result for a run that loaded an earlier run's pending packages (``first``) and then
    what changed since (``second``). With a ledger (``history``), ``second`` already counts
    ``first`` — its counts went through the ledger of loads not yet reported, so a kill
    between the two passes loses none of them — and only its carried loads change: the first
    pass's own loads are this run's, not an earlier one's. Without one, the two add up."""
    own_first = [load_id for load_id in first.load_ids if load_id not in first.carried]
    if ledgered:
        tables, load_ids = second.tables, second.load_ids
        carried = [load_id for load_id in second.carried if load_id not in own_first]
    else:
        tables = _carry(second.tables, [{"tables": [asdict(t) for t in first.tables]}])
        load_ids, carried = first.load_ids + second.load_ids, []
    return replace(
        second,
        load_ids=load_ids,
        tables=tables,
        resumed=True,
        quarantined=first.quarantined + second.quarantined,
        carried=carried,
    )


def _load_pass(
    source: str,
    settings: Settings,
    *,
    full_refresh: bool,
    refresh_tables: Sequence[str],
    window: tuple[str, str] | None,
    reconcile_deletes: bool | None,
    confirm_deletes: bool,
    history: Callable[[], Collection[str]] | None,
) -> SourceLoad:
    """``load_source``'s one pass: the pending packages if any (``SourceLoad.resumed``), else
    a new extract, normalise and load."""
    registry.check_names(settings.schema_contract, settings, "TRIBUTARY_SCHEMA_CONTRACT")
    # Tables read whole from PostgreSQL: dlt reads their newest rows, the rest streams in after.
    bulk_tables: set[str] = set()
    cursor_limit = datetime.now(UTC) + timedelta(seconds=settings.cursor_future_tolerance_seconds)
    built = registry.build(
        source, settings, window=window, bulk_tables=bulk_tables, cursor_limit=cursor_limit
    )
    dlt_source = built.source
    db_url = built.url
    refresh: Literal["drop_sources", "drop_resources"] | None = None
    if full_refresh:
        refresh = "drop_sources"
    elif refresh_tables:
        # A table by the source's name or the warehouse's
        by_name = {built.raw_name(r): r for r in dlt_source.resources} | {
            r: r for r in dlt_source.resources
        }
        unknown = sorted(set(refresh_tables) - set(by_name))
        if unknown:
            raise ConfigurationError(
                f"{source}: no table {', '.join(unknown)} to refresh; its tables are "
                f"{', '.join(sorted(dlt_source.resources))}"
            )
        refresh_tables = [by_name[table] for table in refresh_tables]
        dlt_source = dlt_source.with_resources(*refresh_tables)
        refresh = "drop_resources"
    mirrored = built.mirrored
    contract_mode = settings.schema_contract.get(source, built.schema_contract)
    schema_changes: list[SchemaChange] = []
    # One run of a pipeline at a time: its working folder is not shared between processes.
    pipeline_lock = settings.pipelines_dir / f"tributary_{source}.lock"
    with file_lock(pipeline_lock, f"{source} pipeline", settings.lock_timeout_seconds):
        pipeline = make_pipeline(source, settings)
        journal = _journal(settings, pipeline.pipeline_name)
        plan = bulk.plan_path(settings.pipelines_dir, pipeline.pipeline_name)
        with warehouse_lock(settings), warehouse_open(settings):
            pipeline.sync_destination()
            resumed = pipeline.has_pending_data
            if db_url:  # an earlier run died between its load and its stream
                _finish_bulk_plan(pipeline, db_url, plan, built.mask_salt)
            _settle_counts(settings, pipeline, keep=history is not None)
            carried = _unreported(settings, pipeline, history) if history else []
        full_reads: set[str] = set()
        if resumed:
            if pipeline.list_extracted_load_packages():
                _normalize(pipeline, source, journal, settings)
        else:
            if mirrored:
                full_reads = _full_reads(pipeline, dlt_source, refresh)
                for table in full_reads:
                    # A whole table replaces the warehouse's copy: no merge staging to pay for.
                    # It holds no rows flagged deleted, so there is nothing to delete either.
                    how = built.plans[table]
                    if how.mode == "append":
                        continue
                    dlt_source.resources[table].apply_hints(
                        write_disposition="replace",
                        columns={how.soft_delete: {"hard_delete": False}}
                        if how.delete_flagged and how.soft_delete
                        else None,
                    )
            if db_url and built.bulk_reads and db_url.get_backend_name() == "postgresql":
                bulk_tables.update(_bulk_eligible(built, full_reads))
            stored = {} if refresh else _stored_columns(pipeline)
            _refuse_money_in_cents(source, built, dlt_source.resources.selected, stored)
            if mirrored:
                for resource in dlt_source.resources.selected:
                    table = built.raw_name(resource)
                    if table in stored:
                        current = {
                            built.plans[resource].raw_columns.get(column, column): hints
                            for column, hints in dlt_source.resources[resource]
                            .compute_table_schema()["columns"]
                            .items()
                        }
                        schema_changes += drift.reflected_changes(table, stored[table], current)
                if schema_changes and contract_mode == "freeze":
                    raise GuardError(
                        drift.frozen_message(source, pipeline.dataset_name, schema_changes)
                    )
                retyped = [c for c in schema_changes if c.change == "type changed"]
                if retyped:
                    raise GuardError(drift.retyped_message(source, pipeline.dataset_name, retyped))
                _evolve(pipeline, dlt_source, settings, schema_changes, stored)
            for resource, contract in zip(
                dlt_source.resources.selected,
                _contracts(built, dlt_source, cursor_limit),
                strict=True,
            ):
                guards.guard(dlt_source.resources[resource], contract, journal)
            try:
                # parquet for every table, dicts too: the guards and the counts read it
                extracted = pipeline.extract(
                    dlt_source, refresh=refresh, loader_file_format="parquet"
                )
            except BaseException:
                journal.seal(None)  # whatever was rejected before the failure stays journaled
                raise
            journal.seal(extracted.loads_ids[-1] if extracted.loads_ids else None)
            _normalize(pipeline, source, journal, settings)
            if not mirrored and stored:
                after = drift.stored_columns(pipeline.default_schema.tables, variants=True)
                for table in sorted(stored.keys() & after.keys()):
                    schema_changes += drift.normalized_changes(table, stored[table], after[table])
                if schema_changes and contract_mode == "freeze":
                    pipeline.abort_packages()  # the package and the cursor it moved
                    raise GuardError(
                        drift.frozen_message(source, pipeline.dataset_name, schema_changes)
                    )
            if bulk_tables:
                bulk.write_plan(plan, _bulk_reads(pipeline, built, bulk_tables))
        _quarantine_duplicates(pipeline, journal, collapse_identical=not mirrored)
        selected = list(dlt_source.resources.selected)
        tables = sorted({built.raw_name(r) for r in selected} | set(_loaded_rows(pipeline)))
        whole = {built.raw_name(resource) for resource in full_reads}
        streamed = {built.raw_name(resource) for resource in bulk_tables}
        # Keys are read after extraction: a key loaded now is in them unless deleted since.
        schema = pipeline.default_schema
        snapshots = (
            [
                key_snapshot(
                    db_url,
                    resource,
                    how.keys,
                    _integer_key(schema, how.raw_table),
                    built.db_schema,
                    raw_table=how.raw_table,
                    raw_keys=[how.raw(key) for key in how.keys],
                )
                for resource, how in built.plans.items()
                if resource in selected
                and resource not in full_reads
                and how.mode == "merge"
                and how.keys
                and (how.reconcile_deletes if reconcile_deletes is None else True)
                and _key_columns(schema, how.raw_table)
            ]
            if db_url and reconcile_deletes is not False
            else []
        )
        fresh = bool(refresh) and not resumed
        with warehouse_lock(settings), warehouse_open(settings):
            before, changes = _load_counts(
                settings, pipeline, tables, whole, fresh, streamed=streamed
            )
            stops = (
                []
                if confirm_deletes
                else _guard_soft_deletes(settings, pipeline.dataset_name, before, changes)
            )
            if stops:
                # Forget the package and the cursor it moved: the next run reads the source
                # again, and finds the rows back if their deletion was a mistake.
                pipeline.abort_packages()
                _counts_path(settings, pipeline).unlink(missing_ok=True)
                raise DeletesStopped(_stopped(stops))
            info: LoadInfo = pipeline.load()
            if db_url:
                _finish_bulk_plan(pipeline, db_url, plan, built.mask_salt)
            with pipeline.sql_client() as client:
                after = _count_rows(pipeline, tables, client=client)
                loaded = _count_rows(pipeline, tables, list(info.loads_ids), client=client)
            quarantined = _flush_journal(pipeline, source, journal)
            removed, stops = _reconcile(pipeline, snapshots, settings, confirm_deletes)
            rejected: dict[str, int] = {}
            for count in quarantined:
                rejected[count.table] = rejected.get(count.table, 0) + count.rows
            own = _table_loads(
                tables,
                before,
                after,
                loaded,
                changes,
                fresh=fresh,
                whole=whole,
                removed=removed,
                rejected=rejected,
            )
            counts = _counts_path(settings, pipeline)
            if counts.is_file():  # settled by the next run, which finds it reported or not
                saved = json.loads(counts.read_text())
                _write_json(counts, saved | {"result": [asdict(load) for load in own]})
    carried_ids = [load_id for entry in carried for load_id in entry["load_ids"]]
    result = SourceLoad(
        source=source,
        dataset=pipeline.dataset_name,
        load_ids=carried_ids + list(info.loads_ids),
        resumed=resumed,
        tables=_carry(own, carried),
        quarantined=quarantined,
        schema_changes=schema_changes,
        carried=carried_ids,
    )
    problems = stops + _quarantine_problems(pipeline.dataset_name, quarantined, loaded, settings)
    if problems:
        raise (DeletesStopped if stops else GuardError)(_stopped(problems), load=result)
    return result


def _stopped(messages: Sequence[str]) -> str:
    return "; ".join(messages)
