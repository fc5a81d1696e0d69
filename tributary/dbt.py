"""dbt through prefect-dbt's PrefectDbtRunner: one Prefect task per dbt node inside a flow."""

from __future__ import annotations

import contextvars
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID

import prefect_dbt
import yaml
from prefect import Task
from prefect.context import SettingsContext, hydrated_context
from prefect.logging.loggers import PrefectLogAdapter
from prefect.task_engine import run_task_sync
from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings
from prefect_dbt.core._tracker import NodeTaskTracker
from prefect_dbt.core.runner import FAILURE_MSG, FAILURE_STATUSES

from tributary.lock import warehouse_lock
from tributary.settings import DBT_PROJECT_DIR, Settings
from tributary.warehouse import check_warehouse

# Node statuses of a build readers may see: anything else (error, fail, skipped, runtime
# error) means some model is missing, stale or untested.
PASSED_STATUSES = frozenset({"success", "pass", "warn"})
BUILT_TYPES = frozenset({"model", "seed", "snapshot"})


@dataclass(frozen=True)
class NodeResult:
    unique_id: str
    resource_type: str
    status: str
    seconds: float
    message: str | None = None
    relation: str | None = None
    """`schema.name` of what a model, seed or snapshot builds."""


@dataclass(frozen=True)
class DbtSummary:
    command: str
    nodes: list[NodeResult] = field(default_factory=list)
    invocation_id: str | None = None
    resumed: list[NodeResult] = field(default_factory=list)
    """Nodes an earlier, failed attempt of the same run passed, which `dbt retry` did not run
    again: with ``nodes``, they are what the whole command built."""

    @property
    def passed(self) -> bool:
        return all(node.status in PASSED_STATUSES for node in self.nodes)

    def built(self, schemas: tuple[str, ...]) -> set[str]:
        """`schema.name` of every relation in these schemas this command built."""
        return {
            node.relation
            for node in [*self.resumed, *self.nodes]
            if node.resource_type in BUILT_TYPES
            and node.status == "success"
            and node.relation is not None
            and node.relation.split(".", 1)[0] in schemas
        }

    def count(self, resource_types: set[str], statuses: set[str]) -> int:
        return sum(
            1
            for node in self.nodes
            if node.resource_type in resource_types and node.status in statuses
        )

    @property
    def models_built(self) -> int:
        return self.count({"model", "seed", "snapshot"}, {"success"})

    @property
    def tests_passed(self) -> int:
        return self.count({"test", "unit_test"}, {"pass"})

    @property
    def statuses(self) -> Counter[str]:
        return Counter(node.status for node in self.nodes)


def dbt_environment(settings: Settings) -> dict[str, str]:
    """The variables ``profiles.yml`` reads, so dbt writes the warehouse dlt loaded (the
    ``prod`` target; at a shell dbt's default target is an analyst's ``dev``)."""
    return {
        "TRIBUTARY_DBT_TARGET": "prod",
        "TRIBUTARY_WAREHOUSE_PATH": str(settings.warehouse),
        "TRIBUTARY_DBT_THREADS": str(settings.dbt_threads),
    }


def release_duckdb() -> None:
    """Close the DuckDB handle dbt-duckdb keeps open in this process after an in-process run
    (dbt-core#11980), so the next writer — or a read-only reader — can open the file."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    with DuckDBConnectionManager._LOCK:
        environment = DuckDBConnectionManager._ENV
        if environment is not None:
            environment.close()
        DuckDBConnectionManager.close_all_connections()


class DbtFailed(ValueError):
    """dbt ran and some nodes failed; ``summary`` holds every node's status."""

    def __init__(self, message: str, summary: DbtSummary) -> None:
        super().__init__(message)
        self.summary = summary


def _failure_message(command: list[str], result: Any) -> str:
    """prefect-dbt's own wording (as with ``raise_on_failure``), which alerts quote."""
    failures = [
        FAILURE_MSG.format(
            resource_type=run.node.resource_type.title(),
            resource_name=run.node.name,
            status=run.status,
            message=run.message,
        )
        for run in result.results
        if run.status in FAILURE_STATUSES
    ]
    return (
        f"Failures detected during invocation of dbt command '{' '.join(command)}':\n"
        + os.linesep.join(failures)
    )


def _summarise(command: list[str], result: Any) -> DbtSummary:
    nodes = [
        NodeResult(
            unique_id=run.node.unique_id,
            resource_type=str(run.node.resource_type),
            status=str(run.status),
            seconds=float(run.execution_time or 0.0),
            message=run.message,
            relation=f"{run.node.schema}.{run.node.alias}"
            if str(run.node.resource_type) in BUILT_TYPES
            else None,
        )
        for run in getattr(result, "results", None) or []
    ]
    return DbtSummary(command=" ".join(command), nodes=nodes, invocation_id=last_invocation_id())


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set variables for the duration of one in-process dbt run, then put back what was."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_args(select: list[str], exclude: list[str], *, full_refresh: bool = False) -> list[str]:
    """`dbt build` arguments; empty ``select`` builds everything."""
    args = ["build"]
    if select:
        args += ["--select", *select]
    if exclude:
        args += ["--exclude", *exclude]
    if full_refresh:
        args.append("--full-refresh")
    return args


