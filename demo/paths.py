"""Where the sample shop lives: what the default sources file points the `shop` source at."""

from __future__ import annotations

import os
from pathlib import Path

from tributary.settings import Settings

SHOP_URL_VARIABLE = "TRIBUTARY_SHOP_URL"


def shop_sqlite_path(settings: Settings) -> Path:
    return (settings.data_dir / "shop.sqlite").resolve()


def shop_url(settings: Settings) -> str:
    """``TRIBUTARY_SHOP_URL`` when set, else the SQLite file in the data folder — as the
    default ``sources.yml`` declares it."""
    return os.environ.get(SHOP_URL_VARIABLE) or f"sqlite:///{shop_sqlite_path(settings)}"


def shop_exists(settings: Settings) -> bool:
    """Whether a sample shop is there to move forward (a server database is assumed to be)."""
    return SHOP_URL_VARIABLE in os.environ or shop_sqlite_path(settings).exists()
