"""Shared fixtures: one Prefect server per test session, and services that must be up in CI."""

from __future__ import annotations

import os

# Before Prefect is imported anywhere: no telemetry (no internet here) and time for the
# temporary server's first database migration.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server for the whole session: each start costs ~7 s."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.testing.utilities import prefect_test_harness

    from tributary.lock import WAREHOUSE_LIMIT

    with prefect_test_harness(server_startup_timeout=120):
        # As `prefect gcl create` does on a real server: the warehouse lock is strict.
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=WAREHOUSE_LIMIT, limit=1)
            )
        yield
