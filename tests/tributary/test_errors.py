import duckdb
import httpx
import pytest
import requests

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
    error = ConfigurationError("TRIBUTARY_SHOP_DB_PATH: no shop database")
    error.__cause__ = ConnectionError("refused")
    assert not is_transient(error)


def test_unknown_errors_are_not_retried() -> None:
    assert not is_transient(ValueError("a bug"))
