"""`python -m demo`: generate, move forward, or serve the sample shop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.console import Console

from demo import paths
from tributary.settings import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


@app.command()
def generate(
    orders: int = typer.Option(10_000, help="Orders to generate (≥ 1M for benchmarks)."),
    seed: int = typer.Option(42, help="Same seed, same shop."),
    replace: bool = typer.Option(False, help="Overwrite an existing shop."),
    shop_url: str | None = typer.Option(
        None, help="SQLAlchemy URL; default TRIBUTARY_SHOP_URL, else data/shop.sqlite."
    ),
    api_db: Path | None = typer.Option(None, help="Payments store; default from settings."),
) -> None:
    """Create the shop database and the payment provider's store."""
    from demo.generate import generate as run

    settings = get_settings()
    started = time.monotonic()
    summary = run(
        shop_url or paths.shop_url(settings),
        api_db or settings.demo_api_db,
        orders=orders,
        seed=seed,
        replace=replace,
        progress=True,
    )
    console.print(f"Generated in {time.monotonic() - started:.1f} s: {summary}")


@app.command()
def simulate(
    seed: int = typer.Option(0, help="Seed of this step."),
    shop_url: str | None = typer.Option(
        None, help="SQLAlchemy URL; default TRIBUTARY_SHOP_URL, else data/shop.sqlite."
    ),
    api_db: Path | None = typer.Option(None, help="Payments store; default from settings."),
    deletes: bool = typer.Option(
        False, help="Also soft-delete customers and products and hard-delete unpaid orders."
    ),
) -> None:
    """Move the shop forward one step: new orders, status changes, late updates, refunds."""
    from demo.simulate import simulate as run

    settings = get_settings()
    result = run(
        shop_url or paths.shop_url(settings),
        api_db or settings.demo_api_db,
        seed=seed,
        deletes=deletes,
    )
    console.print(result.describe())


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Loopback by default."),
    port: int = typer.Option(8765),
    api_db: Path | None = typer.Option(None, help="Payments store; default from settings."),
) -> None:
    """Serve the payments and exchange-rates API (token from TRIBUTARY_DEMO_API_TOKEN)."""
    import uvicorn

    from demo.api import create_app

    token = os.environ.get("TRIBUTARY_DEMO_API_TOKEN")
    if not token:
        raise typer.BadParameter("set TRIBUTARY_DEMO_API_TOKEN to the bearer token to accept")
    uvicorn.run(create_app(api_db or get_settings().demo_api_db, token), host=host, port=port)


if __name__ == "__main__":
    app()
