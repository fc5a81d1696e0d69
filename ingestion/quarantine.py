"""Quarantine: rows a source sent that break its contract, kept out of raw with the reason.

A rejected row is written to a journal file beside the pipeline the moment it is rejected, so
it outlives a run killed before the load. The load that follows (or the next run's, if this
one dies) moves every journal line into ``quarantine.rows`` in the warehouse, under the
warehouse lock, and deletes the file. One row per (source, table, row hash, reason): a row the
source keeps sending (a poisoned timestamp re-read every run) is counted, not repeated, and
``first_seen_at`` says since when.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlt.common import json

SCHEMA = "quarantine"
TABLE = f"{SCHEMA}.rows"
DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {TABLE} (
    source varchar not null,
    table_name varchar not null,
    reason varchar not null,
    row_key varchar,
    payload json not null,
    row_hash varchar not null,
    load_id varchar,
    first_seen_at timestamptz not null,
    last_seen_at timestamptz not null,
    times_seen bigint not null,
    replayed_at timestamptz,
    primary key (source, table_name, row_hash, reason)
);
"""


@dataclass(frozen=True)
class Rejected:
    """One row kept out of raw: its table, why, its key (if it has one) and the row itself."""

    table: str
    reason: str
    payload: Mapping[str, Any]
    key: Mapping[str, Any] | None = None

    def line(self, load_id: str | None) -> str:
        payload = json.dumps(self.payload, sort_keys=True)
        return json.dumps(
            {
                "table": self.table,
                "reason": self.reason,
                "key": json.dumps(self.key, sort_keys=True) if self.key else None,
                "payload": payload,
                "row_hash": hashlib.sha256(payload.encode()).hexdigest(),
                "load_id": load_id,
                "seen_at": datetime.now(UTC).isoformat(),
            }
        )


@dataclass(frozen=True)
class QuarantineCount:
    """Rows of one table quarantined by one run: all of them, and those never seen before."""

    table: str
    reason: str
    rows: int
    new_rows: int
    example_keys: tuple[str, ...] = ()


class Journal:
    """The folder of journal files of one pipeline. Each extraction appends to a file of its
    own, named for the load package once the extraction has committed it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file: Path | None = None
        # Tables extract in parallel threads, each guard appending to the same file.
        self._lock = threading.Lock()

    def append(self, rows: Sequence[Rejected]) -> None:
        if not rows:
            return
        text = "".join(row.line(None) + "\n" for row in rows)
        with self._lock:
            if self._file is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._file = self.folder / f"extracting-{uuid.uuid4().hex}.jsonl"
            with self._file.open("a") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())

    def seal(self, load_id: str | None) -> None:
        """The extraction committed ``load_id``: name the file for it (and stamp its lines)."""
        with self._lock:
            self._seal(load_id)

    def _seal(self, load_id: str | None) -> None:
        if self._file is None:
            return
        lines = [json.loads(line) for line in self._file.read_text().splitlines() if line]
        target = self.folder / f"{load_id or 'unloaded-' + uuid.uuid4().hex}.jsonl"
        temporary = target.with_suffix(".tmp")
        stamped = [json.dumps({**row, "load_id": load_id}) + "\n" for row in lines]
        temporary.write_text("".join(stamped))
        os.replace(temporary, target)
        self._file.unlink()
        self._file = None

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []

    def lines(self) -> Iterator[dict[str, Any]]:
        for path in self.files():
            for line in path.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)


def flush(connection: Any, source: str, journal: Journal) -> list[QuarantineCount]:
    """Move every journal line into ``quarantine.rows`` (a DuckDB connection holding the
    warehouse), then delete the files. Returns per table and reason the rows and how many were
    never quarantined before."""
    files = journal.files()
    rows = list(journal.lines())
    if not rows:
        for path in files:
            path.unlink()
        return []
    connection.execute(DDL)
    connection.execute("begin")
    try:
        connection.execute(
            "create or replace temporary table tributary_rejected (table_name varchar, "
            "reason varchar, row_key varchar, payload varchar, row_hash varchar, "
            "load_id varchar, seen_at timestamptz)"
        )
        connection.executemany(
            "insert into tributary_rejected values (?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    row["table"],
                    row["reason"],
                    row["key"],
                    row["payload"],
                    row["row_hash"],
                    row["load_id"],
                    row["seen_at"],
                ]
                for row in rows
            ],
        )
        counts = connection.execute(
            f"""
            select r.table_name, r.reason, count(distinct r.row_hash),
                count(distinct r.row_hash) filter (where q.row_hash is null),
                list(distinct r.row_key order by r.row_key) filter (where r.row_key is not null)
            from tributary_rejected r
            left join {TABLE} q
                on q.source = ? and q.table_name = r.table_name and q.row_hash = r.row_hash
                and q.reason = r.reason
            group by 1, 2 order by 1, 2
            """,
            [source],
        ).fetchall()
        connection.execute(
            f"""
            insert into {TABLE} by name
            select ? as source, table_name, reason, any_value(row_key) as row_key,
                any_value(payload)::json as payload, row_hash, min(load_id) as load_id,
                min(seen_at) as first_seen_at, max(seen_at) as last_seen_at,
                count(*) as times_seen
            from tributary_rejected group by table_name, reason, row_hash
            on conflict do update set
                last_seen_at = greatest(last_seen_at, excluded.last_seen_at),
                times_seen = times_seen + excluded.times_seen,
                replayed_at = null
            """,
            [source],
        )
        connection.execute("drop table tributary_rejected")
        connection.execute("commit")
    except BaseException:
        connection.execute("rollback")
        raise
    for path in files:
        path.unlink()
    return [
        QuarantineCount(
            table=table,
            reason=reason,
            rows=rows_,
            new_rows=new,
            example_keys=tuple((keys or [])[:5]),
        )
        for table, reason, rows_, new, keys in counts
    ]