def dbt_sources(project_dir: Path) -> set[str]:
    """The names of the sources the dbt project declares (its ``sources:`` YAML), read without
    parsing the project: a loaded source that is not among them has no models to build."""
    names: set[str] = set()
    for path in sorted((project_dir / "models").rglob("*.yml")):
        document = yaml.safe_load(path.read_text()) or {}
        if isinstance(document, dict):
            names |= {
                source["name"]
                for source in document.get("sources") or []
                if isinstance(source, dict) and "name" in source
            }
    return names


def downstream_of(sources: Sequence[str], project_dir: Path) -> list[str]:
    """``--select`` for the models downstream of the loaded ``sources`` that the project
    knows (``source:<name>+``); empty when it knows none of them."""
    known = dbt_sources(project_dir)
    return [f"source:{name}+" for name in sources if name in known]


# prefect-dbt's runner reports each dbt node as a task run from a thread of its own, which
# starts with an empty context and rebuilds the flow's from `serialize_context()` twice (in its
# own thread, then in the task engine). As shipped, every node thus builds Prefect's `Settings`
# twice from scratch (each nested model reads the environment, prefect.toml, pyproject.toml and
# the profiles file, behind one lock: ~0.1 s of CPU each) and three API clients (each loads the
# CA bundle: ~0.05 s) — for this project's 82 nodes 171 settings and 253 clients, 30+ s of CPU,
# which made dbt in a flow 2-5x a plain `dbt build`. `_NodeTaskRunner` hands the node threads
# the flow's own settings objects and starts them (and the runner's callback thread) in a copy
# of the flow's context, as Prefect's ThreadPoolTaskRunner does, so they share its client. It
# overrides private methods of the release named here only, and refuses any other. Upstream
# issue to file (PrefectHQ/prefect, prefect-dbt): "PrefectDbtRunner: node task threads rebuild
# Settings and API clients from serialize_context(); start them in contextvars.copy_context()".
PREFECT_DBT_CHECKED = "0.7.25"


class _NodeThreads(NodeTaskTracker):
    """prefect-dbt's per-node bookkeeping, its threads started in a copy of ``parent`` (the
    flow's context: settings, API client) and kept, to be joined."""

    def __init__(self, parent: contextvars.Context) -> None:
        super().__init__()
        self._parent = parent
        self.threads: list[threading.Thread] = []

    def get_task_logger(
        self,
        node_id: str,
        flow_run: dict[str, Any] | None = None,
        flow: Any = None,
        **kwargs: Any,
    ) -> PrefectLogAdapter:
        """Upstream's, named after the node even before its task run is (dbt's START line
        comes first), so the console says ``Task run 'model fct_orders'``, not ``None``."""
        logger = super().get_task_logger(node_id, flow_run, flow, **kwargs)
        if logger.extra is not None and logger.extra.get("task_run_name") is None:
            # <kind>.<project>.<name>[.<hash>]; unit tests <kind>.<project>.<model>.<name>
            kind, _, rest = node_id.partition(".")
            parts = rest.split(".")
            name = parts[2] if kind == "unit_test" and len(parts) > 2 else parts[1]
            logger.extra = {**logger.extra, "task_run_name": f"{kind} {name}"}
        return logger

    def run_task_in_thread(
        self,
        node_id: str,
        task: Task[Any, Any],
        task_run_id: UUID,
        parameters: dict[str, Any],
        context: dict[str, Any],
    ) -> None:
        """As upstream's (wait for the upstream nodes' task runs, then run this one), in a
        thread that starts in the flow's context."""

        def run_task() -> None:
            with hydrated_context(context):
                upstream = [
                    self.get_task_result(node) for node in self.get_node_dependencies(node_id)
                ]
                state = run_task_sync(
                    task,
                    task_run_id=task_run_id,
                    parameters=parameters,
                    wait_for=[state for state in upstream if state],
                    context=context,
                    return_type="state",
                )
                self.set_task_result(node_id, state)

        thread = threading.Thread(
            target=self._parent.copy().run,
            args=(run_task,),
            name=f"dbt node {node_id}",
            daemon=True,
        )
        self.threads.append(thread)
        thread.start()


