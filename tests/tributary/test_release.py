"""`tributary release`: a commit's files, exactly, in a folder of their own, with the data left
where it is; written once; a ref that names no commit is refused naming it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tributary.release import RECORD, make_release
from tributary.settings import PROJECT_ROOT, ConfigurationError, Settings


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


def test_a_release_holds_the_commit_exactly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    release = make_release(settings, "HEAD")
    commit = _git("rev-parse", "HEAD").strip()
    assert (release.commit, release.made) == (commit, True)
    assert release.folder == (tmp_path / "data" / "releases" / commit[:12]).resolve()

    files = {
        str(path.relative_to(release.folder))
        for path in release.folder.rglob("*")
        if path.is_file()
    }
    assert files == set(_git("ls-tree", "-r", "--name-only", "HEAD").split()) | {".env", RECORD}
    for name in ("flows/elt.py", "dbt_project/models/marts/fct_orders.sql", "sources.yml"):
        assert (release.folder / name).read_text() == _git("show", f"HEAD:{name}")
    assert (release.folder / ".env").read_text() == (
        f"TRIBUTARY_DATA_DIR={(tmp_path / 'data').resolve()}\n"
    )
    assert json.loads((release.folder / RECORD).read_text())["commit"] == commit
    assert not list(release.folder.parent.glob(".*.partial"))

    again = make_release(settings, commit)
    assert (again.folder, again.made) == (release.folder, False)


def test_a_ref_that_names_no_commit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="git rev-parse --verify no-such-ref"):
        make_release(Settings(data_dir=tmp_path), "no-such-ref")
    assert not (tmp_path / "releases").exists()
