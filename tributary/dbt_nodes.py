"""Every node of a dbt build inside a flow, reported to Prefect as a task run of that flow.

prefect-dbt's ``PrefectDbtRunner`` runs Prefect's whole task engine once per node, each in a
thread of its own, turns every dbt event into a dict on the way, and sends three state events
per node: on a 2-core machine that made dbt in a flow 1.3-1.6x a plain ``dbt build``
(bench/README), the flow's process and the server's recording both taking CPU from the build.
The server records a task run from its state events, so this module sends them itself, from
dbt's ``NodeStart``/``NodeFinished`` and log events: dbt's threads only queue the few fields
read from each event, and one thread turns them into task runs, logs and asset events.

A node becomes a task run when it runs (its first line after ``NodeStart``): never when dbt
skips it, nor for an ephemeral model. Its upstream nodes' task runs are its ``wait_for`` inputs,
so the UI draws the graph. It ends Completed (success, pass, warn) or Failed (error, fail) at
dbt's own start and end times; the server hears of it once, in that final state, unless it runs
for longer than ``RUNNING_AFTER``, when it is shown Running until then. dbt's lines about a node
are its task run's logs, the others the flow's. A model, seed or snapshot that built is an asset
materialization, its upstream relations referenced, as prefect-dbt reports them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect._internal.uuid7 import uuid7
from prefect.client.schemas.objects import (
    FlowRun,
    StateDetails,
    TaskRun,
    TaskRunPolicy,
    TaskRunResult,
)
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import Event, emit_event
from prefect.logging.loggers import flow_run_logger, task_run_logger
from prefect.states import Completed, Failed, Running, State
from prefect.utilities.engine import emit_task_run_state_change_event
from prefect_dbt.utilities import format_asset_name, format_resource_id

# dbt's node statuses (dbt.contracts.results): what fails a node's task run, what means dbt
# did not run it.
FAILED = frozenset({"error", "fail", "runtime error"})
SKIPPED = frozenset({"skipped"})
MATERIALIZED = frozenset({"model", "seed", "snapshot"})
LEVELS = {"info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
RUNNING_AFTER = 1.0
"""Seconds a node runs before the server hears it is running; most nodes end sooner and are
sent once, in their final state: each state event costs the server ~15 ms of CPU (SQLite), which
on a small machine it takes from the build."""
JOIN_TIMEOUT = 120.0
"""Seconds the build waits for its nodes' reports once dbt has returned."""
TASK_KEY = "dbt-node"
"""One task for every node, as prefect-dbt's (whose nodes all run one function)."""


def _utc(iso: str) -> datetime:
    """dbt's node timestamps: naive ISO in UTC; empty before dbt set them."""
    if not iso:
        return datetime.now(UTC)
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


@dataclass
class _Node:
    unique_id: str
    resource_type: str
    name: str
    relation: str
    started_at: str
    task_run: TaskRun | None = None
    last_event: Event | None = None
    logger: logging.LoggerAdapter[logging.Logger] | None = None
    upstream: list[str] = field(default_factory=list)
    """What it depends on, through ephemeral models (manifest ids)."""


