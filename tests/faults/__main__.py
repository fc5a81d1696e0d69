"""`python -m tests.faults`: trials of every fault, a table of what they found, and the same
figures as one JSON object on the last line. Exits 1 when anything was lost, duplicated,
mismatched, stuck or orphaned."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# Before Prefect or dlt is imported anywhere (the demo imports neither, the checks neither).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import typer
from rich.console import Console
from rich.table import Table

from tests.faults.catalogue import (
    CONTROL,
    DEFAULT_DURATIONS,
    FAULTS,
    KILLS,
    Fault,
    Trial,
    run_trial,
)
from tests.faults.stack import BACKENDS, Backend

FIGURES = ("rows_lost", "duplicate_keys", "mismatches", "stuck_runs", "orphans")
console = Console(width=160)
FAULT_NAMES = ", ".join(FAULTS)
SCRATCH = Path(tempfile.gettempdir())
app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def plan(kills: int, only: list[str], backends: tuple[Backend, ...]) -> list[tuple[Fault, Backend]]:
    """The trials, in order: a control per backend first (it measures the run durations the
    kills draw from), then each other fault once per backend it applies to, then the random
    kills alternating backend and kind."""
    chosen = [FAULTS[name] for name in only] if only else list(FAULTS.values())
    kill_kinds = [fault for fault in KILLS if fault in chosen]
    trials: list[tuple[Fault, Backend]] = []
    if CONTROL in chosen or (kill_kinds and kills):
        trials += [(CONTROL, backend) for backend in backends]
    for fault in chosen:
        if fault.kind in ("control", "kill"):
            continue
        trials += [(fault, backend) for backend in backends if backend in fault.backends]
    for i in range(kills if kill_kinds else 0):
        backend = backends[i % len(backends)]
        trials.append((kill_kinds[(i // len(backends)) % len(kill_kinds)], backend))
    return trials


def _table(trials: list[Trial]) -> tuple[Table, dict[str, object]]:
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for trial in trials:
        row = rows[f"{trial.fault} ({trial.backend})"]
        row["trials"] += 1
        row["survived"] += trial.figures.survived
        for name in FIGURES:
            row[name] += getattr(trial.figures, name)
    table = Table(title="Fault trials")
    table.add_column("fault")
    for column in ("trials", "survived", *FIGURES):
        table.add_column(column.replace("_", " "), justify="right")
    totals: dict[str, int] = defaultdict(int)
    for name, row in rows.items():
        table.add_row(name, *(str(row[c]) for c in ("trials", "survived", *FIGURES)))
        for column, value in row.items():
            totals[column] += value
    table.add_section()
    table.add_row("total", *(str(totals[c]) for c in ("trials", "survived", *FIGURES)))
    summary: dict[str, object] = {c: totals[c] for c in ("trials", "survived", *FIGURES)}
    summary["random_kills"] = sum(t.fault.startswith("kill-") for t in trials)
    summary["faults"] = {name: dict(row) for name, row in rows.items()}
    return table, summary


@app.command()
def main(
    kills: int = typer.Option(10, help="Random kill trials in all (both kinds, all backends)."),
    seed: int = typer.Option(1, help="Seed of the first trial; each next trial adds one."),
    only: list[str] = typer.Option([], help=f"Only this fault (repeatable): {FAULT_NAMES}."),
    backend: str = typer.Option("both", help="sqlite, postgresql or both."),
    scratch: Path = typer.Option(
        SCRATCH, help="Where trial folders go; kept for trials that fail."
    ),
) -> None:
    """Run the fault trials and print what they found."""
    unknown = sorted(set(only) - set(FAULTS))
    if unknown:
        raise typer.BadParameter(f"no fault {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    backends = BACKENDS if backend == "both" else (backend,)
    if not set(backends) <= set(BACKENDS):
        raise typer.BadParameter("--backend: sqlite, postgresql or both")
    root = Path(tempfile.mkdtemp(prefix="tributary-faults-", dir=scratch))
    prefect_home = root / "prefect"  # one Prefect database for all trials: migrated once
    durations = dict(DEFAULT_DURATIONS)
    trials: list[Trial] = []
    started = time.monotonic()
    todo = plan(kills, only, backends)  # type: ignore[arg-type]
    console.print(f"{len(todo)} trials in {root}")
    for number, (fault, on) in enumerate(todo, start=1):
        trial = run_trial(
            fault,
            on,
            seed=seed + number - 1,
            root=root / f"{number:03d}-{fault.name}-{on}",
            prefect_home=prefect_home,
            durations=durations,
        )
        trials.append(trial)
        verdict = "survived" if trial.figures.survived else f"FOUND SOMETHING ({trial.folder})"
        console.print(
            f"[{number}/{len(todo)}] {fault.name} on {on}: {verdict} in {trial.seconds:.0f} s",
            highlight=False,
        )
        console.print(f"    runs: {', '.join(trial.runs)}", highlight=False, markup=False)
        for problem in trial.figures.problems:
            console.print(f"    {problem}", highlight=False, markup=False)
    table, summary = _table(trials)
    summary["seconds"] = round(time.monotonic() - started)
    console.print(table)
    if all(trial.figures.survived for trial in trials):
        shutil.rmtree(root, ignore_errors=True)
    else:
        console.print(f"Trials that found something keep their folders under {root}")
    print(json.dumps(summary), flush=True)
    if any(summary[name] for name in FIGURES):
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
