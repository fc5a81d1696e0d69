"""A run killed after its load committed, before it reported, is counted by the next run, once.

Found by the fault suite (tests/faults, a random kill 12 s into an incremental run): the raw
tables were right, but `ops.table_loads` no longer added up to them — the killed run's counts
were dropped with it, and the next run found nothing new to count. Each case SIGKILLs a real
run at a point inside it (the process kills itself there: a kill from outside cannot hit a
moment that short), then checks that the next run reports exactly what the killed one did and
that every run's history adds up to the rows the warehouse holds, which equal the source's."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
import yaml

from ingestion.pipeline import make_pipeline, run_source
from ingestion.results import SourceLoad
from tributary.ops import run_row, write_runs
from tributary.report import RunReport
from tributary.settings import PROJECT_ROOT, Settings

ROWS = 40

# Run in a child process: load the source, SIGKILLing the process itself right after `point`.
KILLED_RUN = """
import os, signal, sys
import dlt
import ingestion.pipeline as pipeline
from tributary.settings import Settings

data_dir, sources_file, point = sys.argv[1:]

def killed_after(function):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper

if point == "load":
    dlt.Pipeline.load = killed_after(dlt.Pipeline.load)
elif point == "deletes":
    pipeline.delete_missing = killed_after(pipeline.delete_missing)
elif point == "normalize":  # its package extracted and normalised, not loaded
    dlt.Pipeline.normalize = killed_after(dlt.Pipeline.normalize)
elif point == "resumed":  # an earlier run's package loaded, the changes since not yet read
    load_pass = pipeline._load_pass

    def resumed_then_killed(*args, **kwargs):
        result = load_pass(*args, **kwargs)
        if result.resumed:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    pipeline._load_pass = resumed_then_killed
