"""Defaults for the exchange-rates API source."""

PAGE_SIZE = 1_000
INITIAL_START_DATE = "1970-01-01"
