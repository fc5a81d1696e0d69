"""`tributary dev …`: an analyst's own dev warehouse — made in seconds, building only what
changed and reading everything else from production's published file (tributary/dev.py)."""

from __future__ import annotations

from pathlib import Path

import typer

dev_app = typer.Typer(
    no_args_is_help=True,
    help="Your dev warehouse: build what you changed, read the rest from production.",
)
PROJECT = typer.Option(
    None, "--project-dir", help="The dbt project (default: this checkout's dbt_project/)."
)


def _settings():  # type: ignore[no-untyped-def]
    from tributary.settings import get_settings

    return get_settings()


def _project(project_dir: Path | None) -> Path:
    from tributary.settings import DBT_PROJECT_DIR

    return (project_dir or DBT_PROJECT_DIR).resolve()


def _refuse(exc: Exception) -> typer.Exit:
    typer.echo(str(exc), err=True)
    return typer.Exit(code=1)


@dev_app.command("init")
def dev_init(
    project_dir: Path | None = PROJECT,
    days: int | None = typer.Option(
        None, help="Dev-data limit: only the last N days of orders and what belongs to them."
    ),
) -> None:
    """Make your dev warehouse (or refresh its views): seconds, whatever production's size."""
    from tributary import dev
    from tributary.settings import ConfigurationError

    settings = _settings()
    try:
        result = dev.init(settings, _project(project_dir), days=days)
    except ConfigurationError as exc:
        raise _refuse(exc) from None
    if result.returncode != 0:
        raise typer.Exit(code=result.returncode)
    typer.echo(
        f"Dev warehouse {dev.dev_path(settings)}: views over production's published raw "
        f"tables; production read from {settings.published}. Next: edit a model, then "
        "`tributary dev build`."
    )


@dev_app.command(
    "build", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def dev_build(ctx: typer.Context, project_dir: Path | None = PROJECT) -> None:
    """`dbt build` of what you changed (state:modified+) into your dev warehouse, deferring
    everything else to production's published models. Other arguments go to dbt as they are
    (`--select …` replaces state:modified+, `--vars …`, `--full-refresh`)."""
    from tributary import dev
    from tributary.settings import ConfigurationError

    settings = _settings()
    try:
        result = dev.build(settings, ctx.args, _project(project_dir))
    except ConfigurationError as exc:
        raise _refuse(exc) from None
    raise typer.Exit(code=result.returncode)


@dev_app.command("status")
def dev_status() -> None:
    """Where your dev warehouse is, which production version it reads, what it holds."""
    from tributary import dev
    from tributary.publish import current

    settings = _settings()
    path = dev.dev_path(settings)
    published = current(settings)
    typer.echo(
        f"dev warehouse: {path}{'' if path.is_file() else ' (not made yet: tributary dev init)'}"
    )
    typer.echo(
        f"production: {settings.published}"
        + (f" ({published.describe()})" if published else " (nothing published yet)")
    )
    for relation, kind in dev.describe(settings):
        typer.echo(f"  {kind:5}  {relation}")
