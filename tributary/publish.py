"""Write-audit-publish: readers open a published DuckDB file that no run ever writes in place.

dlt and dbt write the working warehouse (``TRIBUTARY_WAREHOUSE_PATH``) and nothing else does;
readers (notebooks, BI tools, the duckdb CLI) open ``TRIBUTARY_PUBLISHED_PATH``, a symbolic link
to one version in the versions folder. After a build whose every node passed, a new version is
written whole under a temporary name, checkpointed, synced and renamed, and then the link is
swapped to it with one rename. A reader's open connection keeps the version it opened (the file
stays, and its inode outlives even a deletion), a new connection sees the new one, and nobody
sees a half-written one. A symbolic link rather than a hard link: it works across file systems
and ``ls -l`` shows which version readers get.

Every function here holds the warehouse lock while it reads the working warehouse or changes
what is published, so a publication never interleaves with a load, a build or another publish.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from tributary.commands import command
from tributary.dbt import PASSED_STATUSES, DbtFailed, DbtSummary, last_invocation_id
from tributary.lock import file_lock, warehouse_lock
from tributary.settings import (
    DBT_PROJECT_DIR,
    HISTORY_SCHEMAS,
    MART_SCHEMAS,
    PUBLICATION_SCHEMA,
    RAW_SCHEMA_PREFIX,
    ConfigurationError,
    Settings,
)
from tributary.warehouse import RESTORE_COMMAND, WarehouseUnreadable, check_warehouse, sql_string

MANIFEST = DBT_PROJECT_DIR / "target" / "manifest.json"
PUBLICATION_DDL = f"""
create schema {PUBLICATION_SCHEMA};
create table {PUBLICATION_SCHEMA}.publication (
    version varchar not null,
    published_at timestamptz not null,
    flow_run_id varchar,
    dbt_invocation_id varchar,
    dbt_command varchar not null
);
create table {PUBLICATION_SCHEMA}.published_tables (
    relation varchar primary key,
    row_count bigint not null,
    origin varchar not null
);
"""
# Where a published table came from.
BUILT, HISTORY, RAW = "built by this build", "history", "raw, as loaded"


class WarehouseInUse(RuntimeError):
    """A command run by hand found a run holding the warehouse (or a pipeline's state)."""


@dataclass(frozen=True)
class PublishedTable:
    relation: str
    rows: int
    origin: str


@dataclass(frozen=True)
class Publication:
    """One published version: what readers get while the link points at it."""

    version: str
    path: Path
    """The version file."""
    link: Path
    """What readers open (TRIBUTARY_PUBLISHED_PATH)."""
    published_at: datetime
    flow_run_id: str | None
    dbt_invocation_id: str | None
    tables: list[PublishedTable] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"version {self.version}, published at {self.published_at:%Y-%m-%d %H:%M:%S} UTC "
            f"by run {self.flow_run_id or 'none (by hand)'}"
        )


@dataclass(frozen=True)
class NotPublished:
    """Why a run published nothing, and what readers keep instead."""

    reason: str
    current: Publication | None

    def __str__(self) -> str:
        if self.current is None:
            return f"not published: {self.reason}; readers have no published set yet"
        when = f"{self.current.published_at:%Y-%m-%d %H:%M:%S} UTC"
        return (
            f"not published: {self.reason}; readers keep the set published at {when} "
            f"by run {self.current.flow_run_id or 'none (by hand)'} "
            f"({self.current.version})"
        )


def read_publication(path: Path, link: Path) -> Publication:
    """The record a version file keeps of itself."""
    with duckdb.connect(str(path), read_only=True) as version:
        [(name, published_at, flow_run_id, invocation_id)] = version.execute(
            f"select version, published_at, flow_run_id, dbt_invocation_id "
            f"from {PUBLICATION_SCHEMA}.publication"
        ).fetchall()
        tables = version.execute(
            f"select relation, row_count, origin from {PUBLICATION_SCHEMA}.published_tables "
            "order by relation"
        ).fetchall()
    return Publication(
        version=name,
        path=path,
        link=link,
        published_at=published_at.astimezone(UTC),
        flow_run_id=flow_run_id,
        dbt_invocation_id=invocation_id,
        tables=[PublishedTable(*table) for table in tables],
    )


def _link(settings: Settings) -> Path:
    """The readers' path; an error if something that is not our link sits there."""
    link = settings.published
    if link.exists() and not link.is_symlink():
        raise ConfigurationError(
            f"TRIBUTARY_PUBLISHED_PATH: {link} is a file tributary did not make (it publishes "
            "a symbolic link there); move it away or choose another path"
        )
    return link


