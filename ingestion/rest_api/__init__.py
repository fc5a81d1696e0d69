"""HTTP API sources: dlt's declarative ``rest_api`` configuration, read from the sources file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dlt
from dlt.extract import DltResource, DltSource
from dlt.extract.incremental import Incremental
from dlt.sources.rest_api import rest_api_resources, rest_api_source
from dlt.sources.rest_api.config_setup import paginate_dependent_resource

from ingestion.declared import RestApiSource
from ingestion.rest_api.helpers import (
    TRIBUTARY_KEYS,
    accepted_values,
    child_cursors,
    expanded,
    parent_of,
    refusal_hook,
    resolved,
    windowed_resources,
    with_window,
)

__all__ = ["accepted_values", "rest_api", "windowed_resources"]


def rest_api(
    name: str, declaration: RestApiSource, window: tuple[str, str] | None = None
) -> DltSource:
    """The API's resources as dlt builds them from the declaration (references resolved).

    ``window`` (ISO start, end) reloads the records of every incremental resource whose cursor
    lies in [start, end) — a backfill: dlt neither reads nor moves the incremental state. A
    child resource with a cursor is read by ``read_from_run_start`` (see ``child_cursors``)."""
    client = resolved(declaration.client, f"sources.{name}.client")
    base_url = client.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"client.base_url: must be an http(s) URL, got {base_url!r}")
    defaults = resolved(declaration.resource_defaults, f"sources.{name}.resource_defaults")
    config: dict[str, Any] = {
        "client": client,
        "resource_defaults": defaults,
        "resources": [
            with_window(
                resolved(
                    {
                        key: value
                        for key, value in expanded(resource).items()
                        if key not in TRIBUTARY_KEYS
                    },
                    f"sources.{name}.resources.{expanded(resource)['name']}",
                ),
                defaults,
                window,
            )
            for resource in declaration.resources
        ],
    }
    for declared, resource in zip(declaration.resources, config["resources"], strict=True):
        endpoint = resource["endpoint"]
        actions = endpoint.get("response_actions") or (defaults.get("endpoint") or {}).get(
            "response_actions"
        )
        endpoint["response_actions"] = [*(actions or []), refusal_hook(name, declaration, declared)]
    cursors = child_cursors(config)
    if not cursors:
        return rest_api_source(config, name=name)  # type: ignore[arg-type]
    built: dict[str, DltResource] = {}
    for resource in rest_api_resources(config):  # type: ignore[arg-type]
        if resource.name in cursors:
            incremental, hints = cursors[resource.name]
            resource = read_from_run_start(resource, built, incremental, hints)
        elif resource.is_transformer:
            declared = next(
                r for r in config["resources"] if isinstance(r, dict) and r["name"] == resource.name
            )
            parent = parent_of(declared)
            if parent in cursors:  # its parent was read anew: take the records from that one
                resource.pipe_data_from(built[parent])
        built[resource.name] = resource
    return rest_api_source({"client": client, "resources": list(built.values())}, name=name)  # type: ignore[arg-type]


def read_from_run_start(
    resource: DltResource,
    built: dict[str, DltResource],
    incremental: dict[str, Any],
    hints: dict[str, Any],
) -> DltResource:
    """The child ``resource`` as dlt's rest_api built it, with its cursor bound once per run:
    every parent's request sends the value the run started from (``start_param``; and
    ``end_param`` in a window) and dlt's incremental step keeps the records from there on."""
    call = dict(resource.explicit_args)
    [parent] = {param.resolve_config["resource"] for param in call["resolved_params"]}
    start_param = incremental.get("start_param")
    end_param = incremental.get("end_param")
    cursor: Incremental[Any] = Incremental(
        **{k: v for k, v in incremental.items() if k not in ("start_param", "end_param")}
    )

    def read(items: list[dict[str, Any]]) -> Iterator[Any]:
        params = dict(call["params"] or {})
        if start_param:
            params[start_param] = cursor.start_value
        if end_param and cursor.end_value is not None:
            params[end_param] = cursor.end_value
        yield from paginate_dependent_resource(items, **{**call, "params": params})

    child = dlt.transformer(read, data_from=built[parent], **hints)
    child.apply_hints(incremental=cursor)
    return child
