"""The run journal: every run reaches ``ops.pipeline_runs`` with its final state — also a run
whose warehouse could not be written when it ended, and a run whose process was killed.

A run writes ``<data_dir>/ops/runs/<flow_run_id>.json`` as it starts and holds an exclusive OS
lock on ``<flow_run_id>.lock`` for as long as its process lives; the kernel drops the lock
however the process ends, so a lock anyone can take means the run is gone. At its end the run
writes its history to the warehouse and removes its file; when the warehouse cannot be written
(a reader holds the file, the lock timed out) the file keeps the final rows instead. Every run,
as it starts, writes what earlier runs left: final rows as they are, and a run still marked
running whose lock is free as ``crashed``, finished when its file was last touched (a
heartbeat touches it every ``HEARTBEAT_SECONDS``), with the loads it recorded as each source
finished (``record``: a source loaded before the kill is counted once, by the killed run, in
``ops.table_loads``); Prefect is told too, when it still shows
that flow run RUNNING or PENDING, and the alert channels when no server automation will.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID, uuid4

import duckdb
import prefect.runtime
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed
from pydantic import BaseModel, ValidationError

from tributary import orphans
from tributary.lock import server_configured
from tributary.notify import notify, run_logger
from tributary.ops import RunRow, run_row, write_runs
from tributary.report import Freshness, RunReport
from tributary.settings import ConfigurationError, Settings, get_settings

HEARTBEAT_SECONDS = 15
Status = Literal["running", "completed", "failed", "crashed"]


class JournalEntry(BaseModel):
    """One run as its journal file holds it: ``progress`` (what it has loaded so far, as
    history rows) while it runs, ``final`` (the history rows) once it has ended."""

    flow_run_id: str
    flow_name: str
    deployment: str | None
    warehouse: str
    pid: int
    started_at: datetime
    status: Status = "running"
    progress: RunRow | None = None
    final: RunRow | None = None


def _paths(settings: Settings, flow_run_id: str) -> tuple[Path, Path]:
    """The run's journal file and its lock file."""
    return settings.runs_dir / f"{flow_run_id}.json", settings.runs_dir / f"{flow_run_id}.lock"


