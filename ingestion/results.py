"""What a run of a source did: the result types every layer above the runner reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingestion.drift import SchemaChange
from ingestion.quarantine import QuarantineCount


@dataclass(frozen=True)
class TableLoad:
    """What one load did to one raw table: ``loaded`` rows written (re-read rows included),
    of which ``new`` keys and ``updated`` changed rows; ``deleted`` rows removed (soft deletes
    and keys gone from the source)."""

    table: str
    loaded: int
    new: int
    updated: int
    deleted: int = 0
    quarantined: int = 0


@dataclass(frozen=True)
class SourceLoad:
    """What one run of a source did: per table, and the rows it kept out of raw."""

    source: str
    dataset: str
    load_ids: list[str]
    tables: list[TableLoad] = field(default_factory=list)
    resumed: bool = False
    quarantined: list[QuarantineCount] = field(default_factory=list)
    schema_changes: list[SchemaChange] = field(default_factory=list)
    # Loads an earlier run made and was killed before reporting, counted in ``tables`` here
    carried: list[str] = field(default_factory=list)

    @property
    def rows_loaded(self) -> int:
        return sum(table.loaded for table in self.tables)

    @property
    def rows_quarantined(self) -> int:
        return sum(count.rows for count in self.quarantined)