def current(settings: Settings) -> Publication | None:
    """What readers get now: the version the link points at, or None before the first."""
    link = _link(settings)
    target = link.resolve() if link.is_symlink() else None
    if target is None or not target.is_file():
        return None
    return read_publication(target, link)


def versions(settings: Settings) -> list[Path]:
    """Kept versions, oldest first (their names sort by time)."""
    folder = settings.published_versions
    return sorted(folder.glob(f"{settings.published.stem}-*.duckdb")) if folder.is_dir() else []


def project_marts() -> set[str]:
    """`schema.name` of every mart table the dbt project defines (from dbt's manifest, which
    every invocation writes whole, whatever it selected)."""
    nodes = json.loads(MANIFEST.read_text())["nodes"].values()
    return {
        f"{node['schema']}.{node['alias']}"
        for node in nodes
        if node["resource_type"] == "model"
        and node["schema"] in MART_SCHEMAS
        and node["config"]["materialized"] in {"table", "incremental"}
    }


def not_published(settings: Settings, failure: BaseException) -> NotPublished:
    """What a failed build leaves readers: the last good set, with the counts that say why."""
    if isinstance(failure, DbtFailed):
        reason = _failed_and_skipped(failure.summary)
    else:
        reason = f"dbt build failed ({type(failure).__name__})"
    try:
        kept = current(settings)
    except (duckdb.Error, OSError, ConfigurationError):  # the build's failure is the news
        kept = None
    return NotPublished(reason, kept)


def _failed_and_skipped(summary: DbtSummary) -> str:
    skipped = summary.statuses["skipped"]
    failed = sum(n for s, n in summary.statuses.items() if s not in PASSED_STATUSES) - skipped
    return f"{failed} failed, {skipped} skipped"


def publish(
    settings: Settings,
    dbt: DbtSummary,
    *,
    flow_run_id: str | None,
    project: set[str] | None = None,
) -> Publication | NotPublished:
    """Publish the marts a passing build made, as a new version readers switch to at once.

    A build that selected only some marts publishes those from the working warehouse and
    carries every other published table over from the current version — not from the working
    warehouse, which may hold what an earlier failed build left. With no current version, only
    a build of every mart (``project``, default: the dbt project's) publishes. The history
    schemas (`ops`, `quarantine`) are the pipeline's own record and are copied as they are.
    """
    with warehouse_lock(settings):
        previous = current(settings)
        if not dbt.passed:
            return NotPublished(_failed_and_skipped(dbt), previous)
        latest = last_invocation_id()
        if dbt.invocation_id is not None and latest != dbt.invocation_id:
            # Between this build and this lock, another dbt command wrote the working warehouse.
            return NotPublished(
                f"another dbt invocation ({latest}) ran after this build, so the working "
                "warehouse may no longer hold what this build made and tested",
                previous,
            )
        built = dbt.built(MART_SCHEMAS)
        if not built:
            return NotPublished("the build made no mart", previous)
        missing = (project_marts() if project is None else project) - built
        carried: list[str] = []
        if missing:
            if previous is None:
                return NotPublished(
                    f"this build made only {', '.join(sorted(built))}, and with no earlier "
                    f"published version the other marts ({', '.join(sorted(missing))}) would "
                    "come from the working warehouse unchecked; a build of every mart "
                    "publishes",
                    None,
                )
            carried = [
                table.relation
                for table in previous.tables
                if table.relation.split(".", 1)[0] in MART_SCHEMAS and table.relation not in built
            ]
        publication = _write_version(settings, dbt, flow_run_id, built, previous, carried)
        _point_link(settings, publication.path)
        _prune(settings)
    return publication


