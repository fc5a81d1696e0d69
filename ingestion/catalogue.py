"""What the sources file will do, checked against the real systems, and declarations
discovered from a database's catalogue: the logic behind `tributary sources check|discover`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.types import Date, DateTime, Integer

from ingestion import declared, registry
from ingestion.declared import RestApiSource, SqlDatabaseSource
from ingestion.rest_api import windowed_resources
from ingestion.rest_api.helpers import incremental_of
from ingestion.sql_database import database_url, plan_tables
from tributary.errors import is_transient
from tributary.settings import ConfigurationError, Settings

# Column names a cursor is chosen from, best first (compared in lower case).
CURSOR_NAMES = (
    "updated_at",
    "modified_at",
    "last_modified",
    "last_modified_at",
    "updated",
    "modified",
    "changed_at",
    "last_update",
    "lastmodified",
    "updatedat",
    "modifieddate",
)
DELETE_NAMES = ("deleted_at", "removed_at", "archived_at")


@dataclass(frozen=True)
class TableCheck:
    """One table or resource as it will load, or why it will not."""

    table: str
    mode: str = ""
    key: str = ""
    cursor: str = ""
    deletes: str = ""
    notes: str = ""


@dataclass
class SourceCheck:
    name: str
    kind: str
    target: str  # where it connects, without secrets
    tables: list[TableCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _redacted(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def check_source(name: str, settings: Settings, probe: bool = True) -> SourceCheck:
    """Connects to the source and says, per table, what a run will do; problems instead of a
    traceback for whatever would stop it."""
    source = registry.declaration(name, settings)
    if isinstance(source, SqlDatabaseSource):
        return _check_database(name, source)
    return _check_api(name, source, settings, probe)


def _check_database(name: str, source: SqlDatabaseSource) -> SourceCheck:
    result = SourceCheck(name, source.type, "")
    try:
        url = database_url(declared.resolve(source.credentials, f"sources.{name}.credentials"))
        result.target = _redacted(url)
        plans = plan_tables(name, source, url)
    except ConfigurationError as exc:
        result.problems.append(str(exc))
        return result
    except Exception as exc:  # a database that refuses or is away: say so, no traceback
        result.problems.append(f"sources.{name}: cannot read the database: {_first_line(exc)}")
        return result
    for table, plan in plans.items():
        notes = []
        if plan.mode == "merge" and not plan.cursor:
            notes.append("no cursor: read whole and merged every run")
        if plan.accepted_values:
            notes.append("accepted values: " + ", ".join(plan.accepted_values))
        result.tables.append(
            TableCheck(
                table=table,
                mode=plan.mode,
                key=", ".join(plan.keys) or "—",
                cursor=(plan.cursor or "—") + (f" (lag {plan.lag:g} s)" if plan.lag else ""),
                deletes=", ".join(
                    part
                    for part in (
                        f"{plan.soft_delete} → " + ("delete" if plan.delete_flagged else "flag")
                        if plan.soft_delete
                        else "",
                        "reconciled by key" if plan.reconcile_deletes else "",
                    )
                    if part
                )
                or "—",
                notes="; ".join(notes),
            )
        )
    if not plans:
        result.problems.append(f"sources.{name}: no table selected")
    return result


def _check_api(name: str, source: RestApiSource, settings: Settings, probe: bool) -> SourceCheck:
    base = source.client.get("base_url")
    result = SourceCheck(name, source.type, "")
    try:
        result.target = str(declared.resolve_all(base, f"sources.{name}.client.base_url") or "?")
        built = registry.build(name, settings)
    except ConfigurationError as exc:
        result.problems.append(str(exc))
        return result
    except Exception as exc:
        result.problems.append(f"sources.{name}: {_first_line(exc)}")
        return result
    windowed = set(windowed_resources(source))
    for resource_name, resource in built.source.resources.items():
        schema = resource.compute_table_schema()
        keys = [c for c, hints in schema["columns"].items() if hints.get("primary_key")]
        declared_resource = next(
            (r for r in source.resources if isinstance(r, dict) and r.get("name") == resource_name),
            {},
        )
        cursor = (incremental_of(declared_resource, source.resource_defaults) or {}).get(
            "cursor_path", ""
        )
        declared_key = declared_resource.get("primary_key")
        if declared_key:  # in the declared order, not the columns'
            keys = [declared_key] if isinstance(declared_key, str) else list(declared_key)
        notes = []
        if resource_name in windowed:
            notes.append("backfill window")
        if resource_name in built.accepted_values:
            notes.append("accepted values: " + ", ".join(built.accepted_values[resource_name]))
        if probe and not resource.is_transformer:
            try:
                next(iter(resource.add_limit(1)), None)
                notes.append("first page read")
            except Exception as exc:
                result.problems.append(
                    f"sources.{name}.resources.{resource_name}: "
                    + ("unreachable (transient): " if is_transient(exc) else "")
                    + _first_line(exc)
                )
        result.tables.append(
            TableCheck(
                table=resource_name,
                mode=str(schema.get("write_disposition", "append")),
                key=", ".join(keys) or "—",
                cursor=str(cursor or "—"),
                notes="; ".join(notes),
            )
        )
    return result


def _first_line(exc: BaseException) -> str:
    cause: BaseException = exc
    while getattr(cause, "exception", None) is not None:  # dlt wraps the real error
        cause = cause.exception  # type: ignore[attr-defined]
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


def _cursor(columns: list[dict[str, Any]]) -> str | None:
    by_name = {column["name"].lower(): column for column in columns}
    for candidate in CURSOR_NAMES:
        column = by_name.get(candidate)
        if column is not None and isinstance(column["type"], DateTime | Date):
            return str(column["name"])
    return None


def discover_database(url_text: str, schema: str | None = None, name: str = "mydb") -> str:
    """A ready-to-paste declaration for every table of a database: keys from its primary keys
    (or an identity column), a cursor from an `updated_at`-like timestamp, merge where both
    exist, append for insert-only tables with an identity key, replace otherwise."""
    url = database_url(url_text)
    engine = create_engine(url, poolclass=NullPool)
    try:
        inspector = inspect(engine)
        tables: dict[str, dict[str, Any] | None] = {}
        comments: list[str] = []
        for table in inspector.get_table_names(schema=schema):
            columns = inspector.get_columns(table, schema=schema)
            keys = inspector.get_pk_constraint(table, schema=schema).get("constrained_columns")
            cursor = _cursor(columns)
            deleted = next((c["name"] for c in columns if c["name"].lower() in DELETE_NAMES), None)
            integer_identity = [
                c["name"]
                for c in columns
                if (c.get("identity") or c.get("autoincrement") is True)
                and isinstance(c["type"], Integer)
            ]
            options: dict[str, Any]
            if keys and cursor:
                options = {"mode": "merge", "cursor": cursor}
                if deleted:
                    options["soft_delete"] = {"column": deleted, "policy": "delete"}
            elif keys:
                options = {"mode": "merge"}
                comments.append(f"{table}: no change timestamp: read whole and merged each run")
            elif integer_identity:
                column = integer_identity[0]
                options = {"mode": "append", "primary_key": column, "cursor": column}
                comments.append(f"{table}: no primary key: appended on its identity {column}")
            else:
                options = {"mode": "replace"}
                comments.append(f"{table}: no primary key: replaced whole each run")
            tables[table] = options or None
    finally:
        engine.dispose()
    credentials: Any = url_text
    parsed = make_url(url_text)
    if parsed.password:
        credentials = {"env": f"{name.upper()}_URL"}
    declaration: dict[str, Any] = {
        "type": "sql_database",
        "credentials": credentials,
        **({"schema": schema} if schema else {}),
        "defaults": {"lag": 300},
        "tables": tables,
    }
    text = yaml.safe_dump({"sources": {name: declaration}}, sort_keys=False)
    header = f"# Discovered from {_redacted(parsed)}; check each table's mode before loading.\n"
    if parsed.password:
        header += f"# The URL holds a password: export {name.upper()}_URL='<the URL>' instead.\n"
    return header + "".join(f"# {comment}\n" for comment in comments) + text


def api_skeleton(base_url: str, name: str = "myapi") -> str:
    """A commented rest_api declaration to fill in: an API cannot be discovered."""
    return f"""# An API's resources cannot be discovered: fill in this skeleton (dlt's rest_api
# configuration; README "Point it at your own systems").
sources:
  {name}:
    type: rest_api
    # tags: [intraday]
    client:
      base_url: "{base_url.rstrip("/")}"
      # auth: {{type: bearer, token: {{secret: sources.{name}.token}}}}
      # auth: {{type: api_key, name: X-API-Key, location: header,
      #        api_key: {{secret: sources.{name}.api_key}}}}
      # auth: {{type: http_basic, username: me, password: {{secret: sources.{name}.password}}}}
      # paginator: {{type: json_link, next_url_path: next}}
      #   (or cursor, page_number, offset, header_link)
    resources:
      - name: items                      # the raw_{name}.items table
        primary_key: id
        write_disposition: merge
        endpoint:
          path: items
          data_selector: data            # where the records are in the response
          # incremental:
          #   start_param: updated_since
          #   end_param: updated_until
          #   cursor_path: updated_at
          #   initial_value: "1970-01-01T00:00:00Z"
        # columns: {{id: {{data_type: bigint, nullable: false}}}}
        # accepted_values: {{status: [active, closed]}}
"""