pipeline.run_source(
    "things", Settings(data_dir=data_dir, sources_file=sources_file), history=lambda: ()
)
"""


def _source(tmp_path: Path) -> tuple[Path, Settings]:
    database = tmp_path / "things.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute(
            "create table items (id integer primary key, label text, updated_at timestamp)"
        )
        connection.executemany(
            "insert into items values (?, ?, ?)",
            [(i, f"item {i}", _at(0, i)) for i in range(1, ROWS + 1)],
        )
    sources = tmp_path / "sources.yml"
    sources.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "things": {
                        "type": "sql_database",
                        "credentials": f"sqlite:///{database}",
                        "defaults": {"cursor": "updated_at", "lag": 0, "reconcile_deletes": True},
                        "tables": {"items": None},
                    }
                }
            }
        )
    )
    return database, Settings(data_dir=tmp_path / "data", sources_file=sources)


def _at(day: int, second: int) -> str:
    return datetime(2026, 1, 1 + day, 0, 0, second % 60, tzinfo=UTC).isoformat(" ")


def _change(database: Path) -> None:
    """6 new rows, 3 updated, 4 deleted."""
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "insert into items values (?, ?, ?)",
            [(i, f"item {i}", _at(1, i)) for i in range(ROWS + 1, ROWS + 7)],
        )
        connection.execute(
            "update items set label = label || ' (new)', updated_at = ? where id in (1, 2, 3)",
            [_at(1, 59)],
        )
        connection.execute("delete from items where id in (10, 11, 12, 13)")


def _change_again(database: Path) -> None:
    """2 new rows, 2 updated, 2 deleted: none of them a row `_change` touched."""
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "insert into items values (?, ?, ?)",
            [(i, f"item {i}", _at(2, i)) for i in range(ROWS + 7, ROWS + 9)],
        )
        connection.execute(
            "update items set label = label || ' (again)', updated_at = ? where id in (20, 21)",
            [_at(2, 59)],
        )
        connection.execute("delete from items where id in (30, 31)")


def _kill(settings: Settings, point: str) -> None:
    """A run of the source that SIGKILLs itself right after ``point``."""
    arguments = [str(settings.data_dir), str(settings.sources_file), point]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def _report(settings: Settings, name: str, load: SourceLoad) -> None:
    """What the elt flow does with a result: its history into ops."""
    now = datetime.now(UTC)
    write_runs(
        settings,
        [
            run_row(
                flow_run_id=name,
                flow_name="elt",
                deployment=None,
                status="completed",
                error=None,
                started_at=now,
                finished_at=now,
                report=RunReport(warehouse=settings.warehouse, loads=[load]),
            )
        ],
        now=now,
    )


def _run(settings: Settings, history: Callable[[], Collection[str]] = lambda: ()) -> SourceLoad:
    return run_source("things", settings, history=history)


def _counts(load: SourceLoad) -> tuple[int, int, int]:
    [table] = [table for table in load.tables if table.table == "items"]
    return table.new, table.updated, table.deleted


def _assert_history_adds_up(settings: Settings, database: Path) -> None:
    with sqlite3.connect(database) as connection:
        source = sorted(connection.execute("select id, label from items").fetchall())
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        raw = sorted(warehouse.sql("select id, label from raw_things.items").fetchall())
        [(net,)] = warehouse.sql(
            "select sum(rows_new) - sum(rows_deleted) from ops.table_loads "
            "where dataset = 'raw_things' and table_name = 'items'"
        ).fetchall()
    assert raw == source
    assert net == len(source)


@pytest.mark.parametrize("point", ["load", "deletes"])
def test_a_run_killed_after_its_load_is_counted_by_the_next(point: str, tmp_path: Path) -> None:
    database, settings = _source(tmp_path)
    first = _run(settings)
    assert _counts(first) == (ROWS, 0, 0)
    _report(settings, "run-1", first)
    _change(database)

    _kill(settings, point)

    after = _run(settings)
    assert after.carried, "the killed run's load is not carried"
    assert set(after.carried) <= set(after.load_ids)
    assert _counts(after) == (6, 3, 4)
    _report(settings, "run-3", after)
    _assert_history_adds_up(settings, database)

    again = _run(settings)
    assert again.carried == []
    assert _counts(again) == (0, 0, 0)
    _report(settings, "run-4", again)
    _assert_history_adds_up(settings, database)


def test_a_result_never_reported_is_carried_and_a_journaled_one_is_not(tmp_path: Path) -> None:
    """Killed between its return and its report (nothing of it in ops): the next run carries
    it; reported in a run journal not yet written to ops (``history``): it does not."""
    database, settings = _source(tmp_path)
    first = _run(settings)
    _change(database)
    second = _run(settings, history=lambda: set(first.load_ids))
    assert second.carried == []
    assert _counts(second) == (6, 3, 4)
    # `first` is now written to ops, `second` never is: the next run carries it
    _report(settings, "run-1", first)
    third = _run(settings)
    assert third.carried == second.load_ids
    assert _counts(third) == (6, 3, 4)
    _report(settings, "run-3", third)
    _assert_history_adds_up(settings, database)
    assert _run(settings).carried == []


def test_without_history_nothing_is_carried(tmp_path: Path) -> None:
    """A caller that keeps no history (a script, a benchmark) gets each run's own counts."""
    database, settings = _source(tmp_path)
    run_source("things", settings)
    _change(database)
    second = run_source("things", settings)
    assert (second.carried, _counts(second)) == ([], (6, 3, 4))
    assert not list(settings.pipelines_dir.glob("*.unreported.json"))


@pytest.mark.parametrize("recovery", ["whole", "killed between its passes"])
def test_the_run_that_loads_a_killed_runs_package_reads_what_changed_since(
    recovery: str, tmp_path: Path
) -> None:
    """Found by the fault suite (a kill of the process group 12 s into an incremental run on
    PostgreSQL, after normalise and before load; the shop moved on; one recovery run): the
    recovery loaded only the pending package, like ``dlt.Pipeline.run``, and Completed with
    the source's later changes unread — rows lost and rows the source had deleted still in
    raw. Now the same run reads what changed since; killed between the two, the next run
    counts the loaded package once."""
    database, settings = _source(tmp_path)
    first = _run(settings)
    _report(settings, "run-1", first)
    _change(database)
    _kill(settings, "normalize")
    assert make_pipeline("things", settings).has_pending_data
    _change_again(database)
    if recovery == "killed between its passes":
        _kill(settings, "resumed")
        assert not make_pipeline("things", settings).has_pending_data

    after = _run(settings)
    if recovery == "whole":
        assert after.resumed
        assert after.carried == []
    else:
        assert not after.resumed
        assert after.carried, "the package the killed recovery loaded is not carried"
    # both changes, each once: 6 + 2 new, 3 + 2 updated, 4 + 2 deleted
    assert _counts(after) == (8, 5, 6)
    _report(settings, "run-2", after)
    _assert_history_adds_up(settings, database)

    again = _run(settings)
    assert (again.resumed, again.carried, _counts(again)) == (False, [], (0, 0, 0))