def _write_version(
    settings: Settings,
    dbt: DbtSummary,
    flow_run_id: str | None,
    built: set[str],
    previous: Publication | None,
    carried: list[str],
) -> Publication:
    """A new version file, complete and synced before it gets its final name."""
    folder = settings.published_versions
    folder.mkdir(parents=True, exist_ok=True)
    published_at = datetime.now(UTC)
    name = f"{settings.published.stem}-{published_at:%Y%m%dT%H%M%S%fZ}.duckdb"
    final = folder / name
    partial = folder / f"{name}.partial"
    with duckdb.connect(str(partial)) as version:
        version.execute(f"attach {sql_string(settings.warehouse)} as warehouse (read_only)")
        history = [
            f"{schema}.{table}"
            for schema, table in version.execute(
                "select schema_name, table_name from duckdb_tables() "
                "where database_name = 'warehouse' and list_contains(?, schema_name) "
                "order by 1, 2",
                [list(HISTORY_SCHEMAS)],
            ).fetchall()
        ]
        raw = (
            [
                f"{schema}.{table}"
                for schema, table in version.execute(
                    "select schema_name, table_name from duckdb_tables() "
                    "where database_name = 'warehouse' and starts_with(schema_name, ?) "
                    "and not ends_with(schema_name, '_staging') "
                    "and not starts_with(table_name, '_dlt_') order by 1, 2",
                    [RAW_SCHEMA_PREFIX],
                ).fetchall()
            ]
            if settings.publish_raw
            else []
        )
        copies = [("warehouse", r, BUILT) for r in sorted(built)]
        copies += [("warehouse", r, HISTORY) for r in history]
        copies += [("warehouse", r, RAW) for r in raw]
        if carried and previous is not None:
            version.execute(f"attach {sql_string(previous.path)} as previous (read_only)")
            copies += [("previous", r, f"carried over from {previous.version}") for r in carried]
        tables = [_copy_table(version, catalog, r, origin) for catalog, r, origin in copies]
        version.execute(PUBLICATION_DDL)
        version.execute(
            f"insert into {PUBLICATION_SCHEMA}.publication values (?, ?, ?, ?, ?)",
            [name, published_at, flow_run_id, dbt.invocation_id, dbt.command],
        )
        version.executemany(
            f"insert into {PUBLICATION_SCHEMA}.published_tables values (?, ?, ?)",
            [[t.relation, t.rows, t.origin] for t in tables],
        )
        version.execute("detach warehouse")
        if carried:
            version.execute("detach previous")
        version.execute("checkpoint")
    wal = Path(f"{partial}.wal")
    if wal.exists():  # everything must be in the one file readers open
        raise RuntimeError(f"{partial} kept a write-ahead log after it was closed")
    _fsync(partial)
    os.chmod(partial, 0o444)  # a reader that opens it for writing is refused
    state = state_path(final)
    shutil.rmtree(state, ignore_errors=True)
    if MANIFEST.is_file():  # dev builds defer to the models this version holds
        state.mkdir()
        shutil.copy2(MANIFEST, state / "manifest.json")
    os.replace(partial, final)
    _fsync(folder)
    return Publication(
        name, final, settings.published, published_at, flow_run_id, dbt.invocation_id, tables
    )


def state_path(version: Path) -> Path:
    """The dbt state (``manifest.json``) of the build that published ``version``: what dev
    builds defer to (``dbt --defer --state``)."""
    return version.with_name(f"{version.name}.state")


def _copy_table(
    version: duckdb.DuckDBPyConnection, catalog: str, relation: str, origin: str
) -> PublishedTable:
    """One table, with its declared columns and constraints, into the new version."""
    schema, table = relation.split(".", 1)
    found = version.execute(
        "select sql from duckdb_tables() "
        "where database_name = ? and schema_name = ? and table_name = ?",
        [catalog, schema, table],
    ).fetchall()
    if not found:
        raise RuntimeError(f"{relation} is not in the {catalog} file to publish from")
    version.execute(f'create schema if not exists "{schema}"')
    version.execute(found[0][0])  # CREATE TABLE schema.table(...): lands in the new file
    target = f'"{schema}"."{table}"'
    version.execute(f"insert into {target} select * from {catalog}.{target}")
    [(rows,)] = version.execute(f"select count(*) from {target}").fetchall()
    return PublishedTable(relation, rows, origin)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') bytes to disk before a rename relies on them."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _point_link(settings: Settings, target: Path) -> None:
    """Swap the readers' link to ``target`` in one rename; readers see the old or the new."""
    link = _link(settings)
    link.parent.mkdir(parents=True, exist_ok=True)
    for leftover in link.parent.glob(f".{link.name}.*.swap"):  # from a killed publication
        leftover.unlink()
    swap = link.with_name(f".{link.name}.{os.getpid()}.swap")
    swap.symlink_to(os.path.relpath(target, link.parent))
    os.replace(swap, link)
    _fsync(link.parent)


def _prune(settings: Settings) -> None:
    """Keep the newest ``published_keep`` versions and the one readers get (the newest unless
    the clock went back), and drop what a killed publication left half-written (nobody else
    writes there while we hold the lock). A reader still on a dropped version keeps reading
    it: the file lives on until its last connection closes."""
    link = settings.published
    serving = link.resolve() if link.is_symlink() else None
    for path in versions(settings)[: -settings.published_keep]:
        if path != serving:
            path.unlink()
    kept = set(versions(settings))
    for state in settings.published_versions.glob("*.state"):
        if state.with_name(state.name.removesuffix(".state")) not in kept:
            shutil.rmtree(state)
    for leftover in settings.published_versions.glob("*.partial*"):
        leftover.unlink()


