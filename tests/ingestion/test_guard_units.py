"""The guards' pieces without a pipeline: the row checks on arrow batches and on dict rows,
the delete guard's arithmetic, and the quarantine journal under parallel extraction."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from ingestion.guards import Contract, RowGuard, check_deletes, value_reasons
from ingestion.quarantine import Journal, Rejected
from tributary.settings import Settings

LIMIT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_arrow_rows_without_a_key_or_from_the_future_are_rejected(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    guard = RowGuard(
        Contract(
            table="orders",
            keys=["order_id"],
            cursor="updated_at",
            cursor_limit=LIMIT,
            accepted_values={"currency": ("USD", "EUR")},
        ),
        journal,
    )
    batch = pa.table(
        {
            "order_id": [1, None, 3, 4],
            "currency": pa.array(["USD", "EUR", "XYZ", "EUR"]).dictionary_encode(),
            "updated_at": pa.array(
                [datetime(2026, 11, 27, 12, 0), datetime(2026, 1, 1), None, datetime(2099, 1, 1)],
                pa.timestamp("us"),
            ),
        }
    )
    kept = guard(batch)
    assert kept["order_id"].to_pylist() == [1]  # at the limit itself is not beyond it
    journal.seal("1234.5")
    reasons = {line["key"]: line["reason"] for line in journal.lines()}
    assert reasons == {
        '{"order_id":null}': "primary key order_id is missing",
        '{"order_id":3}': "currency 'XYZ' is not one of USD, EUR",
        '{"order_id":4}': "cursor updated_at 2099-01-01 00:00:00 is beyond now plus the "
        "tolerance (TRIBUTARY_CURSOR_FUTURE_TOLERANCE_SECONDS)",
    }
    assert {line["load_id"] for line in journal.lines()} == {"1234.5"}


def test_a_clean_arrow_batch_passes_untouched(tmp_path: Path) -> None:
    guard = RowGuard(
        Contract(table="t", keys=["id"], cursor="day", cursor_limit=LIMIT), Journal(tmp_path)
    )
    batch = pa.table({"id": [1, 2], "day": pa.array([date(2026, 11, 27), None], pa.date32())})
    assert guard(batch) is batch
    assert guard.rejected == 0


@pytest.mark.parametrize(
    ("row", "reasons"),
    [
        ({"id": "a", "amount": 5, "at": "2026-11-27T11:00:00Z"}, []),
        ({"id": "a", "amount": "5", "at": "2026-11-27T11:00:00Z"}, []),  # dlt coerces it
        (
            {"id": "a", "amount": "5.5", "at": "2026-11-27T11:00:00Z"},
            ["amount '5.5' is not a bigint"],
        ),
        (
            {"id": "a", "amount": 2**63, "at": "2026-11-27T11:00:00Z"},
            [f"amount {2**63} is not a bigint"],
        ),
        ({"id": "a", "at": "2026-11-27T11:00:00Z"}, ["amount is missing"]),
        ({"amount": 5, "at": "2026-11-27T11:00:00Z"}, ["primary key id is missing"]),
        ({"id": "a", "amount": 5}, ["cursor at is missing"]),
        ({"id": "a", "amount": 5, "at": "soon"}, ["cursor at 'soon' is not a date or time"]),
        (
            {"id": "a", "amount": 5, "at": "2026-11-27T16:00:00+05:00"},
            [],  # 11:00 UTC: not beyond 12:00 UTC
        ),
        (
            {"id": "a", "amount": 5, "at": "2026-11-28"},
            [
                "cursor at 2026-11-28 is beyond now plus the tolerance "
                "(TRIBUTARY_CURSOR_FUTURE_TOLERANCE_SECONDS)"
            ],
        ),
    ],
)
def test_dict_rows_are_checked_against_the_declared_columns(
    row: dict[str, object], reasons: list[str]
) -> None:
    contract = Contract(
        table="payments",
        keys=["id"],
        cursor="at",
        cursor_limit=LIMIT,
        columns={"amount": {"data_type": "bigint", "nullable": False}},
    )
    assert value_reasons(contract, row) == reasons


@pytest.mark.parametrize(
    ("deleting", "rows", "stops"),
    [
        (0, 100, False),
        (10, 100, False),  # at the floor
        (11, 100, True),  # beyond the floor and 10 %
        (11, 1000, False),  # beyond the floor, within 10 %
        (1, 1, True),  # a table emptied
        (3, 3, True),
    ],
)
def test_the_delete_guard(deleting: int, rows: int, stops: bool, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    message = check_deletes("raw_shop.orders", deleting, rows, settings)
    assert (message is not None) == stops
    if message:
        assert message.startswith(f"raw_shop.orders: this run would delete {deleting} of its")


def test_the_journal_takes_rows_from_parallel_tables_into_one_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path)

    def reject(table: str) -> None:
        for index in range(200):
            journal.append([Rejected(table, "why", {"id": index}, {"id": index})])

    threads = [threading.Thread(target=reject, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal.seal("99.1")
    assert [path.name for path in journal.files()] == ["99.1.jsonl"]
    lines = list(journal.lines())
    assert len(lines) == 800 and {line["load_id"] for line in lines} == {"99.1"}
