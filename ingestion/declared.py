"""The sources file: every source tributary loads, declared in one YAML file and validated by
one pydantic model before anything connects.

Its shape follows Sling's replication file (``defaults`` once, then one entry per table with
only its differences, wildcards for many tables) for SQL databases, and dlt's declarative
``rest_api`` configuration, as is, for HTTP APIs. Secrets are references, never values:
``{env: NAME}`` (with an optional ``default``) or ``{secret: dotted.name}`` (dlt's secrets:
``.dlt/secrets.toml`` or the env var ``DOTTED__NAME``); a literal password in a URL is refused.
``{data_dir}`` and ``{project_dir}`` in any value stand for the settings' data folder and the
project's root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tributary.settings import PROJECT_ROOT, ConfigurationError

NAME = r"^[a-z][a-z0-9_]*$"
SECRET_KEYS = frozenset({"password", "token", "api_key", "secret", "client_secret"})


class Reference(BaseModel):
    """A value read at run time: an environment variable or a dlt secret."""

    model_config = ConfigDict(extra="forbid")

    env: str | None = Field(default=None, description="Environment variable to read.")
    secret: str | None = Field(
        default=None,
        description="dlt secret, e.g. `sources.payments.token` (`.dlt/secrets.toml`, or the "
        "env var SOURCES__PAYMENTS__TOKEN).",
    )
    default: str | None = Field(
        default=None, description="Used when the variable is unset (not for secrets)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Reference:
        if (self.env is None) == (self.secret is None):
            raise ValueError("give exactly one of `env` or `secret`")
        if self.secret is not None and self.default is not None:
            raise ValueError("a secret has no default: put the value in .dlt/secrets.toml")
        return self

    def describe(self) -> str:
        if self.env is not None:
            return f"env var {self.env}"
        return f"dlt secret {self.secret} (env var {self.secret.replace('.', '__').upper()})"


Value = str | Reference


class SoftDelete(BaseModel):
    """A column that is set when a row is deleted at the source."""

    model_config = ConfigDict(extra="forbid")

    column: str
    policy: Literal["delete", "flag"] = Field(
        default="delete",
        description="delete: the warehouse deletes the row; flag: it keeps it with the column set.",
    )


class ColumnSelection(BaseModel):
    """Which columns load: only ``include`` (when given), never ``exclude``."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)


class TableOptions(BaseModel):
    """How one table (or every table a wildcard matches) loads; unset options inherit from
    the source's ``defaults``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["merge", "replace", "append"] | None = Field(
        default=None,
        description="merge: incremental on `cursor`, merged on `primary_key`; replace: the "
        "whole table each run; append: new rows only (insert-only logs).",
    )
    primary_key: str | list[str] | None = Field(
        default=None, description="Key columns; default the table's own primary key."
    )
    cursor: str | None = Field(
        default=None,
        description="A timestamp or an ever-increasing integer column that grows when a row "
        "changes (merge) or is added (append).",
    )
    lag: float | None = Field(
        default=None,
        ge=0,
        description="Seconds each read starts behind the last cursor value seen, so that rows "
        "committed late are not skipped (at least the longest write transaction).",
    )
    soft_delete: SoftDelete | None = None
    reconcile_deletes: bool | None = Field(
        default=None,
        description="After each load, delete warehouse rows whose key the source no longer "
        "holds (one key scan per table). Merge mode only.",
    )
    accepted_values: dict[str, list[str]] | None = Field(
        default=None, description="Per column, the values it may hold; others are quarantined."
    )
    columns: ColumnSelection | None = Field(
        default=None, description="Columns to load (include) or leave out (exclude)."
    )
    mask: list[str] | None = Field(
        default=None,
        description="Columns hashed (salted SHA-256, the source's `mask_salt`) before they "
        "reach the warehouse: PII never stored in clear, still joinable.",
    )


class SqlDatabaseSource(BaseModel):
    """Tables of one database reachable by a SQLAlchemy URL (SQLite, PostgreSQL, MySQL/MariaDB)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["sql_database"]
    credentials: Value = Field(
        description="SQLAlchemy URL, best given as {env: NAME}; a password may not be written "
        "in the file."
    )
    schema_: str | None = Field(
        default=None, alias="schema", description="Database schema; default the connection's."
    )
    tags: list[str] = Field(default_factory=list, description="Deployments select sources by tag.")
    schema_contract: Literal["evolve", "freeze"] = Field(
        default="evolve",
        description="A change of a table's columns: evolve loads and reports it, freeze loads "
        "nothing of that run and fails naming the columns.",
    )
    bulk_reads: bool = Field(
        default=True,
        description="PostgreSQL: a table read whole (first load, refresh) streams into the "
        "warehouse through DuckDB's scanner (or COPY via ADBC for column types it would "
        "read differently); dlt reads only its newest rows.",
    )
    mask_salt: Reference | None = Field(
        default=None,
        description="The secret salt of masked columns ({secret: …} or {env: …}); required "
        "when a table masks a column. Changing it changes every hash.",
    )
    defaults: TableOptions = Field(default_factory=TableOptions)
    tables: dict[str, TableOptions | None] = Field(
        description="Table name or wildcard (`*`, `order_*`) → its options (empty: defaults)."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Table names or wildcards left out."
    )

    @field_validator("credentials")
    @classmethod
    def _no_literal_password(cls, value: Value) -> Value:
        if isinstance(value, str):
            try:
                url = make_url(value)
            except ArgumentError as exc:
                raise ValueError(f"not a SQLAlchemy URL: {exc}") from None
            if url.password:
                raise ValueError(
                    "a password may not be written in the sources file: give the URL as "
                    "{env: NAME} or {secret: sources.<name>.credentials}"
                )
        return value

    def options(self, table: str) -> TableOptions:
        """The table's options: the defaults, then each matching entry in file order (a
        wildcard entry first, an exact name after overrides it)."""
        merged = self.defaults.model_dump(exclude_unset=True)
        for pattern in sorted(self.tables, key=lambda p: (not _is_wildcard(p), 0)):
            if matches(pattern, table):
                merged |= (self.tables[pattern] or TableOptions()).model_dump(exclude_unset=True)
        return TableOptions(**merged)


