"""The one settings object: where the sources and the warehouse are, and who to notify.

Every value can be overridden by an environment variable prefixed ``TRIBUTARY_`` (for example
``TRIBUTARY_WAREHOUSE_PATH``) or a git-ignored ``.env`` file. Secrets that dlt needs (database
credentials, API tokens) are read the dlt way instead: ``SOURCES__<SOURCE>__<KEY>`` environment
variables or ``.dlt/secrets.toml``. The sources themselves are declared in ``sources.yml``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# dlt reads its configuration (.dlt/config.toml: the load id on arrow rows, aborting a terminal
# load error, no telemetry) and secrets (.dlt/secrets.toml) from the working directory unless
# DLT_PROJECT_DIR says where: a run started from another folder ran without them, and the
# first load of a PostgreSQL table failed ("tiny_orders does not have a column _dlt_load_id").
# dlt reads the variable when it first resolves a setting, after this import.
os.environ.setdefault("DLT_PROJECT_DIR", str(PROJECT_ROOT))
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
# What a published file holds: the marts dbt builds (published only from a passing build),
# the history the pipeline writes (copied as it is), and the publication's own record.
MART_SCHEMAS = ("marts",)
HISTORY_SCHEMAS = ("ops", "quarantine")
# ... and, unless TRIBUTARY_PUBLISH_RAW is false, the raw tables as loaded (`raw_<source>`, dlt's
# own `_dlt_*` tables left out): what dev builds and analysts read the sources from.
RAW_SCHEMA_PREFIX = "raw_"
PUBLICATION_SCHEMA = "tributary"


class Settings(BaseSettings):
    """Environment, source locations, warehouse location and notification targets."""

    model_config = SettingsConfigDict(
        env_prefix="TRIBUTARY_", env_file=".env", extra="ignore", validate_default=True
    )

    env: Literal["local", "ci", "prod"] = "local"
    data_dir: Path = DEFAULT_DATA_DIR
    sources_file: Path | None = Field(
        default=None,
        description="The file that declares every source (see README); default sources.yml "
        "at the project root.",
    )
    warehouse_path: Path | None = Field(
        default=None, description="DuckDB warehouse file; default <data_dir>/warehouse.duckdb."
    )
    demo_api_db_path: Path | None = Field(
        default=None,
        description="The demo API's own store; default <data_dir>/payments_api.sqlite.",
    )
    slack_webhook_url: SecretStr | None = None
    smtp_host: str | None = Field(default=None, description="Send failure e-mails via this host.")
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = Field(default=False, description="Upgrade the connection with STARTTLS.")
    alert_email_from: str = "tributary@localhost"
    alert_email_to: list[str] = Field(
        default_factory=list, description="Recipients of failure e-mails (JSON list in env)."
    )
    stale_after_hours: float = Field(
        default=26,
        gt=0,
        description="Alert when no `elt` run has completed for this long (a server automation).",
    )
    dbt_threads: int = Field(
        # DuckDB already runs each model's query on every core: on 2 cores, 2 threads built the
        # 82-node project 14% slower than 1 (bench/README). Half the cores leaves them room.
        default_factory=lambda: max(1, (os.cpu_count() or 1) // 2),
        ge=1,
        description="Models dbt builds at once (its `threads`); default half the machine's "
        "CPUs, at least 1.",
    )
    lock_timeout_seconds: float = Field(
        default=3600, gt=0, description="How long a warehouse writer waits for another one."
    )
    published_path: Path | None = Field(
        default=None,
        description="The file readers open (read-only): a link to the newest published "
        "version of the marts; default <data_dir>/published.duckdb.",
    )
    published_versions_path: Path | None = Field(
        default=None,
        description="Folder of published versions, each a whole DuckDB file written once; "
        "default <data_dir>/published/.",
    )
    dev_path: Path | None = Field(
        default=None,
        description="An analyst's dev warehouse (dbt's dev target, `tributary dev`); default "
        "<data_dir>/dev/$USER.duckdb.",
    )
    publish_raw: bool = Field(
        default=True,
        description="Publish the raw tables with the marts: analysts' dev builds read their "
        'sources from the published file (README "Analysts"). Off: only marts and history.',
    )
    published_keep: int = Field(
        default=5, ge=1, description="Published versions kept (the current one always is)."
    )
    cursor_future_tolerance_seconds: float = Field(
        default=3600,
        ge=0,
        description="A row whose cursor (updated_at, a date) lies further than this beyond now "
        "is quarantined and never moves the cursor. Raise it by the offset if a source stores "
        "local time ahead of UTC.",
    )
    quarantine_max_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="A table whose newly quarantined rows exceed this share of the rows read "
        "(and TRIBUTARY_QUARANTINE_MAX_ROWS) fails the run after the rest has loaded.",
    )
    quarantine_max_rows: int = Field(
        default=10, ge=0, description="Up to this many newly quarantined rows never fail a run."
    )
    delete_max_share: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="A run that would delete more than this share of a table's rows (and more "
        "than TRIBUTARY_DELETE_MIN_ROWS, or all of them) stops before deleting until it is run "
        "with confirm_deletes.",
    )
    schema_contract: dict[str, Literal["evolve", "freeze"]] = Field(
        default_factory=dict,
        description="Per source, overriding its `schema_contract` in the sources file, what a "
        'change of its columns does (JSON object in env, e.g. {"crm": "freeze"}): evolve loads '
        "and reports it, freeze loads nothing of that run and fails naming the columns.",
    )
    delete_min_rows: int = Field(
        default=10,
        ge=0,
        description="Deleting up to this many rows of a table never needs a confirmation "
        "(unless they are all its rows).",
    )

    @model_validator(mode="after")
    def _email_needs_recipients(self) -> Settings:
        if self.smtp_host and not self.alert_email_to:
            raise ValueError(
                "TRIBUTARY_ALERT_EMAIL_TO: TRIBUTARY_SMTP_HOST is set but no recipient is; "
                'give a JSON list, e.g. ["data-team@example.com"]'
            )
        return self

    @model_validator(mode="after")
    def _published_name_is_no_schema(self) -> Settings:
        # DuckDB names a database after its file: `marts.duckdb` would make `marts.x` ambiguous.
        schemas = (*MART_SCHEMAS, *HISTORY_SCHEMAS, PUBLICATION_SCHEMA)
        if self.published.stem in schemas:
            raise ValueError(
                f"TRIBUTARY_PUBLISHED_PATH: {self.published.name} is named like a schema in it "
                f"({', '.join(schemas)}), which makes `{self.published.stem}.<table>` ambiguous "
                "in DuckDB; choose another file name, e.g. published.duckdb"
            )
        return self

    @property
    def sources_path(self) -> Path:
        return (self.sources_file or PROJECT_ROOT / "sources.yml").resolve()

    @property
    def warehouse(self) -> Path:
        return (self.warehouse_path or self.data_dir / "warehouse.duckdb").resolve()

    @property
    def pipelines_dir(self) -> Path:
        """dlt's local working state, kept beside the data it belongs to."""
        return (self.data_dir / "pipelines").resolve()

    @property
    def published(self) -> Path:
        """Not resolved: it is a link, and readers must open the link, not today's target."""
        path = self.published_path or self.data_dir / "published.duckdb"
        return path.parent.resolve() / path.name

    @property
    def published_versions(self) -> Path:
        return (self.published_versions_path or self.data_dir / "published").resolve()

    @property
    def demo_api_db(self) -> Path:
        return (self.demo_api_db_path or self.data_dir / "payments_api.sqlite").resolve()

    @property
    def runs_dir(self) -> Path:
        """The run journal: one file per run until its history is in the warehouse."""
        return (self.data_dir / "ops" / "runs").resolve()


class ConfigurationError(ValueError):
    """A setting is missing or wrong; raised before any data moves."""


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment.

    Invalid settings raise ``ConfigurationError`` naming each setting and what is wrong, never
    pydantic's ``ValidationError``: that one carries its input, every setting read (the shop
    URL with its password, the webhook URL, the SMTP password) — cut short in its message,
    printed and logged, and whole in its data, which Prefect keeps as a failed run's result.
    The new error is raised outside the ``except`` so that it does not hold the old one."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            (f"TRIBUTARY_{'_'.join(map(str, error['loc'])).upper()}: " if error["loc"] else "")
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors(include_input=False, include_url=False)
        ]
    raise ConfigurationError("invalid settings: " + "; ".join(problems))
