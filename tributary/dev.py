"""An analyst's dev warehouse: their own DuckDB file, beside production and never in its way.

dbt's ``dev`` target (``dbt_project/profiles.yml``) builds into the analyst's file, attached as
``dev``, and reads the sources and every model it does not build from the published file,
attached read-only as ``prod`` — the same catalog name the ``prod`` target gives the working
warehouse, so a relation reads the same in both. Nothing here takes the warehouse lock or opens
the working warehouse: a dev build never waits for a run, and a run never waits for it.

``init`` makes the file and the staging views in it (seconds, whatever production's size: the
views read the published raw tables, nothing is copied); ``build`` runs ``dbt build --select
state:modified+ --defer`` against the dbt state of the published version, so only what the
analyst changed (and what depends on it) builds, and everything else is read from production.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb

from tributary.dbt import DbtSummary, invoke_dbt
from tributary.publish import RAW, Publication, current, state_path
from tributary.settings import DBT_PROJECT_DIR, PUBLICATION_SCHEMA, ConfigurationError, Settings
from tributary.warehouse import sql_string

# dbt's own binary, beside this interpreter
DBT = Path(sys.executable).parent / "dbt"


def user() -> str:
    """Whose dev warehouse: $USER, as ``profiles.yml`` reads it."""
    return os.environ.get("USER") or "analyst"


def dev_path(settings: Settings, analyst: str | None = None) -> Path:
    """The analyst's dev warehouse: ``TRIBUTARY_DEV_PATH``, default
    ``data/dev/<analyst, default $USER>.duckdb``."""
    name = analyst or user()
    return (settings.dev_path or settings.data_dir / "dev" / f"{name}.duckdb").resolve()


def _target_path(settings: Settings, analyst: str | None = None) -> Path:
    """dbt's target folder for dev builds: never the project's ``target/``, which production's
    builds keep (``dbt retry``, publishing)."""
    path = dev_path(settings, analyst)
    return path.with_name(f"{path.stem}.target")


def environment(settings: Settings, analyst: str | None = None) -> dict[str, str]:
    """The variables ``profiles.yml``'s ``dev`` target reads."""
    return {
        "TRIBUTARY_DBT_TARGET": "dev",
        "TRIBUTARY_DEV_PATH": str(dev_path(settings, analyst)),
        # the link, not today's version: each dbt invocation opens the newest set
        "TRIBUTARY_PUBLISHED_PATH": str(settings.published),
        "TRIBUTARY_DBT_THREADS": str(settings.dbt_threads),
    }


def production(settings: Settings) -> Publication:
    """The published version dev builds read, checked for what they need."""
    publication = current(settings)
    if publication is None:
        raise ConfigurationError(
            f"TRIBUTARY_PUBLISHED_PATH: nothing is published at {settings.published} yet; dev "
            "builds read production from there. Run the elt flow once (`make demo` on the "
            "sample shop)"
        )
    if not any(table.origin == RAW for table in publication.tables):
        raise ConfigurationError(
            f"TRIBUTARY_PUBLISH_RAW: the published version {publication.version} holds no raw "
            "tables, which dev builds read their sources from; with TRIBUTARY_PUBLISH_RAW on "
            "(the default), the next passing production build publishes them"
        )
    return publication


def dbt_flags(settings: Settings, analyst: str | None = None) -> list[str]:
    """The ``dev`` target, with its own target and log folders."""
    target = _target_path(settings, analyst)
    return ["--target", "dev", "--target-path", str(target), "--log-path", str(target / "logs")]


def dbt_command(
    settings: Settings, args: Sequence[str], project_dir: Path = DBT_PROJECT_DIR
) -> list[str]:
    """``dbt <args>`` for the dev target."""
    return [
        str(DBT),
        *args,
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(project_dir),
        *dbt_flags(settings),
    ]


def _run(
    settings: Settings, args: Sequence[str], project_dir: Path, *, capture: bool
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dbt_command(settings, args, project_dir),
        cwd=project_dir,
        env={**os.environ, **environment(settings)},
        capture_output=capture,
        text=True,
        check=False,
    )


