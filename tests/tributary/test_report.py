from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingestion.drift import SchemaChange
from ingestion.pipeline import SourceLoad, TableLoad
from ingestion.quarantine import QuarantineCount
from tributary.dbt import DbtSummary, NodeResult
from tributary.publish import NotPublished, Publication, PublishedTable
from tributary.report import Freshness, RunReport


def test_report_lists_every_table_and_the_dbt_outcome() -> None:
    report = RunReport(
        warehouse=Path("/w.duckdb"),
        loads=[
            SourceLoad(
                source="shop",
                dataset="raw_shop",
                load_ids=["1"],
                tables=[
                    TableLoad("orders", loaded=10, new=7, updated=3),
                    TableLoad("customers", 0, 0, 0),
                ],
            )
        ],
        dbt=DbtSummary(
            command="build",
            nodes=[
                NodeResult("model.tributary.fct_orders", "model", "success", 0.5),
                NodeResult("test.tributary.unique_x", "test", "pass", 0.1),
                NodeResult("test.tributary.not_null_x", "test", "fail", 0.1, "1 row"),
            ],
        ),
        seconds=3.0,
    )
    markdown = report.to_markdown()
    assert "| raw_shop | orders | 10 | 7 | 3 |" in markdown
    assert "| raw_shop | customers | 0 | 0 | 0 |" in markdown
    assert "1 models built, 1 tests passed" in markdown
    assert "| fail | 1 |" in markdown
    lines = markdown.splitlines()
    failed = lines.index("| not_null_x | test | fail | 0.10 |")
    assert failed < lines.index("| fct_orders | model | success | 0.50 |")  # failures first


def test_report_shows_source_freshness() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    report = RunReport(
        warehouse=Path("/w.duckdb"),
        freshness=[
            Freshness("raw_fx", now - timedelta(hours=30), now),
            Freshness("raw_shop", None, now),
        ],
    )
    markdown = report.to_markdown()
    assert "| raw_fx | 2026-11-25 06:00 | 30.0 |" in markdown
    assert "| raw_shop | never | - |" in markdown


def test_report_says_what_readers_get_or_keep() -> None:
    publication = Publication(
        version="published-20261126T120000000000Z.duckdb",
        path=Path("/data/published/published-20261126T120000000000Z.duckdb"),
        link=Path("/data/published.duckdb"),
        published_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        flow_run_id="run-1",
        dbt_invocation_id="inv-1",
        tables=[
            PublishedTable("marts.fct_orders", 10_000, "built by this build"),
            PublishedTable("marts.dim_customers", 1_312, "carried over from v0"),
        ],
    )
    markdown = RunReport(warehouse=Path("/w.duckdb"), published=publication).to_markdown()
    assert "## Published" in markdown
    assert (
        "Readers opening `/data/published.duckdb` get version "
        "published-20261126T120000000000Z.duckdb, published at 2026-11-26 12:00:00 UTC by run "
        "run-1:" in markdown
    )
    assert "| marts.fct_orders | 10000 | built by this build |" in markdown
    assert "| marts.dim_customers | 1312 | carried over from v0 |" in markdown

    kept = NotPublished("1 failed, 4 skipped", publication)
    markdown = RunReport(warehouse=Path("/w.duckdb"), published=kept).to_markdown()
    assert (
        "Nothing: not published: 1 failed, 4 skipped; readers keep the set published at "
        "2026-11-26 12:00:00 UTC by run run-1" in markdown
    )


def test_report_names_the_quarantined_rows() -> None:
    report = RunReport(
        warehouse=Path("/w.duckdb"),
        loads=[
            SourceLoad(
                source="shop",
                dataset="raw_shop",
                load_ids=["1"],
                tables=[TableLoad("orders", loaded=5, new=1, updated=4, quarantined=1)],
                quarantined=[
                    QuarantineCount(
                        table="orders",
                        reason="cursor updated_at 2099-01-01 00:00:00 is beyond now",
                        rows=1,
                        new_rows=1,
                        example_keys=('{"order_id":7}',),
                    )
                ],
            )
        ],
    )
    markdown = report.to_markdown()
    assert "| raw_shop | orders | 5 | 1 | 4 | 0 | 1 |" in markdown
    assert (
        "| raw_shop | orders | cursor updated_at 2099-01-01 00:00:00 is beyond now | 1 | 1 "
        '| `{"order_id":7}` |'
    ) in markdown


def test_report_lists_schema_changes() -> None:
    report = RunReport(
        warehouse=Path("/w.duckdb"),
        loads=[
            SourceLoad(
                source="shop",
                dataset="raw_shop",
                load_ids=["1"],
                schema_changes=[
                    SchemaChange("orders", "order_status", "renamed", "was status, both text")
                ],
            )
        ],
    )
    assert (
        "| raw_shop | orders | order_status | renamed | was status, both text |"
        in report.to_markdown()
    )
