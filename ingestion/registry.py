"""From the sources file to dlt sources: the one place that maps a declared kind to its code."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from dlt.extract import DltSource
from sqlalchemy.engine import URL

from ingestion import declared
from ingestion.declared import RestApiSource, SourcesFile, SqlDatabaseSource
from ingestion.rest_api import accepted_values, rest_api, windowed_resources
from ingestion.sql_database import (
    TablePlan,
    database_url,
    reflect_tables,
    sql_database_source,
)
from ingestion.sql_database.helpers import NAMING
from tributary.settings import ConfigurationError, Settings


@dataclass(frozen=True)
class Built:
    """One declared source, ready to extract, and what the runner needs to know about it."""

    name: str
    kind: Literal["sql_database", "rest_api"]
    source: DltSource
    schema_contract: Literal["evolve", "freeze"]
    accepted_values: dict[str, dict[str, tuple[str, ...]]]
    url: URL | None = None  # sql_database
    plans: dict[str, TablePlan] = field(default_factory=dict)  # sql_database
    db_schema: str | None = None  # sql_database: the database schema read
    mask_salt: str | None = field(default=None, repr=False)  # a secret
    bulk_reads: bool = False

    def raw_name(self, resource: str) -> str:
        """The warehouse's name for a resource's table (dlt's naming)."""
        plan = self.plans.get(resource)
        return plan.raw_table if plan else NAMING.normalize_table_identifier(resource)

    @property
    def mirrored(self) -> bool:
        """Whose tables mirror a database's: a table read whole replaces its warehouse copy,
        reflected columns show drift before extraction."""
        return self.kind == "sql_database"


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float, data_dir: Path) -> SourcesFile:
    return declared.load(path, data_dir)


def sources_file(settings: Settings) -> SourcesFile:
    """The validated sources file (read again when it changes)."""
    path = settings.sources_path
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    return _load(path, mtime, settings.data_dir)


def source_names(settings: Settings) -> list[str]:
    return list(sources_file(settings).sources)


def tagged(settings: Settings, tag: str) -> list[str]:
    return [name for name, source in sources_file(settings).sources.items() if tag in source.tags]


def all_tags(settings: Settings) -> list[str]:
    return sorted(
        {tag for source in sources_file(settings).sources.values() for tag in source.tags}
    )


def declaration(name: str, settings: Settings) -> SqlDatabaseSource | RestApiSource:
    sources = sources_file(settings).sources
    if name not in sources:
        raise ConfigurationError(
            f"no source {name!r} in {settings.sources_path}; the sources are "
            f"{', '.join(sources) or 'none'}"
        )
    return sources[name]


def check_names(names: Collection[str], settings: Settings, what: str) -> None:
    """Raises naming ``what`` when a name is not a declared source."""
    known = source_names(settings)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigurationError(
            f"{what}: no source {', '.join(unknown)} in {settings.sources_path}; the sources "
            f"are {', '.join(known)}"
        )


def windowed(name: str, settings: Settings) -> bool:
    """Whether a backfill window applies to the source (an API with an incremental cursor)."""
    source = declaration(name, settings)
    return isinstance(source, RestApiSource) and bool(windowed_resources(source))


def sql_url(name: str, settings: Settings) -> URL | None:
    """The database URL of a sql_database source (references resolved), else None."""
    source = declaration(name, settings)
    if not isinstance(source, SqlDatabaseSource):
        return None
    return database_url(declared.resolve(source.credentials, f"sources.{name}.credentials"))


def build(
    name: str,
    settings: Settings,
    *,
    window: tuple[str, str] | None = None,
    bulk_tables: Collection[str] = (),
    cursor_limit: datetime | None = None,
) -> Built:
    """The declared source as a dlt source. ``window`` (ISO dates [start, end)) reloads an API's
    incremental resources over that range; ``bulk_tables`` and ``cursor_limit`` are the
    sql_database kind's (see ``sql_database_source``)."""
    source = declaration(name, settings)
    if isinstance(source, SqlDatabaseSource):
        if window is not None:
            raise ConfigurationError(
                f"{name}: a backfill window applies to API sources with an incremental cursor"
            )
        url = sql_url(name, settings)
        assert url is not None
        plans, metadata = reflect_tables(name, source, url)
        salt = (
            declared.resolve(source.mask_salt, f"sources.{name}.mask_salt")
            if source.mask_salt is not None and any(plan.mask for plan in plans.values())
            else None
        )
        dlt_source = sql_database_source(
            name,
            source,
            url,
            plans,
            metadata,
            bulk_tables=bulk_tables,
            cursor_limit=cursor_limit,
            mask_salt=salt,
        )
        return Built(
            name=name,
            kind="sql_database",
            source=dlt_source,
            schema_contract=source.schema_contract,
            accepted_values={t: p.accepted_values for t, p in plans.items() if p.accepted_values},
            url=url,
            plans=plans,
            bulk_reads=source.bulk_reads,
            db_schema=source.schema_,
            mask_salt=salt,
        )
    if window is not None and not windowed_resources(source):
        raise ConfigurationError(
            f"{name}: a backfill window applies to resources with an incremental cursor and "
            "it has none"
        )
    try:
        dlt_source = rest_api(name, source, window)
    except ConfigurationError:
        raise
    except ValueError as exc:
        raise ConfigurationError(f"sources.{name}: {exc}") from None
    return Built(
        name=name,
        kind="rest_api",
        source=dlt_source,
        schema_contract=source.schema_contract,
        accepted_values=accepted_values(source),
    )