INIT_ARGS = ["run", "--select", "config.materialized:view"]


def init(
    settings: Settings,
    project_dir: Path = DBT_PROJECT_DIR,
    *,
    days: int | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Make the dev warehouse (or bring its views up to date): the project's views, reading
    the published raw tables. Deferred models then resolve to the published marts. ``days``:
    the dev-data limit — the views keep only the last ``days`` of orders and what belongs to
    them (``macros/dev_window.sql``), so what builds in dev builds fast at any size."""
    production(settings)
    if days is not None and days < 1:
        raise ConfigurationError(f"--days: {days} keeps no orders; give 1 or more")
    dev_path(settings).parent.mkdir(parents=True, exist_ok=True)
    limit = ["--vars", json.dumps({"dev_days": days})] if days is not None else []
    return _run(settings, [*INIT_ARGS, *limit], project_dir, capture=capture)


def build_args(settings: Settings, args: Sequence[str] = ()) -> list[str]:
    """``dbt build`` of what changed against production (``state:modified+``, or ``args``'
    own ``--select``), deferring the rest to the published version's models."""
    publication = production(settings)
    state = state_path(publication.path)
    if not (state / "manifest.json").is_file():
        raise ConfigurationError(
            f"the published version {publication.version} has no dbt state ({state}) to defer "
            "to; the next passing production build publishes one"
        )
    selects = any(arg in {"--select", "-s", "--selector"} for arg in args)
    return [
        "build",
        *([] if selects else ["--select", "state:modified+"]),
        "--defer",
        "--state",
        str(state),
        *args,
    ]


def build(
    settings: Settings,
    args: Sequence[str] = (),
    project_dir: Path = DBT_PROJECT_DIR,
    *,
    capture: bool = False,
) -> subprocess.CompletedProcess[str]:
    """A dev build (``build_args``) at a shell; makes the dev warehouse first if need be."""
    command = build_args(settings, args)
    if not dev_path(settings).is_file():
        initialised = init(settings, project_dir, capture=capture)
        if initialised.returncode != 0:
            return initialised
    return _run(settings, command, project_dir, capture=capture)


def build_in_process(
    settings: Settings, args: Sequence[str] = (), analyst: str | None = None
) -> DbtSummary:
    """A dev build (``build_args``) in this process, as the ``dbt`` flow runs it with
    ``target: dev``: every node a Prefect task, no warehouse lock, nothing published. Builds
    ``analyst``'s dev warehouse (default: $USER's), making it first if need be."""
    command = build_args(settings, args)
    flags = dbt_flags(settings, analyst)
    variables = environment(settings, analyst)
    path = dev_path(settings, analyst)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        invoke_dbt([*INIT_ARGS, *flags], variables)
    return invoke_dbt([*command, *flags], variables)


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """The dev warehouse as dbt's ``dev`` target sees it, read-only: the analyst's file as
    ``dev`` (the default catalog) and the published file as ``prod``, so its views resolve.
    Opened directly, the file's views name catalogs it does not have."""
    path = dev_path(settings)
    if not path.is_file():
        raise ConfigurationError(
            f"TRIBUTARY_DEV_PATH: no dev warehouse at {path} yet; `tributary dev init` makes it"
        )
    production(settings)
    connection = duckdb.connect()
    connection.execute(f"attach {sql_string(path)} as dev (read_only)")
    connection.execute(f"attach {sql_string(settings.published)} as prod (read_only)")
    connection.execute("use dev")
    return connection


def describe(settings: Settings) -> list[tuple[str, str]]:
    """What the dev warehouse holds: (relation, kind), for ``tributary dev status``."""
    path = dev_path(settings)
    if not path.is_file():
        return []
    with duckdb.connect(str(path), read_only=True) as dev:
        return [
            (f"{schema}.{name}", kind)
            for schema, name, kind in dev.execute(
                "select schema_name, table_name, 'table' from duckdb_tables() "
                "where schema_name != ? "
                "union all select schema_name, view_name, 'view' from duckdb_views() "
                "where not internal order by 1, 2",
                [PUBLICATION_SCHEMA],
            ).fetchall()
        ]
