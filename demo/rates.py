"""Daily exchange rates as a deterministic random walk: 1 USD = ``rate`` units of the quote."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

# quote → (start level, lowest, highest)
WALKS = {"EUR": (0.90, 0.85, 0.95), "GBP": (0.78, 0.75, 0.82)}
DAILY_VOLATILITY = 0.003


def rate_walk(
    first: date, last: date, seed: int, start: dict[str, float] | None = None
) -> list[tuple[str, str, str, float]]:
    """(date, base, quote, rate) rows for every day from ``first`` to ``last`` inclusive, each
    quote walking on from ``start`` (the previous day's rate) or its usual level."""
    days = (last - first).days + 1
    if days <= 0:
        return []
    rows: list[tuple[str, str, str, float]] = []
    dates = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    for offset, (quote, (level, low, high)) in enumerate(WALKS.items()):
        rng = np.random.default_rng([seed, first.toordinal(), offset])
        steps = np.exp(np.cumsum(rng.normal(0.0, DAILY_VOLATILITY, days)))
        rates = np.clip((start or {}).get(quote, level) * steps, low, high).round(6)
        rows += [(day, "USD", quote, float(rate)) for day, rate in zip(dates, rates, strict=True)]
    return rows


def convert_cents(usd_cents: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """USD cents into minor units of the payment currency (rate 1 for USD), rounded half up."""
    return np.floor(usd_cents * rates + 0.5).astype(np.int64)