class RestApiSource(BaseModel):
    """An HTTP API, declared as dlt's ``rest_api`` configuration (client, resources,
    resource_defaults). Each resource may add ``accepted_values`` (per field, the values it may
    hold; others are quarantined)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["rest_api"]
    tags: list[str] = Field(default_factory=list, description="Deployments select sources by tag.")
    schema_contract: Literal["evolve", "freeze"] = "evolve"
    client: dict[str, Any] = Field(description="dlt rest_api `client`: base_url, auth, paginator.")
    resource_defaults: dict[str, Any] = Field(default_factory=dict)
    resources: list[dict[str, Any] | str] = Field(min_length=1)

    @model_validator(mode="after")
    def _secrets_by_reference(self) -> RestApiSource:
        for path, value in _walk({"client": self.client, "resources": self.resources}):
            if path[-1] in SECRET_KEYS and isinstance(value, str):
                raise ValueError(
                    f"{'.'.join(map(str, path))}: a secret may not be written in the sources "
                    "file: give it as {secret: sources.<name>.<key>} or {env: NAME}"
                )
        return self


Source = Annotated[SqlDatabaseSource | RestApiSource, Field(discriminator="type")]


class SourcesFile(BaseModel):
    """The whole file: ``sources`` maps each source's name to its declaration."""

    model_config = ConfigDict(extra="forbid", title="tributary sources file")

    sources: dict[Annotated[str, Field(pattern=NAME)], Source] = Field(
        description="Source name (lower case: it names the raw_<name> schema and the dbt "
        "source) → declaration."
    )


def _walk(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, Mapping):
        if set(value) <= {"env", "secret", "default"} and value:
            return []  # a reference
        return [item for key, child in value.items() for item in _walk(child, (*path, key))]
    if isinstance(value, list):
        return [item for i, child in enumerate(value) for item in _walk(child, (*path, i))]
    return [(path, value)]


def _is_wildcard(pattern: str) -> bool:
    return any(character in pattern for character in "*?[")


def matches(pattern: str, name: str) -> bool:
    """Shell-style wildcards (`*`, `?`), case-sensitive as database names are."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name) is not None


def _line(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The line (1-based) of the deepest node of ``path`` that the YAML document has."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        else:
            child = None
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _expand(value: Any, places: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for name, place in places.items():
            value = value.replace("{" + name + "}", place)
        return value
    if isinstance(value, dict):
        return {key: _expand(child, places) for key, child in value.items()}
    if isinstance(value, list):
        return [_expand(child, places) for child in value]
    return value


def load(path: Path, data_dir: Path) -> SourcesFile:
    """Reads and validates the sources file; any mistake raises ``ConfigurationError`` naming
    the file, the line and key path, and what is allowed."""
    if not path.is_file():
        raise ConfigurationError(
            f"TRIBUTARY_SOURCES_FILE: no sources file at {path}; declare your sources there "
            "(`tributary sources schema` writes the JSON Schema editors use to check it)"
        )
    text = path.read_text()
    try:
        document = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigurationError(
            f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    places = {"data_dir": str(data_dir.resolve()), "project_dir": str(PROJECT_ROOT)}
    try:
        return SourcesFile.model_validate(_expand(data or {}, places))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            location = tuple(error["loc"])
            # pydantic names the union branch (`sql_database`, `str`…) in the path: drop it
            keys = tuple(
                key
                for key in location
                if not (
                    isinstance(key, str)
                    and (key in ("sql_database", "rest_api", "str", "Reference") or "[" in key)
                )
            )
            line = _line(document, keys)
            where = f"{path}:{line}" if line else str(path)
            problems.append(
                f"{where}: {'.'.join(map(str, keys)) or '(top)'}: "
                + error["msg"].removeprefix("Value error, ")
            )
    raise ConfigurationError("invalid sources file:\n  " + "\n  ".join(problems))


def resolve(value: Value, what: str) -> str:
    """The value a reference stands for, read now; a missing one is an error naming it."""
    if isinstance(value, str):
        return value
    if value.env is not None:
        found = os.environ.get(value.env) or value.default
    else:
        import dlt

        found = dlt.secrets.get(value.secret)
        if isinstance(found, Mapping):  # credentials given as a table of parts
            from dlt.common.configuration.specs import ConnectionStringCredentials

            credentials = ConnectionStringCredentials()
            credentials.update(found)
            found = credentials.to_native_representation()
    if not found:
        raise ConfigurationError(f"{what}: {value.describe()} is not set")
    return str(found)


def resolve_all(value: Any, what: str) -> Any:
    """``value`` with every reference in it resolved (a rest_api config)."""
    if isinstance(value, Mapping):
        if value and set(value) <= {"env", "secret", "default"}:
            return resolve(Reference.model_validate(value), what)
        return {key: resolve_all(child, f"{what}.{key}") for key, child in value.items()}
    if isinstance(value, list):
        return [resolve_all(child, f"{what}[{i}]") for i, child in enumerate(value)]
    return value
