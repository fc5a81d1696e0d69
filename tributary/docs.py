"""dbt docs for analysts: one static page that describes every model and column, with the
column types of the marts as readers get them.

The catalog is read from the published file (``TRIBUTARY_PUBLISHED_PATH``), opened read-only,
never from the working warehouse: docs need no warehouse lock, never wait for a run and never
make one wait, and a BI tool holding the published file open does not block them either (a run
publishes a new file; the one the docs read is never written again). Before anything has been
published the page is built without a catalog. Everything dbt writes goes to
``<data dir>/docs``, never to ``dbt_project/target``, which the flows use.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import typer
import yaml

from tributary.settings import DBT_PROJECT_DIR, ConfigurationError, Settings, get_settings

PAGE = "static_index.html"
TARGET = "docs"
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8080


class DocsFailed(RuntimeError):
    """`dbt docs generate` exited with an error; dbt printed why."""


def docs_dir(settings: Settings) -> Path:
    return (settings.data_dir / "docs").resolve()


def docs_profile(catalog_from: Path | None) -> dict[str, Any]:
    """The project's ``prod`` output with ``catalog_from`` as the ``prod`` catalog, attached
    read-only (its other settings kept, e.g. the UTC session), or an empty in-memory database
    without one. Never the working warehouse."""
    profiles = yaml.safe_load((DBT_PROJECT_DIR / "profiles.yml").read_text())
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    outputs = profiles[project["profile"]]["outputs"]
    output = next((dict(o) for o in outputs.values() if o.get("type") == "duckdb"), None)
    if output is None:
        raise ConfigurationError(
            f"{DBT_PROJECT_DIR / 'profiles.yml'} has no DuckDB output; docs read the "
            "published DuckDB file through one"
        )
    output = {k: v for k, v in output.items() if k not in {"path", "database", "attach"}}
    output["path"] = ":memory:"
    if catalog_from is not None:
        # the catalog every relation names (profiles.yml), here the published file
        output["database"] = "prod"
        output["attach"] = [{"path": str(catalog_from), "alias": "prod", "read_only": True}]
    return {project["profile"]: {"target": TARGET, "outputs": {TARGET: output}}}


def build_docs(settings: Settings) -> Path:
    """Run `dbt docs generate --static` into the docs folder; returns the single-file page."""
    folder = docs_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    published = settings.published
    catalog_from = published if published.exists() else None
    if catalog_from is None:
        print(
            f"Nothing published yet at {published}: the page describes every model and "
            "column but shows no column types (a passing `elt` run publishes them)."
        )
    (folder / "profiles.yml").write_text(yaml.safe_dump(docs_profile(catalog_from)))
    command = [
        str(Path(sys.executable).parent / "dbt"),
        "docs",
        "generate",
        "--static",
        *(["--empty-catalog"] if catalog_from is None else []),
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(folder),
        "--target",
        TARGET,
        "--target-path",
        str(folder),
        "--log-path",
        str(folder / "logs"),
    ]
    if subprocess.run(command, check=False).returncode != 0:
        raise DocsFailed(f"dbt docs generate failed; its log is in {folder / 'logs'}")
    return folder / PAGE


def server(page: Path, port: int) -> ThreadingHTTPServer:
    """An HTTP server on loopback that answers every GET of ``/`` with ``page``, read afresh
    each time (a rebuild shows on reload); port 0 picks a free one."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/", f"/{PAGE}", "/index.html"):
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            body = page.read_bytes()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: one line per request would bury the URL."""

    return ThreadingHTTPServer((LOOPBACK, port), Page)


def main(
    serve: bool = typer.Option(True, help="Serve the page on 127.0.0.1 after building it."),
    port: int = typer.Option(DEFAULT_PORT, help="Port to serve on; 0 picks a free one."),
) -> None:
    """Build the dbt docs page (catalog from the published file) and serve it on loopback."""
    try:
        page = build_docs(get_settings())
    except DocsFailed as exc:
        print(exc, file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"Docs: {page}")
    if not serve:
        return
    try:
        httpd = server(page, port)
    except OSError as exc:
        print(f"Cannot serve on {LOOPBACK}:{port} ({exc}); try --port 0", file=sys.stderr)
        raise typer.Exit(1) from None
    with httpd, contextlib.suppress(KeyboardInterrupt):
        print(f"Serving the docs at http://{LOOPBACK}:{httpd.server_port}/ (Ctrl-C stops)")
        httpd.serve_forever()


if __name__ == "__main__":
    typer.run(main)
