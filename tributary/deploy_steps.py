"""Prefect deployment steps of tributary's own (``prefect.yaml`` names them by import path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tributary.settings import PROJECT_ROOT, ConfigurationError

# What a run imports from the folder it runs in rather than from the installed checkout
PACKAGES = ("tributary", "ingestion", "flows", "demo")


def _given(value: str | None) -> bool:
    # Prefect leaves an unset variable's placeholder as it is, or renders it empty
    return bool(value and value.strip() and not value.startswith("{{"))


def set_project_directory(
    directory: str | None = None, release: str | None = None
) -> dict[str, str]:
    """Pull step: run the flow in the release folder ``release`` (the Prefect variable
    ``tributary_release``, set by ``tributary release``), else in the tributary checkout
    ``directory`` (``TRIBUTARY_PROJECT_DIR``), else in the checkout this environment was
    installed from, whatever folder the worker gives the run. The run then imports tributary's
    own packages from that folder, not from the installed checkout, so what runs is the code
    of the folder, all of it. A folder that is not a tributary checkout fails here, naming the
    setting, instead of as a missing ``flows/elt.py`` later."""
    if _given(release):
        setting, path = "the Prefect variable tributary_release", Path(str(release))
    elif _given(directory):
        setting, path = "TRIBUTARY_PROJECT_DIR", Path(str(directory)).expanduser()
    else:
        setting, path = "the installation", PROJECT_ROOT
    if not (path / "prefect.yaml").is_file() or not (path / "flows").is_dir():
        raise ConfigurationError(
            f"TRIBUTARY_PROJECT_DIR: {path} (from {setting}) is not a tributary checkout: it "
            "has no prefect.yaml and flows/ folder; set TRIBUTARY_PROJECT_DIR on the worker "
            "(or run `tributary release`) to the folder holding them"
        )
    os.chdir(path)
    if path.resolve() != PROJECT_ROOT:
        # Loaded from the installed checkout to run this step: load them again from here.
        for name in [m for m in sys.modules if m.split(".", 1)[0] in PACKAGES]:
            del sys.modules[name]
        sys.path.insert(0, str(path))
    return {"directory": str(path)}
