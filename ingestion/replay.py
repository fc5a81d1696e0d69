"""Replay quarantined rows once their cause is gone: the contract widened (a new currency),
or the rows of a set-aside package that were fine.

Each stored payload is checked again against the source's contract as it is now. A row that
passes loads into its raw table, merged on its key, without touching any cursor; a row whose
key raw already holds was superseded (the source sent it again, fixed) and is only closed; the
rest stay quarantined. Replayed and superseded rows get ``replayed_at``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dlt
from dlt.common import json

from ingestion import registry
from ingestion.guards import Contract, value_reasons
from ingestion.pipeline import _contracts, _key_columns, make_pipeline
from ingestion.quarantine import TABLE
from tributary.lock import file_lock, warehouse_lock
from tributary.settings import ConfigurationError, Settings


@dataclass
class ReplayResult:
    """Per table: rows loaded, rows closed because raw holds their key already; per table and
    reason, the rows that still fail."""

    replayed: Counter[str] = field(default_factory=Counter)
    superseded: Counter[str] = field(default_factory=Counter)
    still_failing: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Candidate:
    table: str
    key: str
    row_hash: str
    payload: dict[str, Any]


def _open_rows(connection: Any, source: str, tables: Sequence[str]) -> list[tuple[Any, ...]]:
    """(table, row hash, payload) of the source's rows still quarantined."""
    exists = connection.execute(
        "select 1 from duckdb_tables() where schema_name = 'quarantine' and table_name = 'rows'"
    ).fetchall()
    if not exists:
        return []
    in_tables = f" and table_name in ({', '.join('?' * len(tables))})" if tables else ""
    return connection.execute(
        f"select table_name, row_hash, any_value(payload) from {TABLE} "
        f"where source = ? and replayed_at is null{in_tables} "
        "group by table_name, row_hash order by table_name, min(first_seen_at)",
        [source, *tables],
    ).fetchall()


def _key_text(keys: Sequence[str], values: dict[str, Any]) -> str:
    return json.dumps({key: values.get(key) for key in keys}, sort_keys=True)


def _keys_in_raw(
    connection: Any, raw: str, keys: Sequence[str], candidates: list[_Candidate]
) -> set[str]:
    """The candidates' keys (as ``_key_text``) that the raw table holds already."""
    tuples = ", ".join("(" + ", ".join("?" * len(keys)) + ")" for _ in candidates)
    columns = ", ".join(f'"{key}"' for key in keys)
    try:
        rows = connection.execute(
            f"select {columns} from {raw} where ({columns}) in ({tuples})",
            [candidate.payload.get(key) for candidate in candidates for key in keys],
        ).fetchall()
    except Exception as exc:  # no raw table yet: nothing supersedes anything
        if "does not exist" in str(exc):
            return set()
        raise
    return {_key_text(keys, dict(zip(keys, row, strict=True))) for row in rows}


def replay_quarantined(source: str, settings: Settings, tables: Sequence[str] = ()) -> ReplayResult:
    """Replays ``source``'s quarantined rows (of ``tables``, or all) that pass its contract
    now. Runs as a load does: holding the pipeline's lock, and the warehouse lock to write."""
    built = registry.build(source, settings)
    dlt_source = built.source
    unknown = sorted(set(tables) - set(dlt_source.resources))
    if unknown:
        raise ConfigurationError(
            f"{source}: no table {', '.join(unknown)}; its tables are "
            f"{', '.join(sorted(dlt_source.resources))}"
        )
    limit = datetime.now(UTC) + timedelta(seconds=settings.cursor_future_tolerance_seconds)
    contracts = {contract.table: contract for contract in _contracts(built, dlt_source, limit)}
    result = ReplayResult()
    pipeline_lock = settings.pipelines_dir / f"tributary_{source}.lock"
    with file_lock(pipeline_lock, f"{source} pipeline", settings.lock_timeout_seconds):
        pipeline = make_pipeline(source, settings)
        with warehouse_lock(settings):
            pipeline.sync_destination()
            if pipeline.has_pending_data:
                raise ConfigurationError(
                    f"{source}: a load is pending; run the source first (the run finishes "
                    "it), then replay"
                )
            with pipeline.sql_client() as client:
                rows = _open_rows(client.native_connection, source, tables)
        # Each table's key as loaded (dlt reads its schema file again on every access).
        loaded_keys: dict[str, list[str]] = {}
        if rows:
            schema = pipeline.default_schema
            loaded_keys = {table: _key_columns(schema, table) for table, *_ in rows}
        candidates: list[_Candidate] = []
        for table, row_hash, payload_text in rows:
            payload = json.loads(payload_text)
            contract = contracts.get(table, Contract(table=table))
            keys = loaded_keys[table] or list(contract.keys)
            reasons = value_reasons(dataclasses.replace(contract, keys=keys), payload)
            if reasons:
                result.still_failing[(table, "; ".join(reasons))] += 1
            else:
                candidates.append(_Candidate(table, _key_text(keys, payload), row_hash, payload))
        copies = Counter((c.table, c.key) for c in candidates)
        batches: dict[str, list[dict[str, Any]]] = {}
        closed: list[str] = []
        with warehouse_lock(settings):
            with pipeline.sql_client() as client:
                held = {
                    table: _keys_in_raw(
                        client.native_connection,
                        client.make_qualified_table_name(table),
                        loaded_keys[table],
                        [c for c in candidates if c.table == table],
                    )
                    for table in {c.table for c in candidates}
                    if loaded_keys[table]
                }
            for candidate in candidates:
                if copies[(candidate.table, candidate.key)] > 1:
                    result.still_failing[(candidate.table, "its key is quarantined twice")] += 1
                elif candidate.key in held.get(candidate.table, set()):
                    result.superseded[candidate.table] += 1
                    closed.append(candidate.row_hash)
                else:
                    batches.setdefault(candidate.table, []).append(candidate.payload)
                    result.replayed[candidate.table] += 1
                    closed.append(candidate.row_hash)
            if batches:
                # One resource per table, merged on the table's key, with no incremental step:
                # no cursor moves.
                replayed = dlt.source(name=dlt_source.name)(
                    lambda: [
                        dlt.resource(
                            batch,
                            name=table,
                            write_disposition="merge",
                            primary_key=loaded_keys[table] or None,
                        )
                        for table, batch in batches.items()
                    ]
                )
                pipeline.extract(replayed(), loader_file_format="parquet")
                pipeline.normalize()
                pipeline.load()
            if closed:
                with pipeline.sql_client() as client:
                    client.native_connection.executemany(
                        f"update {TABLE} set replayed_at = ? where source = ? and row_hash = ?",
                        [[datetime.now(UTC), source, row_hash] for row_hash in closed],
                    )
    return result