class NodeReporter:
    """Reports one dbt invocation's nodes as task runs of the current flow run.

    Use as a context manager around the invocation, with ``callback`` among dbt's callbacks;
    leaving it waits until every event is handed to Prefect's events worker (and every line to
    its log worker), which send them on. ``failures`` holds what could not be reported: the
    build does not depend on it.
    """

    def __init__(self, flow_run: FlowRun, manifest: Path, adapter_type: str = "duckdb") -> None:
        self._flow_run = flow_run
        self._manifest_path = manifest
        self._manifest: dict[str, dict[str, Any]] | None = None
        """Every source, node and unit test of the manifest by id, read on the first node."""
        self._adapter_type = adapter_type
        self._parent = TaskRunContext.get()
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._nodes: dict[str, _Node] = {}
        self._unannounced: dict[str, float] = {}
        """Task runs the server has not heard of yet, and when to say they are running."""
        self._flow_logger = flow_run_logger(flow_run)
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=self._context.run, args=(self._work,), name="dbt node reporter", daemon=True
        )
        self.failures: list[str] = []

    @classmethod
    def in_flow(cls, manifest: Path) -> NodeReporter | None:
        """A reporter for the current flow run; None outside one."""
        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return None
        return cls(context.flow_run, manifest)

    def __enter__(self) -> NodeReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            self.failures.append(f"the reporter had not finished after {JOIN_TIMEOUT} s")

    # --- in dbt's threads: read the event, queue it ---------------------------------------

    def callback(self, event: Any) -> None:
        """dbt's event callback (`dbtRunner(callbacks=[…])`), called in dbt's threads for every
        event: keeps only what is reported, as plain values. It never raises: an error here
        would be the node's."""
        try:
            self._read(event)
        except Exception as exc:
            name = getattr(getattr(event, "info", None), "name", "?")
            self.failures.append(f"{name}: {exc!r}")

    def _read(self, event: Any) -> None:
        info = event.info
        name = info.name
        if name == "NodeStart" or name == "NodeFinished":
            node = event.data.node_info
            if name == "NodeStart":
                if node.materialized == "ephemeral":  # compiled into its dependents, never run
                    return
                self._queue.put(
                    (
                        name,
                        node.unique_id,
                        node.resource_type,
                        node.node_name,
                        node.node_relation.relation_name,
                        node.node_started_at,
                    )
                )
            else:
                result = event.data.run_result
                self._queue.put(
                    (name, node.unique_id, node.node_status, node.node_finished_at, result.message)
                )
            return
        level = LEVELS.get(info.level)
        if level is None or not info.msg.strip():
            return
        node = getattr(event.data, "node_info", None)
        self._queue.put(("log", name, level, info.msg, node.unique_id if node is not None else ""))

    # --- in the reporter's thread ---------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._until_next_announcement())
            except queue.Empty:
                item = ()
            if item is None:
                return
            try:
                if item and item[0] == "NodeStart":
                    self._started(*item[1:])
                elif item and item[0] == "NodeFinished":
                    self._finished(*item[1:])
                elif item:
                    self._line(*item[1:])
                if self._until_next_announcement() == 0.0:
                    self._announce_running()
            except Exception as exc:  # reporting must not fail the build; say what it missed
                self.failures.append(f"{item[:2] or 'Running'}: {exc!r}")

    def _started(
        self, unique_id: str, resource_type: str, name: str, relation: str, started_at: str
    ) -> None:
        self._nodes[unique_id] = _Node(unique_id, resource_type, name, relation, started_at)

    def _line(self, event_name: str, level: int, message: str, unique_id: str) -> None:
        node = self._nodes.get(unique_id)
        if node is None or event_name == "SkippingDetails":
            self._flow_logger.log(level, message)
            return
        self._run(node).log(level, message)

    def _finished(self, unique_id: str, status: str, finished_at: str, message: str) -> None:
        node = self._nodes.get(unique_id)
        if node is None or (status in SKIPPED and node.task_run is None):
            return
        self._run(node)
        assert node.task_run is not None
        final: State[Any]
        if status in FAILED:
            final = Failed(message=f"dbt {status}: {message}" if message else f"dbt {status}")
        else:
            final = Completed(message=message or None)
        final.timestamp = max(_utc(finished_at), node.task_run.start_time)  # type: ignore[type-var]
        self._unannounced.pop(unique_id, None)
        self._set_state(node, final)
        if node.resource_type in MATERIALIZED and node.relation and status not in SKIPPED:
            self._materialized(node, succeeded=status not in FAILED)

    def _run(self, node: _Node) -> logging.LoggerAdapter[logging.Logger]:
        """The node's task run, made on its first use, from dbt's start time; the server hears
        of it when it ends or, if it runs longer than ``RUNNING_AFTER``, when that has passed."""
        if node.logger is not None:
            return node.logger
        task_run_id = uuid7()
        started = _utc(node.started_at)
        node.upstream = self._upstream(node.unique_id)
        inputs: dict[str, list[Any]] = {
            "wait_for": [
                TaskRunResult(id=upstream.task_run.id)
                for upstream_id in node.upstream
                if (upstream := self._nodes.get(upstream_id)) is not None
                and upstream.task_run is not None
            ]
        }
        if self._parent is not None and self._parent.task_run is not None:
            inputs["__parents__"] = [TaskRunResult(id=self._parent.task_run.id)]
        node.task_run = TaskRun(
            id=task_run_id,
            name=f"{node.resource_type} {node.name}",
            flow_run_id=self._flow_run.id,
            task_key=TASK_KEY,
            dynamic_key=f"{node.unique_id}-{task_run_id.hex[-8:]}",
            empirical_policy=TaskRunPolicy(),
            task_inputs=inputs,
            state=Running(
                timestamp=started,
                state_details=StateDetails(task_run_id=task_run_id, flow_run_id=self._flow_run.id),
            ),
            expected_start_time=started,
            start_time=started,
            run_count=1,
        )
        self._unannounced[node.unique_id] = time.monotonic() + RUNNING_AFTER
        node.logger = task_run_logger(node.task_run, flow_run=self._flow_run)
        return node.logger

    def _until_next_announcement(self) -> float | None:
        if not self._unannounced:
            return None
        return max(0.0, min(self._unannounced.values()) - time.monotonic())

    def _announce_running(self) -> None:
        """Tell the server of the nodes running for longer than ``RUNNING_AFTER``."""
        now = time.monotonic()
        for unique_id, due in list(self._unannounced.items()):
            if due <= now:
                del self._unannounced[unique_id]
                node = self._nodes[unique_id]
                assert node.task_run is not None and node.task_run.state is not None
                node.last_event = emit_task_run_state_change_event(
                    task_run=node.task_run, initial_state=None, validated_state=node.task_run.state
                )

    def _set_state(self, node: _Node, state: State[Any]) -> None:
        """As the task engine's ``set_state``: the run's denormalised fields, then the event
        (from no state if the server has not heard of the run yet)."""
        task_run = node.task_run
        assert task_run is not None and task_run.state is not None
        previous = task_run.state
        state.state_details = StateDetails(task_run_id=task_run.id, flow_run_id=self._flow_run.id)
        task_run.state = state
        task_run.state_id, task_run.state_type, task_run.state_name = (
            state.id,
            state.type,
            state.name,
        )
        task_run.total_run_time += state.timestamp - previous.timestamp
        task_run.end_time = state.timestamp
        node.last_event = emit_task_run_state_change_event(
            task_run=task_run,
            initial_state=previous if node.last_event is not None else None,
            validated_state=state,
            follows=node.last_event,
        )

    def _upstream(self, unique_id: str) -> list[str]:
        """The nodes this one depends on, through ephemeral models, from the manifest dbt
        wrote when it parsed the project (read once, on the first node)."""
        if self._manifest is None:
            try:
                manifest = json.loads(self._manifest_path.read_text())
            except (OSError, ValueError) as exc:
                self.failures.append(f"{self._manifest_path}: {exc!r} (no upstream links)")
                manifest = {}
            self._manifest = {
                **manifest.get("sources", {}),
                **manifest.get("nodes", {}),
                **manifest.get("unit_tests", {}),
            }
        found: list[str] = []
        pending = list(self._manifest.get(unique_id, {}).get("depends_on", {}).get("nodes", []))
        seen: set[str] = set()
        while pending:
            upstream = pending.pop(0)
            if upstream in seen:
                continue
            seen.add(upstream)
            entry = self._manifest.get(upstream, {})
            if entry.get("config", {}).get("materialized") == "ephemeral":
                pending += entry.get("depends_on", {}).get("nodes", [])
            else:
                found.append(upstream)
        return found

    def _materialized(self, node: _Node, *, succeeded: bool) -> None:
        """The asset events prefect-dbt's materializing tasks emit: each upstream relation
        referenced, then this node's relation materialized (or failed) by dbt."""
        assert node.task_run is not None and self._manifest is not None
        upstream = [
            format_resource_id(self._adapter_type, relation)
            for upstream_id in node.upstream
            if (relation := self._manifest.get(upstream_id, {}).get("relation_name"))
        ]
        run = {
            "prefect.resource.id": f"prefect.task-run.{node.task_run.id}",
            "prefect.resource.role": "task-run",
            "prefect.resource.name": node.task_run.name,
        }
        for key in upstream:
            emit_event(
                event="prefect.asset.referenced",
                resource={"prefect.resource.id": key},
                related=[run],
            )
        emit_event(
            event=f"prefect.asset.materialization.{'succeeded' if succeeded else 'failed'}",
            resource={
                "prefect.resource.id": format_resource_id(self._adapter_type, node.relation),
                "prefect.resource.name": format_asset_name(node.relation),
            },
            related=[
                *(
                    {"prefect.resource.id": key, "prefect.resource.role": "asset"}
                    for key in upstream
                ),
                {"prefect.resource.id": "dbt", "prefect.resource.role": "asset-materialized-by"},
                run,
            ],
        )
