"""`tributary sources …`: the declared sources — their schema, list, a check against the real
systems, and declarations discovered from a database."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

sources_app = typer.Typer(no_args_is_help=True, help="The sources declared in sources.yml.")
console = Console()


def _settings():  # type: ignore[no-untyped-def]
    from tributary.settings import get_settings

    return get_settings()


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=code)


@sources_app.command("schema")
def schema(
    output: Path = typer.Option(
        Path("sources.schema.json"), "--output", "-o", help="Where to write it; - for stdout."
    ),
) -> None:
    """Write the sources file's JSON Schema (editors complete and check sources.yml with it)."""
    from ingestion.declared import SourcesFile

    text = json.dumps(SourcesFile.model_json_schema(by_alias=True), indent=2) + "\n"
    if str(output) == "-":
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    typer.echo(f"Wrote {output}")


@sources_app.command("list")
def list_sources() -> None:
    """The declared sources: name, kind, tags, what they read."""
    from ingestion import registry
    from ingestion.declared import SqlDatabaseSource
    from tributary.settings import ConfigurationError

    settings = _settings()
    try:
        declared = registry.sources_file(settings).sources
    except ConfigurationError as exc:
        raise _fail(str(exc), 2) from None
    table = Table("source", "type", "tags", "reads", title=str(settings.sources_path))
    for name, source in declared.items():
        if isinstance(source, SqlDatabaseSource):
            reads = ", ".join(source.tables) + (
                f" (except {', '.join(source.exclude)})" if source.exclude else ""
            )
        else:
            reads = ", ".join(
                r if isinstance(r, str) else str(r.get("name")) for r in source.resources
            )
        table.add_row(name, source.type, ", ".join(source.tags) or "—", reads)
    console.print(table)


@sources_app.command("check")
def check(
    source: list[str] = typer.Argument(None, help="Sources to check; default all."),
    probe: bool = typer.Option(True, help="Read the first page of each API resource."),
) -> None:
    """Connect to each source and print, per table, what a run will do. Exit 1 naming each
    problem if any source would fail."""
    from ingestion import registry
    from ingestion.catalogue import check_source
    from tributary.settings import ConfigurationError

    settings = _settings()
    try:
        names = source or registry.source_names(settings)
        registry.check_names(names, settings, "tributary sources check")
    except ConfigurationError as exc:
        raise _fail(str(exc), 2) from None
    problems: list[str] = []
    for name in names:
        result = check_source(name, settings, probe=probe)
        table = Table(
            "table", "mode", "key", "cursor", "deletes", "notes",
            title=f"{name} ({result.kind}) — {result.target or '?'}",
        )  # fmt: skip
        for row in result.tables:
            table.add_row(row.table, row.mode, row.key, row.cursor, row.deletes, row.notes)
        if result.tables:
            console.print(table)
        problems += result.problems
    for problem in problems:
        typer.echo(f"problem: {problem}", err=True)
    if problems:
        raise typer.Exit(code=1)
    console.print(f"{len(names)} source(s) ready.")


@sources_app.command("discover")
def discover(
    url: str = typer.Argument(..., help="A SQLAlchemy database URL, or an API's http(s) URL."),
    name: str = typer.Option("mydb", help="Name for the new source."),
    schema_name: str = typer.Option(None, "--schema", help="Database schema to read."),
) -> None:
    """Print a ready-to-paste declaration for a database (keys and cursors from its catalogue),
    or a commented skeleton for an API."""
    from ingestion.catalogue import api_skeleton, discover_database

    if url.startswith(("http://", "https://")):
        typer.echo(api_skeleton(url, name), nl=False)
        return
    try:
        typer.echo(discover_database(url, schema_name, name), nl=False)
    except Exception as exc:
        from ingestion.catalogue import _first_line

        raise _fail(f"Cannot read the database: {_first_line(exc)}") from None
