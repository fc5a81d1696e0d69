"""Private logic of the rest_api kind: references, backfill windows and the contract
extensions."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from dlt.common.schema.utils import merge_columns
from dlt.extract.utils import ensure_table_schema_columns
from requests import HTTPError, Response

from ingestion.declared import Reference, RestApiSource, resolve
from tributary.settings import ConfigurationError

# Keys tributary adds to a resource's declaration; dlt's rest_api never sees them.
TRIBUTARY_KEYS = frozenset({"accepted_values"})
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
PARENT = re.compile(r"\{resources\.([^.}]+)\.")
# Keys of a resource that are not dlt.resource hints (dlt's rest_api reads them itself).
NOT_HINTS = frozenset({"endpoint", "include_from_parent", "processing_steps", "parallelized"})


def _is_reference(value: Mapping[str, Any]) -> bool:
    """``{env: NAME}`` or ``{secret: a.b}`` (with an optional ``default``), and not a mapping
    that only looks like one: ``columns: {env: {data_type: text}}`` declares a column."""
    return (
        bool(value.keys() & {"env", "secret"})
        and value.keys() <= {"env", "secret", "default"}
        and all(isinstance(part, str) for part in value.values())
    )


def resolved(value: Any, what: str) -> Any:
    """``value`` with every reference in it read now — in the client and in each resource
    alike (an endpoint's own ``auth``); a missing one is an error naming its key path."""
    if isinstance(value, Mapping):
        if _is_reference(value):
            return resolve(Reference.model_validate(value), what)
        return {key: resolved(child, f"{what}.{key}") for key, child in value.items()}
    if isinstance(value, list):
        return [resolved(child, f"{what}[{i}]") for i, child in enumerate(value)]
    return value


def expanded(resource: dict[str, Any] | str) -> dict[str, Any]:
    """The resource in its long form, as dlt reads the short ones: a name alone is a resource
    of that name and path; an endpoint given as a string is its path."""
    if isinstance(resource, str):
        return {"name": resource, "endpoint": {"path": resource}}
    endpoint = resource.get("endpoint", resource.get("name"))
    if isinstance(endpoint, str):
        return {**resource, "endpoint": {"path": endpoint}}
    return resource


def incremental_of(
    resource: dict[str, Any] | str, defaults: dict[str, Any]
) -> dict[str, Any] | None:
    """The resource's incremental cursor, its own or the resource_defaults' one."""
    endpoint = expanded(resource)["endpoint"]
    default_endpoint = defaults.get("endpoint")
    default_endpoint = default_endpoint if isinstance(default_endpoint, dict) else {}
    return endpoint.get("incremental") or default_endpoint.get("incremental")


def windowed_resources(declaration: RestApiSource) -> list[str]:
    """Resources a backfill window applies to: those with an incremental cursor sent as a
    request parameter."""
    names = []
    for resource in declaration.resources:
        incremental = incremental_of(resource, declaration.resource_defaults)
        if incremental and incremental.get("start_param"):
            names.append(expanded(resource)["name"])
    return names


def _column_hint(columns: Any, name: str) -> dict[str, Any]:
    """A column's hints from dlt's ``columns`` (a mapping by name, or a list of columns)."""
    if isinstance(columns, dict):
        hint = columns.get(name)
    elif isinstance(columns, list):
        hint = next((c for c in columns if isinstance(c, dict) and c.get("name") == name), None)
    else:
        hint = None
    return hint if isinstance(hint, dict) else {}


def cursor_is_date(resource: dict[str, Any] | str, defaults: dict[str, Any]) -> bool:
    """Whether the resource's cursor holds dates, not timestamps: its column hint says so (the
    resource's, else the defaults'), or, without a hint, its ``initial_value`` is a date."""
    incremental = incremental_of(resource, defaults) or {}
    cursor = incremental.get("cursor_path")
    for columns in (expanded(resource).get("columns"), defaults.get("columns")):
        data_type = _column_hint(columns, cursor).get("data_type") if cursor else None
        if data_type:
            return data_type == "date"
    initial = _as_text(incremental.get("initial_value"))
    return isinstance(initial, str) and DATE.fullmatch(initial) is not None


def _as_text(value: Any) -> Any:
    """A date or time as the API writes it (ISO 8601, UTC as ``Z``): YAML reads an unquoted
    ``2025-01-01`` as a date, which dlt cannot compare with the API's text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() == timedelta(0):
            return value.replace(tzinfo=None).isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def parent_of(resource: dict[str, Any] | str) -> str | None:
    """The resource whose records a child resource is read for (its path or params refer to
    it: ``{resources.<parent>.<field>}`` or ``type: resolve``), else None."""
    endpoint = expanded(resource)["endpoint"]
    params = endpoint.get("params")
    for value in [endpoint.get("path"), *(params.values() if isinstance(params, dict) else ())]:
        if isinstance(value, dict) and value.get("type") == "resolve":
            return str(value["resource"])
        if isinstance(value, str) and (found := PARENT.search(value)):
            return found.group(1)
    return None


def with_window(
    resource: dict[str, Any] | str, defaults: dict[str, Any], window: tuple[str, str] | None
) -> dict[str, Any] | str:
    """The resource reading [start, end) of its cursor when ``window`` is given (dates or
    timestamps, as its cursor holds them); without one, reading on from its state with no end
    parameter sent. A merged resource with a date cursor reads its last day again."""
    incremental = incremental_of(resource, defaults)
    if not incremental:
        return resource
    long = expanded(resource)
    incremental = {key: _as_text(value) for key, value in incremental.items()}
    if window is None:
        incremental.pop("end_param", None)
        incremental.pop("end_value", None)
    else:
        start, end = window
        if not incremental.get("end_param"):
            raise ValueError(
                f"resource {long['name']}: a backfill window needs `end_param` in its "
                "endpoint.incremental (the request parameter that bounds the cursor)"
            )
        if not cursor_is_date(long, defaults):
            start, end = f"{start}T00:00:00Z", f"{end}T00:00:00Z"
        incremental["initial_value"], incremental["end_value"] = start, end
    if cursor_is_date(long, defaults) and _merged(long, defaults):
        # A date cursor cannot move when its last day's records change: that day is read
        # again each run and merged, not skipped as records already seen (dlt's default).
        incremental.setdefault("primary_key", [])
    endpoint = {**long["endpoint"], "incremental": incremental}
    return {**long, "endpoint": endpoint}


def _merged(resource: dict[str, Any], defaults: dict[str, Any]) -> bool:
    disposition = resource.get("write_disposition", defaults.get("write_disposition"))
    if isinstance(disposition, dict):
        disposition = disposition.get("disposition")
    return disposition == "merge"


def child_cursors(config: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Takes the incremental cursor out of each child resource of a rest_api ``config`` (its
    resources as ``with_window`` left them) and returns, per such resource, the cursor and the
    resource's dlt hints (the defaults' merged with its own, as dlt's rest_api merges them).

    dlt re-binds a child's cursor each time a parent's records reach it, to the newest value
    seen so far in the run: a later parent's records older than an earlier parent's newest
    would be neither asked for nor kept (dlt-hub/dlt#2429, #2838). ``read_from_run_start``
    reads them with the cursor bound once."""
    defaults = config.get("resource_defaults") or {}
    cursors = {}
    for resource in config["resources"]:
        if not isinstance(resource, dict) or parent_of(resource) is None:
            continue
        incremental = resource["endpoint"].get("incremental")
        if incremental is None:
            continue
        resource["endpoint"]["incremental"] = None  # not the defaults' one either
        name = resource["name"]
        if incremental.get("start_param") and incremental.get("initial_value") is None:
            raise ValueError(
                f"resource {name}: a child resource's endpoint.incremental needs "
                "`initial_value` (the cursor its first run starts from)"
            )
        if "{incremental." in str(resource["endpoint"]):
            raise ValueError(
                f"resource {name}: a child resource sends its cursor with "
                "endpoint.incremental `start_param`/`end_param`, not {incremental.…} placeholders"
            )
        hints = {key: value for key, value in {**defaults, **resource}.items()}
        if isinstance(defaults.get("columns"), dict | list) and isinstance(
            resource.get("columns"), dict | list
        ):
            hints["columns"] = merge_columns(
                ensure_table_schema_columns(defaults["columns"]),
                ensure_table_schema_columns(resource["columns"]),
            )
        cursors[name] = (
            incremental,
            {key: value for key, value in hints.items() if key not in NOT_HINTS | TRIBUTARY_KEYS},
        )
    return cursors


def _auth_of(declaration: RestApiSource, resource: dict[str, Any] | str) -> tuple[str, Any]:
    """Where the resource's credentials are declared (key path) and the declaration there."""
    name = expanded(resource)["name"]
    endpoint = expanded(resource)["endpoint"]
    defaults = declaration.resource_defaults.get("endpoint")
    if "auth" in endpoint:
        return f"resources.{name}.endpoint.auth", endpoint["auth"]
    if isinstance(defaults, dict) and "auth" in defaults:
        return "resource_defaults.endpoint.auth", defaults["auth"]
    return "client.auth", declaration.client.get("auth")


def refusal_hook(
    source: str, declaration: RestApiSource, resource: dict[str, Any] | str
) -> Callable[..., None]:
    """A response hook that fails a request whose credentials the API refuses (401, 403) with
    an error naming the resource and where its credentials come from — never their values, nor
    the request's query (an API key may travel there, under any name the API chose).

    Any other error answer raises ``HTTPError`` as requests' own ``raise_for_status`` would
    (the same response attached, so dlt still retries 429 and 5xx and the status still
    decides what is transient), but naming the path only: dlt's fallback after a response
    action is that ``raise_for_status``, whose message carries the whole URL."""
    where, auth = _auth_of(declaration, resource)
    what = f"sources.{source}.resources.{expanded(resource)['name']}"
    references = (
        [
            f"{key} from {Reference.model_validate(value).describe()}"
            for key, value in auth.items()
            if isinstance(value, Mapping) and _is_reference(value)
        ]
        if isinstance(auth, Mapping)
        else []
    )
    check = f"check sources.{source}.{where}" + (
        f" ({', '.join(references)})" if references else ""
    )
    if auth is None:
        check = f"it declares no credentials (sources.{source}.client.auth)"

    def refused(response: Response, *args: Any, **kwargs: Any) -> None:
        if response.status_code < 400:
            return
        request = response.request
        path = urlsplit(request.url or "").path
        if response.status_code in (401, 403):
            raise ConfigurationError(
                f"{what}: the API refused the credentials (HTTP {response.status_code} "
                f"{response.reason} for {request.method} {path}): {check}"
            )
        raise HTTPError(
            f"{what}: HTTP {response.status_code} {response.reason} for {request.method} "
            f"{path} (its query is not shown: it may hold a credential)",
            response=response,
        )

    return refused


def accepted_values(declaration: RestApiSource) -> dict[str, dict[str, tuple[str, ...]]]:
    """Per resource, per field, the values the API promises (others are quarantined)."""
    return {
        resource["name"]: {
            column: tuple(values) for column, values in resource["accepted_values"].items()
        }
        for resource in declaration.resources
        if isinstance(resource, dict) and resource.get("accepted_values")
    }
