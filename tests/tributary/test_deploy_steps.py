"""The deployments' pull step: the checkout TRIBUTARY_PROJECT_DIR names, or — unset, whatever
Prefect renders for it — the one this environment was installed from (the deploy tests run a
real worker without the variable); anything else fails naming the setting."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tributary.deploy_steps import set_project_directory
from tributary.settings import PROJECT_ROOT, ConfigurationError


@pytest.fixture(autouse=True)
def _keep_cwd() -> Iterator[None]:
    cwd = Path.cwd()
    yield
    os.chdir(cwd)


@pytest.mark.parametrize("rendered", [None, "", "  ", "{{ $TRIBUTARY_PROJECT_DIR }}"])
def test_unset_means_the_installed_checkout(rendered: str | None, tmp_path: Path) -> None:
    os.chdir(tmp_path)  # a process worker starts each run in a temporary folder
    assert set_project_directory(rendered) == {"directory": str(PROJECT_ROOT)}
    assert Path.cwd() == PROJECT_ROOT
    assert (Path.cwd() / "flows" / "elt.py").is_file()


def test_a_named_checkout_is_used(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "prefect.yaml").write_text("name: tributary\n")
    assert set_project_directory(str(tmp_path)) == {"directory": str(tmp_path)}
    assert Path.cwd() == tmp_path


def test_a_folder_that_is_no_checkout_is_refused_by_name(tmp_path: Path) -> None:
    os.chdir(PROJECT_ROOT)
    with pytest.raises(ConfigurationError) as caught:
        set_project_directory(str(tmp_path / "nowhere"))
    assert str(caught.value).startswith(f"TRIBUTARY_PROJECT_DIR: {tmp_path / 'nowhere'} ")
    assert Path.cwd() == PROJECT_ROOT
