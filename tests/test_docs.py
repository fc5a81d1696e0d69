"""The docs analysts read: built from the published file without writing it, served on
loopback only, and complete — every model and every column the SQL makes is described."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from sqlglot import exp, parse_one
from sqlglot.optimizer.qualify import qualify
from sqlglot.schema import MappingSchema

from tests.readers import held_connection
from tributary.docs import build_docs, docs_dir, server
from tributary.settings import Settings

# A published version as a run leaves it, with one mart that is narrower than the project's:
# the catalog must show the published columns, proving it was read from this file.
PUBLISHED_MARTS = """
    create schema marts;
    create table marts.fct_orders (order_id bigint not null, customer_id bigint);
    insert into marts.fct_orders values (1, 10), (2, 20);
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10, trust_env=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One `dbt docs generate` (about 20 s) for the whole module, while a reader in another
    process holds the published file open."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    version = settings.data_dir / "published" / "published-20260101T000000000000Z.duckdb"
    version.parent.mkdir()
    with duckdb.connect(str(version)) as connection:
        connection.execute(PUBLISHED_MARTS)
    version.chmod(0o444)
    os.symlink(version, settings.published)
    before = _sha256(version)
    with held_connection(settings.published) as reader:
        page = build_docs(settings)
        held = reader.query("select count(*) from marts.fct_orders")
    yield {
        "settings": settings,
        "page": page,
        "version": version,
        "unchanged": _sha256(version) == before,
        "held": held,
        "manifest": json.loads((docs_dir(settings) / "manifest.json").read_text()),
        "catalog": json.loads((docs_dir(settings) / "catalog.json").read_text()),
    }


def test_the_catalog_comes_from_the_published_file_which_stays_untouched(
    built: dict[str, Any],
) -> None:
    fct_orders = built["catalog"]["nodes"]["model.tributary.fct_orders"]
    assert set(fct_orders["columns"]) == {"order_id", "customer_id"}
    assert fct_orders["metadata"]["schema"] == "marts"
    assert built["unchanged"], "the docs build wrote the published file"
    assert sorted(p.name for p in built["version"].parent.iterdir()) == [built["version"].name]
    assert built["held"] == [[2]], "a reader holding the published file was disturbed"


def test_the_page_is_one_file_in_the_docs_folder_not_dbt_target(built: dict[str, Any]) -> None:
    page: Path = built["page"]
    assert page == built["settings"].data_dir.resolve() / "docs" / "static_index.html"
    html = page.read_text()
    # --static inlines the manifest and the catalog: the page needs no other file
    assert "Primary key, the payment provider's id." in html
    assert "amount_paid_usd >= order_total - 0.01" in html


def test_the_page_is_served_on_loopback_and_nothing_else_is(built: dict[str, Any]) -> None:
    httpd = server(built["page"], port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        host, port = httpd.server_address[:2]
        assert host == "127.0.0.1"
        page = _get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and page.text == built["page"].read_text()
        assert _get(f"http://127.0.0.1:{port}/profiles.yml").status_code == 404
        assert _get(f"http://127.0.0.1:{port}/manifest.json").status_code == 404
    finally:
        httpd.shutdown()
        httpd.server_close()


def sql_columns(models: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each model's columns as its compiled SQL makes them, without a warehouse: sqlglot
    expands every `*` through the CTEs, and through the models it reads (in dependency
    order). A `*` it cannot expand (over a source, say) stays in the list."""
    schema = MappingSchema(dialect="duckdb")
    found: dict[str, list[str]] = {}

    def columns(unique_id: str) -> list[str]:
        if unique_id not in found:
            node = models[unique_id]
            for upstream in node["depends_on"]["nodes"]:
                if upstream in models:
                    columns(upstream)
            tree = qualify(
                parse_one(node["compiled_code"], dialect="duckdb"),
                dialect="duckdb",
                schema=schema,
                validate_qualify_columns=False,
                quote_identifiers=False,
            )
            found[unique_id] = [
                "*" if select.is_star else select.alias_or_name for select in tree.selects
            ]
            if node["config"]["materialized"] != "ephemeral":
                schema.add_table(
                    exp.table_(node["alias"], db=node["schema"], catalog=node["database"]),
                    dict.fromkeys(found[unique_id], "unknown"),
                    dialect="duckdb",
                )
        return found[unique_id]

    for unique_id in models:
        columns(unique_id)
    return found


def undocumented(manifest: dict[str, Any]) -> list[str]:
    """What the docs would leave out or get wrong, one line per model or column: a model or a
    column without a description, a column the SQL makes that its YAML does not list (or the
    reverse), a mart whose contract dbt does not enforce at build."""
    models = {
        unique_id: node
        for unique_id, node in manifest["nodes"].items()
        if node["resource_type"] == "model"
    }
    made = sql_columns(models)
    problems = []
    for unique_id, node in sorted(models.items()):
        name, sql = node["name"], node["original_file_path"]
        yml = (node["patch_path"] or "").partition("://")[2] or f"no YAML beside {sql}"
        if not node["description"].strip():
            problems.append(f"{name}: no description ({yml})")
        if sql.startswith("models/marts/") and not node["config"]["contract"]["enforced"]:
            problems.append(f"{name}: a mart without `contract: {{enforced: true}}` ({yml})")
        described = {column.lower(): value for column, value in node["columns"].items()}
        for column in made[unique_id]:
            if column == "*":
                problems.append(f"{name}: a `*` over a relation of unknown columns ({sql})")
            elif column.lower() not in described:
                problems.append(f"{name}.{column}: made by {sql}, missing from {yml}")
            elif not described[column.lower()]["description"].strip():
                problems.append(f"{name}.{column}: no description ({yml})")
        for column in described.keys() - {column.lower() for column in made[unique_id]}:
            problems.append(f"{name}.{column}: in {yml}, not made by {sql}")
    return problems


def test_every_model_and_every_column_it_makes_is_described(built: dict[str, Any]) -> None:
    assert undocumented(built["manifest"]) == []


def test_a_column_the_sql_makes_but_the_yaml_lacks_is_named(built: dict[str, Any]) -> None:
    manifest = copy.deepcopy(built["manifest"])
    fct_orders = manifest["nodes"]["model.tributary.fct_orders"]
    code = fct_orders["compiled_code"]
    assert code.rstrip().endswith("select * from final")
    fct_orders["compiled_code"] = code.rstrip().removesuffix("select * from final") + (
        "select *, order_total - subtotal as discount from final"
    )
    del manifest["nodes"]["model.tributary.dim_customers"]["columns"]["lifetime_value"]
    manifest["nodes"]["model.tributary.fct_daily_revenue"]["columns"]["revenue"]["description"] = ""

    assert undocumented(manifest) == [
        "dim_customers.lifetime_value: made by models/marts/dim_customers.sql, missing from "
        "models/marts/_marts__models.yml",
        "fct_daily_revenue.revenue: no description (models/marts/_marts__models.yml)",
        "fct_orders.discount: made by models/marts/fct_orders.sql, missing from "
        "models/marts/_marts__models.yml",
    ]
