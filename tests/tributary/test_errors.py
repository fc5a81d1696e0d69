import os
from collections.abc import Callable

import adbc_driver_postgresql.dbapi as adbc_postgresql
import duckdb
import httpx
import psycopg
import pymysql
import pytest
import requests
from sqlalchemy import create_engine

from tributary.errors import is_transient
from tributary.settings import ConfigurationError


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} error", response=response)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_server_errors_and_rate_limits_are_transient(status: int) -> None:
    assert is_transient(_http_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_permanent(status: int) -> None:
    assert not is_transient(_http_error(status))


def test_a_wrapped_cause_is_found() -> None:
    try:
        try:
            raise _http_error(401)
        except requests.HTTPError as inner:
            raise RuntimeError("pipeline step failed") from inner
    except RuntimeError as outer:
        assert not is_transient(outer)


def test_dlt_step_failure_exposes_its_exception() -> None:
    class StepFailed(Exception):
        def __init__(self, exception: BaseException) -> None:
            super().__init__("step failed")
            self.exception = exception

    assert is_transient(StepFailed(requests.ConnectionError("connection refused")))


def test_network_faults_and_a_locked_warehouse_are_transient() -> None:
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(httpx.ConnectError("reset"))
    assert is_transient(duckdb.IOException('Could not set lock on file "w.duckdb"'))


def test_configuration_errors_are_permanent_even_when_wrapping_network_errors() -> None:
    error = ConfigurationError("sources.shop.credentials: no SQLite database at /data/shop.sqlite")
    error.__cause__ = ConnectionError("refused")
    assert not is_transient(error)


def test_unknown_errors_are_not_retried() -> None:
    assert not is_transient(ValueError("a bug"))


def _raised(connect: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as failure:
        connect()
    return failure.value


@pytest.mark.integration
def test_a_source_database_that_is_away_is_transient_a_refused_login_is_not() -> None:
    """Real driver errors, from the servers on this machine (port 1 has nothing listening)."""
    away = [
        _raised(lambda: psycopg.connect("postgresql://postgres@127.0.0.1:1/postgres")),
        _raised(lambda: adbc_postgresql.connect("postgresql://postgres@127.0.0.1:1/postgres")),
        _raised(lambda: pymysql.connect(host="127.0.0.1", port=1, user="root")),
    ]
    assert all(is_transient(error) for error in away), away
    try:
        refused = [
            _raised(lambda: psycopg.connect("postgresql://no_such_role@127.0.0.1/postgres")),
            _raised(lambda: pymysql.connect(host="127.0.0.1", user="root", password="wrong")),
        ]
        with psycopg.connect("postgresql://postgres@127.0.0.1/postgres") as connection:
            refused.append(_raised(lambda: connection.execute("select * from no_such_table")))
    except psycopg.OperationalError as exc:  # the servers themselves are down
        if os.environ.get("CI"):
            raise
        pytest.skip(f"database servers not running: {exc}")
    assert not any(is_transient(error) for error in refused), refused
    # as SQLAlchemy wraps it
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/postgres")
    assert is_transient(_raised(engine.connect))
