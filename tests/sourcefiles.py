"""Scratch sources files: the default `sources.yml` with a test's own shop database, API, tables
or options, written next to the test's data, and the settings that read it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from tributary.settings import PROJECT_ROOT, Settings

DEFAULT = PROJECT_ROOT / "sources.yml"


def _credentials(url: str) -> str | dict[str, str]:
    """A URL as the sources file takes it: as is, or — holding a password, which the file
    refuses — as a reference to an env var set here."""
    if not make_url(url).password:
        return url
    name = f"TRIBUTARY_TEST_URL_{secrets.token_hex(4).upper()}"
    os.environ[name] = url
    return {"env": name}


def write_sources(
    folder: Path,
    *,
    shop: str | Path | None = None,
    api: str | None = None,
    tables: list[str] | None = None,
    lag: float | None = None,
    bulk_reads: bool | None = None,
    reconcile_deletes: bool | None = None,
    shop_options: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    only: list[str] | None = None,
) -> Path:
    """The default sources file with the shop at ``shop`` (URL or SQLite path), both APIs at
    ``api``, the shop's ``tables``/``lag``/``bulk_reads``/``reconcile_deletes`` (or any
    ``shop_options``), ``extra`` sources added, only the sources in ``only`` kept."""
    data = yaml.safe_load(DEFAULT.read_text())
    sources = data["sources"]
    shop_source = sources["shop"]
    if shop is not None:
        url = f"sqlite:///{Path(shop).resolve()}" if isinstance(shop, Path) else shop
        shop_source["credentials"] = _credentials(url)
    if api is not None:
        for name in ("payments", "fx"):
            sources[name]["client"]["base_url"] = api
    if tables is not None:
        shop_source["tables"] = dict.fromkeys(tables)
    defaults = shop_source.setdefault("defaults", {})
    if lag is not None:
        defaults["lag"] = lag
    if reconcile_deletes is not None:
        defaults["reconcile_deletes"] = reconcile_deletes
    if bulk_reads is not None:
        shop_source["bulk_reads"] = bulk_reads
    shop_source.update(shop_options or {})
    sources.update(extra or {})
    if only is not None:
        data["sources"] = {name: sources[name] for name in only}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sources.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def scratch_settings(data_dir: Path, **options: Any) -> Settings:
    """Settings for a test's data folder and its own sources file (see ``write_sources``);
    ``settings`` passes other settings through."""
    settings = options.pop("settings", {})
    return Settings(data_dir=data_dir, sources_file=write_sources(data_dir, **options), **settings)
