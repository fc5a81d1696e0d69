"""The deployments' pull step: the checkout TRIBUTARY_PROJECT_DIR names, or — unset, whatever
Prefect renders for it — the one this environment was installed from (the deploy tests run a
real worker without the variable); anything else fails naming the setting."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tributary.deploy_steps import set_project_directory
from tributary.settings import PROJECT_ROOT, ConfigurationError


@pytest.fixture(autouse=True)
def _keep_process() -> Iterator[None]:
    """The step changes the process (folder, imports); the tests after these must not see it."""
    cwd, path, modules = Path.cwd(), list(sys.path), dict(sys.modules)
    yield
    os.chdir(cwd)
    sys.path[:] = path
    sys.modules.clear()
    sys.modules.update(modules)


@pytest.mark.parametrize("rendered", [None, "", "  ", "{{ $TRIBUTARY_PROJECT_DIR }}"])
def test_unset_means_the_installed_checkout(rendered: str | None, tmp_path: Path) -> None:
    os.chdir(tmp_path)  # a process worker starts each run in a temporary folder
    assert set_project_directory(rendered) == {"directory": str(PROJECT_ROOT)}
    assert Path.cwd() == PROJECT_ROOT
    assert (Path.cwd() / "flows" / "elt.py").is_file()


def _checkout(folder: Path, marker: str) -> Path:
    """A minimal checkout whose `tributary` package says which one it is."""
    (folder / "flows").mkdir(parents=True)
    (folder / "prefect.yaml").write_text("name: tributary\n")
    (folder / "tributary").mkdir()
    (folder / "tributary" / "__init__.py").write_text(f"WHICH = {marker!r}\n")
    return folder


def test_a_named_checkout_is_used_and_its_code_imported(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "checkout", "named checkout")
    assert set_project_directory(str(checkout)) == {"directory": str(checkout)}
    assert Path.cwd() == checkout
    import tributary

    assert tributary.WHICH == "named checkout"  # type: ignore[attr-defined]
    assert "tributary.settings" not in sys.modules  # the installed one's modules are gone


def test_a_release_wins_over_the_named_checkout(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "checkout", "named checkout")
    release = _checkout(tmp_path / "release", "release")
    assert set_project_directory(str(checkout), release=str(release)) == {"directory": str(release)}
    import tributary

    assert tributary.WHICH == "release"  # type: ignore[attr-defined]


def test_an_unset_release_variable_falls_through(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "checkout", "named checkout")
    for unset in ("", "{{ prefect.variables.tributary_release }}"):
        assert set_project_directory(str(checkout), release=unset) == {"directory": str(checkout)}


def test_a_folder_that_is_no_checkout_is_refused_by_name(tmp_path: Path) -> None:
    os.chdir(PROJECT_ROOT)
    with pytest.raises(ConfigurationError) as caught:
        set_project_directory(str(tmp_path / "nowhere"))
    assert str(caught.value).startswith(f"TRIBUTARY_PROJECT_DIR: {tmp_path / 'nowhere'} ")
    assert Path.cwd() == PROJECT_ROOT
