"""HTTP API sources: dlt's declarative ``rest_api`` configuration, read from the sources file."""

from __future__ import annotations

import copy
from typing import Any

from dlt.extract import DltSource
from dlt.sources.rest_api import rest_api_source

from ingestion.declared import RestApiSource, resolve_all
from ingestion.rest_api.helpers import (
    TRIBUTARY_KEYS,
    accepted_values,
    windowed_resources,
    with_window,
)

__all__ = ["accepted_values", "rest_api", "windowed_resources"]


def rest_api(
    name: str, declaration: RestApiSource, window: tuple[str, str] | None = None
) -> DltSource:
    """The API's resources as dlt builds them from the declaration (references resolved).

    ``window`` (ISO start, end) reloads the records of every incremental resource whose cursor
    lies in [start, end) — a backfill: dlt neither reads nor moves the incremental state."""
    client = resolve_all(declaration.client, f"sources.{name}.client")
    base_url = client.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"client.base_url: must be an http(s) URL, got {base_url!r}")
    config: dict[str, Any] = {
        "client": client,
        "resource_defaults": copy.deepcopy(declaration.resource_defaults),
        "resources": [
            {key: value for key, value in resource.items() if key not in TRIBUTARY_KEYS}
            if isinstance(resource, dict)
            else resource
            for resource in copy.deepcopy(declaration.resources)
        ],
    }
    config["resources"] = [
        with_window(resource, config["resource_defaults"], window)
        for resource in config["resources"]
    ]
    return rest_api_source(config, name=name)  # type: ignore[arg-type]
