"""The sources file: validated before anything connects, mistakes named by file, line and key
path, secrets only by reference, wildcards and defaults resolved per table."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion import declared
from ingestion.declared import SqlDatabaseSource, load
from tributary.settings import PROJECT_ROOT, ConfigurationError


def _load(tmp_path: Path, text: str) -> declared.SourcesFile:
    path = tmp_path / "sources.yml"
    path.write_text(text)
    return load(path, tmp_path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as failure:
        _load(tmp_path, text)
    return str(failure.value)


def test_the_default_file_declares_the_sample_shop_and_its_apis(tmp_path: Path) -> None:
    sources = load(PROJECT_ROOT / "sources.yml", tmp_path).sources
    assert list(sources) == ["shop", "payments", "fx"]
    shop = sources["shop"]
    assert isinstance(shop, SqlDatabaseSource)
    assert shop.credentials.env == "TRIBUTARY_SHOP_URL"  # type: ignore[union-attr]
    assert shop.credentials.default == f"sqlite:///{tmp_path.resolve()}/shop.sqlite"  # type: ignore[union-attr]
    orders = shop.options("orders")
    assert (orders.mode, orders.cursor, orders.lag) == ("merge", "updated_at", 300)
    assert orders.soft_delete is not None and orders.soft_delete.column == "deleted_at"


def test_a_mistake_names_the_file_line_and_key_path(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        """sources:
  crm:
    type: sql_database
    credentials: sqlite:///crm.db
    tables:
      accounts:
        mode: upsert
""",
    )
    assert f"{tmp_path / 'sources.yml'}:7: sources.crm.tables.accounts.mode:" in message
    assert "'merge', 'replace' or 'append'" in message


def test_an_unknown_key_and_an_unknown_type_are_named(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        """sources:
  crm:
    type: sql_database
    credentials: sqlite:///crm.db
    tabels: {accounts: }
""",
    )
    assert ":5: sources.crm.tabels: Extra inputs are not permitted" in message
    assert ":3: sources.crm.tables: Field required" in message  # the entry that lacks it
    message = _error(tmp_path, "sources:\n  crm:\n    type: mongodb\n")
    assert ":3: sources.crm" in message and "'sql_database', 'rest_api'" in message


def test_a_source_name_must_be_a_lower_case_identifier(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        "sources:\n  My-CRM:\n    type: sql_database\n    credentials: sqlite:///x\n"
        "    tables: {a: }\n",
    )
    assert "sources.My-CRM" in message and "pattern" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "sources:\n  crm:\n    type: [sql_database\n")
    assert f"{tmp_path / 'sources.yml'}:" in message and "not valid YAML" in message


def test_a_literal_password_is_refused_and_never_echoed(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        """sources:
  crm:
    type: sql_database
    credentials: postgresql://app:s3cr3t-canary@db.internal/crm
    tables: {accounts: }
""",
    )
    assert ":4: sources.crm.credentials: a password may not be written" in message
    assert "s3cr3t-canary" not in message
    message = _error(
        tmp_path,
        """sources:
  tickets:
    type: rest_api
    client:
      base_url: https://api.example.com
      auth: {type: bearer, token: tok-canary-123}
    resources: [tickets]
""",
    )
    assert "client.auth.token: a secret may not be written" in message
    assert "tok-canary-123" not in message


def test_references_resolve_from_env_and_name_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = declared.Reference(env="CRM_URL", default=None)
    monkeypatch.delenv("CRM_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"sources.crm.credentials: env var CRM_URL"):
        declared.resolve(reference, "sources.crm.credentials")
    monkeypatch.setenv("CRM_URL", "postgresql://app:pw@db/crm")
    assert declared.resolve(reference, "x") == "postgresql://app:pw@db/crm"
    secret = declared.Reference(secret="sources.crm.token")
    monkeypatch.setenv("SOURCES__CRM__TOKEN", "t0k")
    assert declared.resolve(secret, "x") == "t0k"
    with pytest.raises(ValueError, match="exactly one"):
        declared.Reference(env="A", secret="b")


def test_wildcards_defaults_and_exact_entries_combine_per_table(tmp_path: Path) -> None:
    sources = _load(
        tmp_path,
        """sources:
  erp:
    type: sql_database
    credentials: sqlite:///erp.db
    defaults: {mode: merge, cursor: modified, lag: 60}
    tables:
      "order_*": {lag: 0}
      order_audit: {mode: append, cursor: audit_id}
      "*":
    exclude: ["tmp_*"]
""",
    ).sources
    erp = sources["erp"]
    assert isinstance(erp, SqlDatabaseSource)
    audit = erp.options("order_audit")
    assert (audit.mode, audit.cursor, audit.lag) == ("append", "audit_id", 0)
    lines = erp.options("order_lines")
    assert (lines.mode, lines.cursor, lines.lag) == ("merge", "modified", 0)
    other = erp.options("customers")
    assert (other.mode, other.cursor, other.lag) == ("merge", "modified", 60)
    assert declared.matches("order_*", "order_lines") and not declared.matches("order_*", "orders")
    assert not declared.matches("Order_*", "order_lines")  # names are case-sensitive


def test_the_json_schema_covers_both_kinds() -> None:
    schema = declared.SourcesFile.model_json_schema(by_alias=True)
    kinds = {
        definition["properties"]["type"]["const"]
        for definition in schema["$defs"].values()
        if "type" in definition.get("properties", {})
        and "const" in definition["properties"]["type"]
    }
    assert kinds == {"sql_database", "rest_api"}
    sql = schema["$defs"]["SqlDatabaseSource"]["properties"]
    assert "schema" in sql and "tables" in sql and "exclude" in sql


def test_the_committed_json_schema_is_current() -> None:
    """`tributary sources schema` wrote sources.schema.json; a change to the model rewrites it."""
    from typer.testing import CliRunner

    from tributary.cli import app

    result = CliRunner().invoke(app, ["sources", "schema", "--output", "-"])
    assert result.exit_code == 0, result.output
    assert result.output == (PROJECT_ROOT / "sources.schema.json").read_text(), (
        "run `tributary sources schema` and commit sources.schema.json"
    )


def test_the_readme_example_is_a_valid_sources_file(tmp_path: Path) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("## Point it at your own systems") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", 10)]
    sources = _load(tmp_path, example).sources
    assert list(sources) == ["erp", "tickets"]
    erp = sources["erp"]
    assert isinstance(erp, SqlDatabaseSource)
    customers = erp.options("customers")
    assert customers.mask == ["email", "phone"] and customers.columns is not None
    assert erp.options("order_lines").mode == "replace"
    assert erp.options("order_items").lag == 0
