"""The project loads: every flow imports, every deployment entrypoint resolves, dbt parses."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.flows import Flow, load_flow_from_entrypoint

from tributary.settings import DBT_PROJECT_DIR, PROJECT_ROOT

FLOW_FILES = sorted((PROJECT_ROOT / "flows").glob("*.py"))
DEPLOYMENTS = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("path", FLOW_FILES, ids=lambda p: p.name)
def test_every_flow_module_imports(path: Path) -> None:
    importlib.import_module(f"flows.{path.stem}")


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_every_deployment_entrypoint_resolves_to_a_flow(deployment: dict) -> None:
    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment["entrypoint"]))
    assert isinstance(flow, Flow)
    assert deployment["entrypoint"].startswith("flows/")


def test_dbt_parses(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dbt"),
            "parse",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(tmp_path / "target"),
            "--log-path",
            str(tmp_path / "logs"),
        ],
        capture_output=True,
        text=True,
        env={"TRIBUTARY_WAREHOUSE_PATH": str(tmp_path / "w.duckdb"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "target" / "manifest.json").is_file()


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_every_deployment_has_valid_parameters(deployment: dict) -> None:
    """Defaults in prefect.yaml pass the flow's own parameter model, validators included."""
    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment["entrypoint"]))
    flow.validate_parameters(deployment.get("parameters") or {})


def test_automations_file_is_valid() -> None:
    from tributary.server import load_automations

    automations = load_automations("00000000-0000-0000-0000-000000000001", stale_after_hours=26)
    assert {a.name for a in automations} == {"tributary-run-crashed", "tributary-elt-stale"}
    stale = next(a for a in automations if a.name == "tributary-elt-stale")
    assert stale.trigger.within.total_seconds() == 26 * 3600
