"""Defaults for the payments API source."""

PAGE_LIMIT = 1_000
INITIAL_UPDATED_SINCE = "1970-01-01T00:00:00Z"
# What the provider promises: a payment outside these is quarantined, not loaded.
ACCEPTED_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "payments": {
        "currency": ("USD", "EUR", "GBP"),
        "status": ("succeeded", "failed", "pending"),
    }
}