def _write(path: Path, entry: JournalEntry) -> None:
    """Replace the file in one step, so that nobody ever reads half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(entry.model_dump_json(indent=2))
    os.replace(temporary, path)


def _read(path: Path) -> JournalEntry | None:
    """The entry, or None when the file is gone (its run wrote its history meanwhile) or cannot
    be read (said in the log; the file is left for a person to look at)."""
    try:
        return JournalEntry.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        run_logger().warning("Run journal %s cannot be read, skipped: %s", path, exc)
        return None


def _try_lock(path: Path, *, create: bool) -> int | None:
    """A descriptor holding an exclusive lock on ``path``, or None when another process holds
    it (or, without ``create``, when the file is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then let go."""
    path.unlink(missing_ok=True)
    os.close(fd)


class RunJournal:
    """The journal of one running flow run: its file, its lock and its heartbeat."""

    def __init__(self, settings: Settings, entry: JournalEntry, lock: int) -> None:
        self.settings = settings
        self.entry = entry
        self.path, self._lock_path = _paths(settings, entry.flow_run_id)
        self._lock = lock
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="run-journal", daemon=True)
        self._heartbeat.start()

    @classmethod
    def open(
        cls, settings: Settings, *, flow_run_id: str, flow_name: str, deployment: str | None
    ) -> RunJournal:
        """Lock, then write the entry: whoever sees the file can trust a free lock."""
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        path, lock_path = _paths(settings, flow_run_id)
        lock = _try_lock(lock_path, create=True)
        if lock is None:
            raise RuntimeError(
                f"Flow run {flow_run_id} is running in another process (it holds {lock_path})"
            )
        entry = JournalEntry(
            flow_run_id=flow_run_id,
            flow_name=flow_name,
            deployment=deployment,
            warehouse=str(settings.warehouse),
            pid=os.getpid(),
            started_at=datetime.now(UTC),
        )
        _write(path, entry)
        return cls(settings, entry, lock)

    def _beat(self) -> None:
        """Touch the file now and then: its time is when a killed run was last seen alive."""
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with suppress(FileNotFoundError):
                os.utime(self.path)

    def _row(self, status: str, error: str | None, report: RunReport) -> RunRow:
        """The run's history row as of now."""
        return run_row(
            flow_run_id=self.entry.flow_run_id,
            flow_name=self.entry.flow_name,
            deployment=self.entry.deployment,
            status=status,
            error=error,
            started_at=self.entry.started_at,
            finished_at=datetime.now(UTC),
            report=report,
        )

    def record(self, report: RunReport) -> None:
        """Keep what the run has loaded so far: a run killed later is written with these
        loads (``ops.table_loads``), which no later run counts again."""
        row = self._row("running", None, report)
        self.entry = self.entry.model_copy(update={"progress": row})
        _write(self.path, self.entry)

    def publishing(self, report: RunReport) -> None:
        """Write the run into ``ops`` as completed just before it publishes, so the version it
        publishes holds the run's own row and loads (readers of the published file are not a
        run behind). ``finish`` writes the final row; a failed publish or a kill replaces this
        one (the journal stays until then), and only a version this run published holds it."""
        row = self._row("completed", None, report)
        try:
            write_runs(self.settings, [row], now=row.finished_at)
        except Exception as exc:  # publishing goes on; the published history misses this run
            run_logger().warning(
                "Could not write this run to ops.pipeline_runs before publishing (%s: %s); "
                "the next version published holds it.",
                type(exc).__name__,
                exc,
            )

    def finish(
        self, status: Literal["completed", "failed"], error: str | None, report: RunReport
    ) -> list[Freshness]:
        """Write the run's history and remove its journal; returns each raw dataset's freshness.

        Does not raise when the warehouse cannot be written: the run's own outcome matters more
        than its history row, which the journal keeps for the next run to write."""
        self._stop.set()
        self._heartbeat.join()
        row = self._row(status, error, report)
        self.entry = self.entry.model_copy(update={"status": status, "final": row})
        try:
            _write(self.path, self.entry)
            try:
                freshness = write_runs(self.settings, [row], now=row.finished_at)
            except Exception as exc:
                run_logger().warning(
                    "Could not write this run to ops.pipeline_runs (%s: %s); its journal %s "
                    "keeps it and the next run writes it.",
                    type(exc).__name__,
                    exc,
                    self.path,
                )
                return []
            self.path.unlink()
            return freshness
        finally:
            _unlock(self._lock_path, self._lock)


def begin_run(settings: Settings, flow_name: str) -> RunJournal:
    """Open this flow run's journal, then write what earlier runs left in theirs. Call it first
    in a flow, before anything writes the warehouse; Prefect says which flow run this is."""
    flow_run_id = prefect.runtime.flow_run.id
    if flow_run_id is None:
        raise RuntimeError("begin_run belongs inside a flow run")
    deployment = prefect.runtime.deployment.name
    journal = RunJournal.open(
        settings,
        flow_run_id=str(flow_run_id),
        flow_name=flow_name,
        deployment=f"{flow_name}/{deployment}" if deployment else None,
    )
    try:
        flush(settings, found_by=journal.entry.flow_run_id)
    except Exception as exc:  # this run goes ahead; the journals wait for the next one
        run_logger().warning(
            "Could not write earlier runs to ops.pipeline_runs (%s: %s); their journals in %s "
            "stay for the next run.",
            type(exc).__name__,
            exc,
            settings.runs_dir,
        )
    return journal


def journaled_load_ids(settings: Settings) -> set[str]:
    """The load ids run journals hold, written to ``ops.table_loads`` or not yet: with those
    in ops, the loads some run has reported."""
    load_ids: set[str] = set()
    for path in settings.runs_dir.glob("*.json"):
        entry = _read(path)
        for row in (entry.progress, entry.final) if entry else ():
            for table in row.tables if row else ():
                load_ids.update(table.load_ids)
    return load_ids


def flush(settings: Settings, *, found_by: str) -> list[RunRow]:
    """Write to ops what ended runs left in the journal (all but ``found_by``, the run doing
    it), and remove their files; returns the rows written."""
    _journal_unjournaled_starts(settings)
    ended: list[tuple[Path, RunRow]] = []
    for path in sorted(settings.runs_dir.glob("*.json")):
        entry = _read(path)
        if (
            entry is None
            or entry.flow_run_id == found_by
            or entry.warehouse != str(settings.warehouse)
        ):
            continue
        if entry.status == "running":
            entry = _crashed(settings, path, entry, found_by)
        elif _held(_paths(settings, entry.flow_run_id)[1]):
            continue  # its run is writing this history itself right now (``finish``)
        if entry is not None and entry.final is not None:
            ended.append((path, entry.final))
    if not ended:
        return []
    rows = [row for _, row in ended]
    write_runs(settings, rows, now=datetime.now(UTC))
    for path, _ in ended:
        path.unlink(missing_ok=True)
    run_logger().info(
        "Wrote %d earlier run(s) to ops.pipeline_runs: %s",
        len(rows),
        ", ".join(f"{row.flow_name} {row.flow_run_id} {row.status}" for row in rows),
    )
    return rows


def _held(lock_path: Path) -> bool:
    """Whether a live process holds this lock: a run not done with its journal (``finish``
    marks the entry final, then writes it to ops, then lets go), or with its start marker."""
    lock = _try_lock(lock_path, create=False)
    if lock is None:
        return lock_path.exists()  # gone: its run let go of it
    os.close(lock)  # a lock nobody holds: its run died before letting go
    return False


def _crashed(
    settings: Settings, path: Path, entry: JournalEntry, found_by: str
) -> JournalEntry | None:
    """The entry of a run whose process is gone, made final as ``crashed``; None while its
    process lives (it holds its lock)."""
    _, lock_path = _paths(settings, entry.flow_run_id)
    lock = _try_lock(lock_path, create=False)
    if lock is None:
        return None
    try:
        # Read again under the lock: the run may have ended between the first read and now.
        current = _read(path)
        if current is None or current.status != "running":
            return current
        last_seen = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        error = (
            f"process {current.pid} ended without finishing the run (killed, or its machine "
            f"stopped); last seen {last_seen:%Y-%m-%d %H:%M:%S} UTC; "
            f"found by flow run {found_by}"
        )
        loaded = current.progress
        row = RunRow(
            flow_run_id=current.flow_run_id,
            flow_name=current.flow_name,
            deployment=current.deployment,
            status="crashed",
            error=error,
            started_at=current.started_at,
            finished_at=last_seen,
            rows_loaded=loaded.rows_loaded if loaded else 0,
            tables=loaded.tables if loaded else [],
            schema_changes=loaded.schema_changes if loaded else [],
        )
        crashed = current.model_copy(update={"status": "crashed", "final": row})
        _write(path, crashed)
    finally:
        _unlock(lock_path, lock)
    if _tell_prefect(crashed, error):
        notify(
            settings,
            f"tributary: flow `{crashed.flow_name}` crashed",
            "\n".join(
                [
                    f"Deployment: {crashed.deployment or 'none (run locally)'}",
                    f"Flow run: {crashed.flow_run_id}",
                    f"Error: {error}",
                ]
            ),
        )
    return crashed


def _tell_prefect(entry: JournalEntry, error: str) -> bool:
    """Set the flow run CRASHED where Prefect still shows it RUNNING or PENDING. True when the
    alert is ours to send: on a real server, a run set CRASHED here alerts through the server's
    automation (``automations.yaml``), as does one a worker saw crash; a local temporary
    server has no automations, and a run the server does not know had no server watching."""
    try:
        with get_client(sync_client=True) as client:
            try:
                flow_run = client.read_flow_run(UUID(entry.flow_run_id))
            except ObjectNotFound:
                return True
            if flow_run.state is None or flow_run.state.type not in (
                StateType.RUNNING,
                StateType.PENDING,
            ):
                return False
            client.set_flow_run_state(
                flow_run.id, Crashed(message=f"tributary run journal: {error}"), force=True
            )
    except Exception as exc:  # the history row is written all the same
        run_logger().warning(
            "Could not mark flow run %s crashed in Prefect: %s", entry.flow_run_id, exc
        )
        return True
    return not server_configured()


# A flow run called from this process carries this tag plus its start marker's token from its
# creation on, so that a run killed before its journal existed can be found by the next run.
START_TAG = "tributary-start-"


class StartMarker(BaseModel):
    """A local process about to run a flow (``local_run``), before the run has a journal."""

    token: str
    flow_name: str
    warehouse: str
    pid: int
    started_at: datetime


def _marker_paths(settings: Settings, token: str) -> tuple[Path, Path]:
    return settings.runs_dir / f"{token}.start", settings.runs_dir / f"{token}.start.lock"


@contextmanager
def local_run(flow_name: str) -> Iterator[None]:
    """Around a flow called from this process (``python -m flows.elt``, ``tributary run``,
    ``tributary demo``): its temporary Prefect server dies with it (``guard_local_server``),
    and a start marker, locked while this process lives, names a tag the flow run carries.

    Prefect marks the run RUNNING before the flow's first line writes its journal
    (``begin_run``); a process killed in between left a run RUNNING for ever with no history
    (the fault suite found it in 2 of 60 kills of the main process). The next run's flush
    finds such runs by the tag of a marker nobody holds and records them as crashed.

    With settings that do not validate there is no marker: the flow fails on them itself,
    naming the setting, in a run Prefect records."""
    guard_local_server()
    try:
        settings: Settings | None = get_settings()
    except ConfigurationError:
        settings = None
    if settings is None:
        yield
        return
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    marker = StartMarker(
        token=uuid4().hex,
        flow_name=flow_name,
        warehouse=str(settings.warehouse),
        pid=os.getpid(),
        started_at=datetime.now(UTC),
    )
    path, lock_path = _marker_paths(settings, marker.token)
    lock = _try_lock(lock_path, create=True)
    if lock is None:  # a fresh random name: nobody else can hold it
        raise RuntimeError(f"{lock_path} is held by another process")
    path.write_text(marker.model_dump_json())
    try:
        with tags(START_TAG + marker.token):
            yield
    finally:
        path.unlink(missing_ok=True)
        _unlock(lock_path, lock)


def _journal_unjournaled_starts(settings: Settings) -> None:
    """Give a journal (as ``begin_run`` would have) to each run whose process died after
    Prefect started it and before it wrote one, so that ``flush`` records it as crashed: the
    RUNNING or PENDING flow runs tagged by a start marker whose process is gone."""
    for path in sorted(settings.runs_dir.glob("*.start")):
        lock_path = path.with_name(f"{path.name}.lock")
        lock = _try_lock(lock_path, create=False)
        if lock is None and lock_path.exists():
            continue  # its process lives
        try:  # holding its lock: one flush at a time takes a marker
            if _journal_start(settings, path):
                path.unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
        finally:
            if lock is not None:
                os.close(lock)


def _journal_start(settings: Settings, path: Path) -> bool:
    """Journal the started, unjournaled runs of a dead process's start marker; False when the
    marker is not this warehouse's, or cannot be read or looked up now (it stays)."""
    try:
        marker = StartMarker.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return False
    if marker.warehouse != str(settings.warehouse):
        return False
    try:
        with get_client(sync_client=True) as client:
            started = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[START_TAG + marker.token]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                    ),
                )
            )
        recorded = _recorded(settings, [str(flow_run.id) for flow_run in started])
    except Exception as exc:  # Prefect or the warehouse unreadable: the next run looks again
        run_logger().warning("Could not look up the runs of start marker %s: %s", path, exc)
        return False
    for flow_run in started:
        journal, run_lock = _paths(settings, str(flow_run.id))
        if journal.exists() or str(flow_run.id) in recorded:
            continue  # begin_run wrote it (flush takes it from there), or it finished
        began = flow_run.start_time or marker.started_at
        run_lock.touch()
        _write(
            journal,
            JournalEntry(
                flow_run_id=str(flow_run.id),
                flow_name=marker.flow_name,
                deployment=None,
                warehouse=marker.warehouse,
                pid=marker.pid,
                started_at=began,
            ),
        )
        os.utime(journal, (began.timestamp(), began.timestamp()))  # last seen: its start
    return True


def _recorded(settings: Settings, flow_run_ids: list[str]) -> set[str]:
    """Those of the runs ``ops.pipeline_runs`` already holds."""
    if not flow_run_ids or not settings.warehouse.is_file():
        return set()
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        if not warehouse.execute(
            "select 1 from duckdb_tables() where schema_name = 'ops' "
            "and table_name = 'pipeline_runs'"
        ).fetchall():
            return set()
        return {
            row[0]
            for row in warehouse.execute(
                "select flow_run_id from ops.pipeline_runs where list_contains(?, flow_run_id)",
                [flow_run_ids],
            ).fetchall()
        }


def guard_local_server() -> None:
    """Make Prefect's temporary server, and anything else this process starts, die with it
    (``tributary.orphans``), for a local run; a real server (``PREFECT_API_URL``) is not ours
    to stop. Call it before the flow starts, so that the server is covered from its start."""
    if not server_configured():
        orphans.watch()
