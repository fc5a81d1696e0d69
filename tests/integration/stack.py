"""The demo stack the integration modules run the `elt` flow against: a sample shop in a data
folder, its API on loopback, the environment the flows read — written once here.

Several modules start from the same small shop after one `elt` run; that run happens once per
session (``loaded_shop`` in ``conftest.py``) and each module gets a copy of its folder, so it
neither repeats the run nor sees another module's changes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from demo.api import serve_in_background
from tests.receivers import webhook_receiver
from tributary.report import RunReport
from tributary.settings import Settings, get_settings

# The shop most modules share: small enough for a quick flow, large enough for every mart.
ORDERS = 600
SEED = 11
END = datetime(2026, 11, 1, 12, 0, 0)


@dataclass(frozen=True)
class Serving:
    settings: Settings
    api_url: str
    token: str
    alerts: list[dict[str, Any]]
    """What the webhook received (``webhook=True``)."""


@contextmanager
def serving(
    data_dir: Path, token: str = "token", *, shop_url: str | None = None, webhook: bool = False
) -> Iterator[Serving]:
    """The demo API over the folder's payments store, a webhook receiver if asked, and the
    environment the flows read (``shop_url``: a shop in a database server instead of the
    folder's SQLite file); settings are read afresh inside and after."""
    with ExitStack() as stack:
        api_url = stack.enter_context(
            serve_in_background(Settings(data_dir=data_dir).demo_api_db, token)
        )
        env = stack.enter_context(pytest.MonkeyPatch.context())
        alerts: list[dict[str, Any]] = []
        if webhook:
            hook_url, alerts = stack.enter_context(webhook_receiver())
            env.setenv("TRIBUTARY_SLACK_WEBHOOK_URL", hook_url)
        if shop_url:
            env.setenv("TRIBUTARY_SHOP_URL", shop_url)
        env.setenv("TRIBUTARY_DATA_DIR", str(data_dir))
        env.setenv("TRIBUTARY_PAYMENTS_API_URL", api_url)
        env.setenv("TRIBUTARY_FX_API_URL", api_url)
        env.setenv("SOURCES__PAYMENTS__TOKEN", token)
        get_settings.cache_clear()
        try:
            yield Serving(get_settings(), api_url, token, alerts)
        finally:
            get_settings.cache_clear()


@dataclass(frozen=True)
class Loaded:
    """The shared shop (``ORDERS``, ``SEED``, ``END``) after its first `elt` run."""

    data_dir: Path
    report: RunReport

    def copy(self, to: Path) -> Path:
        """A folder of one's own holding the same shop, warehouse, published versions and
        pipeline state (the readers' link is relative: it points into the copy)."""
        shutil.copytree(self.data_dir, to, symlinks=True, dirs_exist_ok=True)
        return to
