"""Daily exchange rates: 1 USD = ``rate`` units of ``quote``."""

from collections.abc import Iterable

import dlt
from dlt.extract import DltResource
from dlt.sources.rest_api import RESTAPIConfig, rest_api_resources

from ingestion.fx.settings import INITIAL_START_DATE, PAGE_SIZE


@dlt.source(name="fx")
def fx(
    base_url: str = dlt.config.value, window: tuple[str, str] | None = None
) -> Iterable[DltResource]:
    """``/exchange-rates`` with page-number pagination, fetched from the last loaded date on
    and merged on (date, quote), so the last day is refreshed rather than duplicated.

    ``window`` (ISO start, end) reloads the rates dated in [start, end) — a backfill: dlt
    neither reads nor moves the incremental state for it."""
    start, end = window or (INITIAL_START_DATE, None)
    config: RESTAPIConfig = {
        "client": {"base_url": base_url},
        "resources": [
            {
                "name": "exchange_rates",
                "primary_key": ["date", "quote"],
                "write_disposition": "merge",
                "columns": {
                    "date": {"data_type": "date", "nullable": False},
                    "quote": {"data_type": "text", "nullable": False},
                    "rate": {"data_type": "double", "nullable": False},
                },
                "endpoint": {
                    "path": "exchange-rates",
                    "data_selector": "data",
                    "paginator": {
                        "type": "page_number",
                        "base_page": 1,
                        "page_param": "page",
                        "total_path": "total_pages",
                    },
                    "params": {"page_size": PAGE_SIZE},
                    "incremental": {
                        "start_param": "start_date",
                        "cursor_path": "date",
                        "initial_value": start,
                        **({"end_param": "end_date", "end_value": end} if end else {}),
                    },
                },
            }
        ],
    }
    yield from rest_api_resources(config)
