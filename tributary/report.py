"""The run report: what one `elt` run loaded, built and published, as markdown for a Prefect
artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ingestion.results import SourceLoad
from tributary.dbt import DbtSummary
from tributary.publish import NotPublished, Publication


@dataclass(frozen=True)
class Freshness:
    """When a raw dataset last received a completed load."""

    dataset: str
    last_loaded_at: datetime | None
    checked_at: datetime

    @property
    def age_hours(self) -> float | None:
        if self.last_loaded_at is None:
            return None
        return (self.checked_at - self.last_loaded_at).total_seconds() / 3600


@dataclass(frozen=True)
class RunReport:
    warehouse: Path
    loads: list[SourceLoad] = field(default_factory=list)
    dbt: DbtSummary | None = None
    seconds: float = 0.0
    freshness: list[Freshness] = field(default_factory=list)
    published: Publication | NotPublished | None = None

    def warnings(self) -> list[str]:
        """What a completed run must still tell someone: rows quarantined for the first time
        (a row sent again every run is told once), and source columns that changed."""
        lines = [
            f"{load.dataset}.{count.table}: {count.new_rows} row(s) quarantined: "
            f"{count.reason} (keys: {', '.join(count.example_keys) or 'none'})"
            for load in self.loads
            for count in load.quarantined
            if count.new_rows
        ]
        lines += [
            f"schema drift: {load.dataset}.{change.describe()}"
            for load in self.loads
            for change in load.schema_changes
        ]
        return lines

    def to_markdown(self) -> str:
        lines = [
            "# tributary `elt` run",
            "",
            f"Warehouse: `{self.warehouse}` · {self.seconds:.1f} s",
            "",
            "## Rows loaded",
            "",
            "| dataset | table | loaded | new | updated | deleted | quarantined |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for load in self.loads:
            for table in load.tables:
                lines.append(
                    f"| {load.dataset} | {table.table} | {table.loaded} | {table.new} "
                    f"| {table.updated} | {table.deleted} | {table.quarantined} |"
                )
        quarantined = [(load, count) for load in self.loads for count in load.quarantined]
        if quarantined:
            lines += [
                "",
                "## Quarantined rows",
                "",
                "Kept out of raw (`quarantine.rows`): why, how many (first seen this run), "
                "example keys.",
                "",
                "| dataset | table | reason | rows | new | keys |",
                "|---|---|---|---:|---:|---|",
            ]
            lines += [
                f"| {load.dataset} | {count.table} | {count.reason} | {count.rows} "
                f"| {count.new_rows} | {' '.join(f'`{key}`' for key in count.example_keys)} |"
                for load, count in quarantined
            ]
        changes = [(load, change) for load in self.loads for change in load.schema_changes]
        if changes:
            lines += [
                "",
                "## Schema changes",
                "",
                "Source columns that changed since the last load (reported once).",
                "",
                "| dataset | table | column | change | detail |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {load.dataset} | {change.table} | {change.column} | {change.change} "
                f"| {change.detail} |"
                for load, change in changes
            ]
        if self.dbt is not None:
            lines += [
                "",
                "## dbt",
                "",
                f"`dbt {self.dbt.command}`: {self.dbt.models_built} models built, "
                f"{self.dbt.tests_passed} tests passed.",
                "",
                "| status | nodes |",
                "|---|---:|",
            ]
            lines += [f"| {status} | {n} |" for status, n in sorted(self.dbt.statuses.items())]
            # Failures first, then the slowest: what a reader of a bad run looks for.
            order = {"error": 0, "fail": 1, "warn": 2, "skipped": 3}
            nodes = sorted(self.dbt.nodes, key=lambda n: (order.get(n.status, 4), -n.seconds))
            lines += ["", "| node | type | status | seconds |", "|---|---|---|---:|"]
            lines += [
                f"| {node.unique_id.split('.', 2)[-1]} | {node.resource_type} | {node.status} "
                f"| {node.seconds:.2f} |"
                for node in nodes
            ]
        if self.published is not None:
            lines += ["", "## Published", "", *_published_lines(self.published)]
        if self.freshness:
            lines += [
                "",
                "## Source freshness",
                "",
                "| dataset | last load completed (UTC) | age (hours) |",
                "|---|---|---:|",
            ]
            for fresh in self.freshness:
                when = (
                    fresh.last_loaded_at.strftime("%Y-%m-%d %H:%M")
                    if fresh.last_loaded_at
                    else "never"
                )
                age = f"{fresh.age_hours:.1f}" if fresh.age_hours is not None else "-"
                lines.append(f"| {fresh.dataset} | {when} | {age} |")
        return "\n".join(lines) + "\n"


def _published_lines(published: Publication | NotPublished) -> list[str]:
    """What readers of the published file get after this run, and where each table came from."""
    if isinstance(published, NotPublished):
        return [f"Nothing: {published}."]
    lines = [
        f"Readers opening `{published.link}` get {published.describe()}:",
        "",
        "| table | rows | from |",
        "|---|---:|---|",
    ]
    lines += [f"| {table.relation} | {table.rows} | {table.origin} |" for table in published.tables]
    return lines