class _NodeTaskRunner(PrefectDbtRunner):
    """``PrefectDbtRunner`` whose node task runs reuse the flow's settings and client."""

    def __init__(self, **kwargs: Any) -> None:
        if prefect_dbt.__version__ != PREFECT_DBT_CHECKED:
            raise RuntimeError(
                f"prefect-dbt {prefect_dbt.__version__} is installed; tributary.dbt overrides "
                f"private methods of PrefectDbtRunner and NodeTaskTracker as of "
                f"{PREFECT_DBT_CHECKED} (_create_unified_callback, _callback_worker, "
                "run_task_in_thread). Check them against the new release — or drop them if "
                "upstream stopped rebuilding settings and clients per node — then update "
                "PREFECT_DBT_CHECKED."
            )
        super().__init__(**kwargs)
        self.nodes = _NodeThreads(contextvars.Context())
        self._worker_context = contextvars.Context()

    def _create_unified_callback(
        self, task_state: NodeTaskTracker, log_level: Any, context: dict[str, Any], **kwargs: Any
    ) -> Any:
        # Called by `invoke`, in the flow's thread; `task_state` is a fresh tracker that only
        # the callback uses, so ours replaces it.
        self.nodes = _NodeThreads(contextvars.copy_context())
        self._worker_context = contextvars.copy_context()
        return super()._create_unified_callback(
            self.nodes, log_level, with_live_settings(context), **kwargs
        )

    def _callback_worker(self) -> None:
        """Upstream's event loop (logging, starting node task runs) in the flow's context."""
        self._worker_context.run(super()._callback_worker)


def with_live_settings(context: dict[str, Any]) -> dict[str, Any]:
    """A serialised Prefect context (``serialize_context()``) holding the current ``Profile``
    and ``Settings`` objects rather than their dumps, so that hydrating it in this process
    (``hydrated_context``) takes them as they are instead of building them again. (The rest
    stays dumped: prefect-dbt reads the flow run from it as a dict.)"""
    current = SettingsContext.get()
    if current is None or not context.get("settings_context"):
        return context
    return {
        **context,
        "settings_context": {"profile": current.profile, "settings": current.settings},
    }


def run_dbt(args: list[str], settings: Settings) -> DbtSummary:
    """Invoke dbt in-process against the settings' warehouse (the ``prod`` target), holding
    the warehouse lock; raises ``DbtFailed`` naming every failed node (and holding every
    node's status)."""
    with warehouse_lock(settings):
        check_warehouse(settings)
        return invoke_dbt(args, dbt_environment(settings))


def invoke_dbt(args: list[str], environment: dict[str, str]) -> DbtSummary:
    """Invoke dbt in-process with ``environment`` set (the variables ``profiles.yml`` reads),
    one Prefect task per node inside a flow; takes no lock (``run_dbt`` does, for production).
    Raises ``DbtFailed`` naming every failed node."""
    runner = _NodeTaskRunner(
        settings=PrefectDbtSettings(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR),
        raise_on_failure=False,
    )
    with _environment(environment):
        try:
            result = runner.invoke(args)
        finally:
            release_duckdb()
            _join_node_task_threads(runner.nodes.threads)
    summary = _summarise(args, result.result)
    if not result.success:
        raise DbtFailed(_failure_message(args, result.result), summary)
    return summary


def _join_node_task_threads(threads: list[threading.Thread], timeout: float = 120) -> None:
    """Wait for the threads in which prefect-dbt records each node's task run.

    The runner starts one daemon thread per node and returns without joining them, so
    without this the flow finishes while node task runs are still being reported, and the
    interpreter aborts at exit ("FATAL: exception not rethrown") when it stops them mid-call.
    """
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


RUN_RESULTS = DBT_PROJECT_DIR / "target" / "run_results.json"


def last_invocation_id() -> str | None:
    """The invocation id of the last dbt command run from this project (any process)."""
    try:
        return json.loads(RUN_RESULTS.read_text())["metadata"]["invocation_id"]
    except (OSError, ValueError, KeyError):
        return None


def run_dbt_resumable(args: list[str], settings: Settings, run_key: str) -> DbtSummary:
    """``run_dbt``, but when the same run (``run_key``: the flow run) failed in dbt before,
    ``dbt retry`` picks up from the failed nodes instead of building everything again.

    The failed attempt leaves a marker naming its dbt invocation; the retry happens only while
    dbt's ``run_results.json`` is still that invocation's (no other build ran in between);
    otherwise the whole command runs again, which is always correct, only slower.
    """
    marker = settings.data_dir / "dbt-retry" / f"{run_key}.json"
    command = args
    resumed: list[NodeResult] = []
    if marker.is_file():
        failed = json.loads(marker.read_text())
        if failed["invocation_id"] == last_invocation_id() and failed["args"] == args:
            command = ["retry"]
            resumed = [NodeResult(**node) for node in failed.get("passed", [])]
    try:
        summary = replace(run_dbt(command, settings), resumed=resumed)
    except Exception as exc:
        invocation = last_invocation_id()
        if invocation is not None:
            passed = [
                asdict(node)
                for node in [*resumed, *(exc.summary.nodes if isinstance(exc, DbtFailed) else [])]
                if node.status in PASSED_STATUSES
            ]
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(
                json.dumps({"invocation_id": invocation, "args": args, "passed": passed})
            )
        raise
    marker.unlink(missing_ok=True)
    return summary
