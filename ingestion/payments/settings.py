"""Defaults for the payments API source."""

PAGE_LIMIT = 1_000
INITIAL_UPDATED_SINCE = "1970-01-01T00:00:00Z"
