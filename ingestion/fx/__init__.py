"""Daily exchange rates: 1 USD = ``rate`` units of ``quote``."""

from collections.abc import Iterable

import dlt
from dlt.extract import DltResource
from dlt.sources.rest_api import RESTAPIConfig, rest_api_resources

from ingestion.fx.settings import INITIAL_START_DATE, PAGE_SIZE


@dlt.source(name="fx")
def fx(base_url: str = dlt.config.value) -> Iterable[DltResource]:
    """``/exchange-rates`` with page-number pagination, fetched from the last loaded date on
    and merged on (date, quote), so the last day is refreshed rather than duplicated."""
    config: RESTAPIConfig = {
        "client": {"base_url": base_url},
        "resources": [
            {
                "name": "exchange_rates",
                "primary_key": ["date", "quote"],
                "write_disposition": "merge",
                "columns": {"date": {"data_type": "date"}, "rate": {"data_type": "double"}},
                "endpoint": {
                    "path": "exchange-rates",
                    "data_selector": "data",
                    "paginator": {
                        "type": "page_number",
                        "base_page": 1,
                        "page_param": "page",
                        "total_path": "total_pages",
                    },
                    "params": {
                        "page_size": PAGE_SIZE,
                        "start_date": {
                            "type": "incremental",
                            "cursor_path": "date",
                            "initial_value": INITIAL_START_DATE,
                        },
                    },
                },
            }
        ],
    }
    yield from rest_api_resources(config)
