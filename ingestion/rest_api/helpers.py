"""Private logic of the rest_api kind: backfill windows and the contract extensions."""

from __future__ import annotations

from typing import Any

from ingestion.declared import RestApiSource

# Keys tributary adds to a resource's declaration; dlt's rest_api never sees them.
TRIBUTARY_KEYS = frozenset({"accepted_values"})


def incremental_of(
    resource: dict[str, Any] | str, defaults: dict[str, Any]
) -> dict[str, Any] | None:
    if not isinstance(resource, dict):
        return None
    endpoint = resource.get("endpoint")
    endpoint = endpoint if isinstance(endpoint, dict) else {}
    return endpoint.get("incremental") or defaults.get("endpoint", {}).get("incremental")


def windowed_resources(declaration: RestApiSource) -> list[str]:
    """Resources a backfill window applies to: those with an incremental cursor sent as a
    request parameter."""
    names = []
    for resource in declaration.resources:
        incremental = incremental_of(resource, declaration.resource_defaults)
        if incremental and incremental.get("start_param") and isinstance(resource, dict):
            names.append(resource["name"])
    return names


def cursor_is_date(resource: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether the resource's cursor holds dates (its column hint says so), not timestamps."""
    incremental = incremental_of(resource, defaults) or {}
    cursor = incremental.get("cursor_path")
    columns = resource.get("columns") or defaults.get("columns") or {}
    hint = columns.get(cursor, {}) if isinstance(columns, dict) else {}
    return hint.get("data_type") == "date"


def with_window(
    resource: dict[str, Any] | str, defaults: dict[str, Any], window: tuple[str, str] | None
) -> dict[str, Any] | str:
    """The resource reading [start, end) of its cursor when ``window`` is given (dates or
    timestamps, as its cursor holds them); without one, reading on from its state with no end
    parameter sent."""
    incremental = incremental_of(resource, defaults)
    if not incremental or not isinstance(resource, dict):
        return resource
    incremental = dict(incremental)
    if window is None:
        incremental.pop("end_param", None)
        incremental.pop("end_value", None)
    else:
        start, end = window
        if not incremental.get("end_param"):
            raise ValueError(
                f"resource {resource['name']}: a backfill window needs `end_param` in its "
                "endpoint.incremental (the request parameter that bounds the cursor)"
            )
        if not cursor_is_date(resource, defaults):
            start, end = f"{start}T00:00:00Z", f"{end}T00:00:00Z"
        incremental["initial_value"], incremental["end_value"] = start, end
    endpoint = dict(resource.get("endpoint") or {})
    endpoint["incremental"] = incremental
    return {**resource, "endpoint": endpoint}


def accepted_values(declaration: RestApiSource) -> dict[str, dict[str, tuple[str, ...]]]:
    """Per resource, per field, the values the API promises (others are quarantined)."""
    return {
        resource["name"]: {
            column: tuple(values) for column, values in resource["accepted_values"].items()
        }
        for resource in declaration.resources
        if isinstance(resource, dict) and resource.get("accepted_values")
    }
