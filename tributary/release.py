"""Releases: what the deployments run is a pinned copy of a commit, not a working copy.

``tributary release [--ref REF]`` writes the commit's files (``git archive``: nothing
uncommitted, nothing ignored) into ``<data_dir>/releases/<commit>/`` and, against a Prefect
server, sets the variable ``tributary_release`` to that folder. The deployments' pull step
(``tributary/deploy_steps.py``) runs every flow in the folder the variable names, so an edit in
the checkout a worker was started from — an analyst's uncommitted model — never reaches a
scheduled run; the next release does, and setting the variable back to an earlier folder rolls
back. The release keeps the data where it was: its ``.env`` names the data folder of the
checkout it came from (the worker's own ``TRIBUTARY_DATA_DIR`` wins over it). It runs on the
environment the worker has (``.venv``): a release that changes dependencies needs ``make
setup`` there first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tributary.settings import PROJECT_ROOT, ConfigurationError, Settings

VARIABLE = "tributary_release"
RECORD = "RELEASE.json"


@dataclass(frozen=True)
class Release:
    folder: Path
    commit: str
    ref: str
    made: bool
    """False when the folder was already there (a release is written once)."""


def _git(*args: str, source: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, check=True
        )
    except FileNotFoundError as exc:
        raise ConfigurationError("tributary release needs git on the PATH") from exc
    except subprocess.CalledProcessError as exc:
        raise ConfigurationError(
            f"git {' '.join(args)} in {source}: {exc.stderr.strip() or exc.returncode}"
        ) from exc
    return done.stdout


def make_release(settings: Settings, ref: str = "HEAD", source: Path = PROJECT_ROOT) -> Release:
    """The commit ``ref`` names in the checkout ``source``, as a folder of its own."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}", source=source).strip()
    releases = (settings.data_dir / "releases").resolve()
    folder = releases / commit[:12]
    if (folder / RECORD).is_file():
        return Release(folder, commit, ref, made=False)
    releases.mkdir(parents=True, exist_ok=True)
    partial = releases / f".{commit[:12]}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    archive = subprocess.Popen(
        ["git", "-C", str(source), "archive", "--format=tar", commit], stdout=subprocess.PIPE
    )
    extracted = subprocess.run(["tar", "-x", "-C", str(partial)], stdin=archive.stdout, check=False)
    if archive.stdout is not None:
        archive.stdout.close()
    if archive.wait() != 0 or extracted.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigurationError(f"git archive of {commit} from {source} failed")
    # The data stays with the checkout the release came from.
    (partial / ".env").write_text(f"TRIBUTARY_DATA_DIR={settings.data_dir.resolve()}\n")
    (partial / RECORD).write_text(
        json.dumps(
            {"commit": commit, "ref": ref, "source": str(source), "made_at": str(datetime.now(UTC))}
        )
    )
    partial.rename(folder)
    return Release(folder, commit, ref, made=True)


def point_deployments(release: Release) -> None:
    """Set the Prefect variable the deployments' pull step reads: their next runs use it."""
    from prefect.variables import Variable

    Variable.set(VARIABLE, str(release.folder), overwrite=True)
