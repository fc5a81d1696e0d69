"""The run report: what one `elt` run loaded and built, as markdown for a Prefect artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ingestion.pipeline import SourceLoad
from tributary.dbt import DbtSummary


@dataclass(frozen=True)
class RunReport:
    warehouse: Path
    loads: list[SourceLoad] = field(default_factory=list)
    dbt: DbtSummary | None = None
    seconds: float = 0.0

    def to_markdown(self) -> str:
        lines = [
            "# tributary `elt` run",
            "",
            f"Warehouse: `{self.warehouse}` · {self.seconds:.1f} s",
            "",
            "## Rows loaded",
            "",
            "| dataset | table | loaded | new | updated |",
            "|---|---|---:|---:|---:|",
        ]
        for load in self.loads:
            for table in load.tables:
                lines.append(
                    f"| {load.dataset} | {table.table} | {table.loaded} | {table.new} "
                    f"| {table.updated} |"
                )
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
        return "\n".join(lines) + "\n"
