"""dbt in-process against the warehouse; inside a flow, one Prefect task run per dbt node."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from dbt.cli.main import dbtRunner
from prefect import get_run_logger

from tributary.dbt_nodes import FAILED, NodeReporter
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


# prefect-dbt's wording of a failed node (its ``raise_on_failure``), which alerts quote.
FAILURE_MSG = '{resource_type} {resource_name} {status}ed with message: "{message}"'


def _failure_message(command: list[str], result: Any) -> str:
    failures = [
        FAILURE_MSG.format(
            resource_type=run.node.resource_type.title(),
            resource_name=run.node.name,
            status=run.status,
            message=run.message,
        )
        for run in result.results
        if str(run.status) in FAILED
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


def run_dbt(args: list[str], settings: Settings) -> DbtSummary:
    """Invoke dbt in-process against the settings' warehouse (the ``prod`` target), holding
    the warehouse lock; raises ``DbtFailed`` naming every failed node (and holding every
    node's status)."""
    with warehouse_lock(settings):
        check_warehouse(settings)
        return invoke_dbt(args, dbt_environment(settings))


def _target_path(args: list[str]) -> Path:
    """Where this invocation writes its manifest: ``--target-path`` (a dev build's own folder),
    relative to the project as dbt reads it, or the project's ``target``."""
    if "--target-path" in args[:-1]:
        path = Path(args[args.index("--target-path") + 1])
        return path if path.is_absolute() else DBT_PROJECT_DIR / path
    return DBT_PROJECT_DIR / "target"


def invoke_dbt(args: list[str], environment: dict[str, str]) -> DbtSummary:
    """Invoke dbt in-process with ``environment`` set (the variables ``profiles.yml`` reads);
    inside a flow every node is a task run of it (``tributary.dbt_nodes``) and dbt's lines go to
    Prefect's logs, elsewhere to the console as dbt prints them. Takes no lock (``run_dbt``
    does, for production). Raises ``DbtFailed`` naming every failed node."""
    command = [*args, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
    reporter = NodeReporter.in_flow(_target_path(args) / "manifest.json")
    with _environment(environment):
        try:
            if reporter is None:
                result = dbtRunner().invoke(command)
            else:
                with reporter:
                    result = dbtRunner(callbacks=[reporter.callback]).invoke(
                        [*command, "--log-level", "none", "--log-level-file", "info"]
                    )
        finally:
            release_duckdb()
    if reporter is not None and reporter.failures:
        get_run_logger().warning(
            "%d dbt node events were not reported to Prefect (the build is not affected): %s",
            len(reporter.failures),
            "; ".join(reporter.failures[:5]),
        )
    if result.exception is not None:
        raise ValueError(f"Failed to invoke dbt command '{' '.join(args)}': {result.exception}")
    summary = _summarise(args, result.result)
    if not result.success:
        raise DbtFailed(_failure_message(args, result.result), summary)
    return summary


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