@contextmanager
def idle_warehouse(settings: Settings, command: str) -> Iterator[None]:
    """Hold the warehouse lock for a command run by hand, refusing at once (not waiting)
    while a load, a build or a publication holds it."""
    stack = ExitStack()
    try:
        stack.enter_context(warehouse_lock(settings.model_copy(update={"lock_timeout_seconds": 1})))
    except TimeoutError as exc:
        raise WarehouseInUse(
            f"`{command}` refused: a run holds the warehouse lock (a load, a build or a "
            "publication is under way). Run it again once that run has finished."
        ) from exc
    with stack:
        yield


def restore_published(settings: Settings, version: str | None = None) -> Publication:
    """Point the readers' link back at a kept version: ``version`` (a file name), or by default
    the one before the current. For when a passing build published something wrong."""
    with idle_warehouse(settings, command("tributary", "publish", "restore")):
        kept = versions(settings)
        serving = current(settings)
        names = ", ".join(path.name for path in kept) or "none"
        if version is None:
            earlier = [p for p in kept if serving is None or p.name < serving.version]
            if not earlier:
                raise ConfigurationError(
                    f"No version older than the current one to go back to (kept: {names})"
                )
            target = earlier[-1]
        else:
            matches = [p for p in kept if version in {p.name, p.stem}]
            if not matches:
                raise ConfigurationError(f"No kept version {version!r} (kept: {names})")
            target = matches[0]
        publication = read_publication(target, settings.published)
        _point_link(settings, target)
    return publication


@dataclass(frozen=True)
class WarehouseRestore:
    moved: list[Path]
    restored_from: Publication | None
    removed_state: list[Path]


def restore_warehouse(settings: Settings, *, force: bool = False) -> WarehouseRestore:
    """A new working warehouse from the version readers get now, for when the working one is
    unreadable. The bad file is moved aside, never deleted. The dlt pipelines' local state
    goes, so the next run reloads every source whole rather than continuing from cursors the
    new warehouse has no rows for. A readable warehouse is replaced only with ``force``."""
    warehouse = settings.warehouse
    with idle_warehouse(settings, RESTORE_COMMAND), ExitStack() as pipelines:
        state = sorted(settings.pipelines_dir.glob("tributary_*"))
        for name in sorted({path.name.split(".", 1)[0] for path in state}):
            lock = settings.pipelines_dir / f"{name}.lock"
            try:
                pipelines.enter_context(file_lock(lock, f"{name} pipeline", timeout=0.1))
            except TimeoutError as exc:
                raise WarehouseInUse(
                    f"`{RESTORE_COMMAND}` refused: a run is extracting with pipeline {name} "
                    f"({lock}). Run it again once that run has finished."
                ) from exc
        if warehouse.exists() and not force:
            try:
                check_warehouse(settings)
            except WarehouseUnreadable:
                pass
            else:
                raise ConfigurationError(
                    f"TRIBUTARY_WAREHOUSE_PATH: {warehouse} opens fine. Restoring replaces it "
                    "with the last published version and reloads every source; pass --force "
                    "to do that anyway."
                )
        source = current(settings)
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        moved = []
        for path, aside in [
            (warehouse, Path(f"{warehouse}.corrupt-{stamp}")),
            (Path(f"{warehouse}.wal"), Path(f"{warehouse}.corrupt-{stamp}.wal")),
        ]:
            if path.exists():
                os.replace(path, aside)
                moved.append(aside)
        if source is not None:
            _copy_version(source.path, warehouse)
        removed = []
        for path in state:
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(path)
            elif path.name.endswith(".bulk.json"):
                path.unlink()
                removed.append(path)
    return WarehouseRestore(moved=moved, restored_from=source, removed_state=removed)


def _copy_version(version: Path, warehouse: Path) -> None:
    """A writable working warehouse holding a published version's tables, minus its record
    and its raw tables: the pipelines' state goes with the bad file, so every source reloads
    whole (a raw table kept without its state would get an append table's rows twice)."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    partial = warehouse.with_name(f"{warehouse.name}.restoring")
    shutil.copyfile(version, partial)
    os.chmod(partial, 0o644)
    with duckdb.connect(str(partial)) as copy:
        copy.execute(f"drop schema {PUBLICATION_SCHEMA} cascade")
        for (schema,) in copy.execute(
            "select schema_name from duckdb_schemas() where starts_with(schema_name, ?)",
            [RAW_SCHEMA_PREFIX],
        ).fetchall():
            copy.execute(f'drop schema "{schema}" cascade')
        copy.execute("checkpoint")
    _fsync(partial)
    os.replace(partial, warehouse)
    _fsync(warehouse.parent)
