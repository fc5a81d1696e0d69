"""Prefect deployment steps of tributary's own (``prefect.yaml`` names them by import path)."""

from __future__ import annotations

import os
from pathlib import Path

from tributary.settings import PROJECT_ROOT, ConfigurationError


def set_project_directory(directory: str | None = None) -> dict[str, str]:
    """Pull step: run the flow in the tributary checkout ``directory`` (``prefect.yaml`` passes
    ``TRIBUTARY_PROJECT_DIR``), or — when that is unset — in the checkout this environment was
    installed from, whatever folder the worker gives the run. A folder that is not a tributary
    checkout fails here, naming the setting, instead of as a missing ``flows/elt.py`` later."""
    # Prefect leaves an unset variable's placeholder as it is, or renders it empty
    given = bool(directory and directory.strip() and not directory.startswith("{{"))
    path = Path(directory).expanduser() if given and directory else PROJECT_ROOT
    if not (path / "prefect.yaml").is_file() or not (path / "flows").is_dir():
        source = "TRIBUTARY_PROJECT_DIR" if given else "the installation"
        raise ConfigurationError(
            f"TRIBUTARY_PROJECT_DIR: {path} (from {source}) is not a tributary checkout: it "
            "has no prefect.yaml and flows/ folder; set TRIBUTARY_PROJECT_DIR on the worker "
            "to the folder holding them"
        )
    os.chdir(path)
    return {"directory": str(path)}
