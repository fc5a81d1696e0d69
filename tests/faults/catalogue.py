"""The faults, and one trial of each: make a fresh world, inject the fault (checking the outcome
the issue expects of the faulted run), move the shop forward, re-run until a run completes,
then check everything (tests/faults/checks.py)."""

from __future__ import annotations

import random
import secrets
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
from sqlalchemy import create_engine, text

from tests.faults.checks import Figures, Key, check, compare_raw, prefect_flow_runs
from tests.faults.stack import (
    BACKENDS,
    ORDERS,
    POSTGRES_ADMIN,
    PYTHON,
    Backend,
    Run,
    Stack,
    stack,
)
from tests.receivers import smtp_receiver, webhook_receiver

Kind = Literal["control", "kill", "named", "api", "postgresql"]
Phase = Literal["first", "incremental"]
# Measured on this machine (2 cores, 300 orders); `python -m tests.faults` measures them again
# with its control trial before any random kill.
DEFAULT_DURATIONS: dict[tuple[Backend, Phase], float] = {
    ("sqlite", "first"): 28.0,
    ("sqlite", "incremental"): 24.0,
    ("postgresql", "first"): 28.0,
    ("postgresql", "incremental"): 24.0,
}
RECOVERY_CAP = 3
# Pages of at most this many rows during API faults: the payments and rates arrive in dozens of
# requests, so a fault hits some of them.
API_PAGE = 20


@dataclass
class Options:
    """How a fault's trial is checked at the end (see checks.check)."""

    excluded: dict[str, set[Key]] = field(default_factory=dict)
    history_from: int = 0
    counts: bool = True


@dataclass
class Context:
    rng: random.Random
    figures: Figures
    durations: dict[tuple[Backend, Phase], float]


Inject = Callable[[Stack, Context], Options | None]


@dataclass(frozen=True)
class Fault:
    name: str
    kind: Kind
    backends: tuple[Backend, ...]
    about: str
    inject: Inject
    orders: int = ORDERS


@dataclass
class Trial:
    fault: str
    backend: Backend
    figures: Figures
    seconds: float
    folder: Path | None  # kept when the trial found something
    runs: list[str] = field(default_factory=list)  # each run: label and how it ended


# --- helpers for injections ---------------------------------------------------------------


def _stamp(offset_seconds: int = 0) -> str:
    """Now (UTC, whole seconds, as the shop stores it), after waiting for a new second so that
    a row stamped with it is newer than anything stamped before."""
    start = datetime.now(UTC).replace(microsecond=0)
    while datetime.now(UTC).replace(microsecond=0) == start:
        time.sleep(0.05)
    moment = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    return (moment + timedelta(seconds=offset_seconds)).isoformat(sep=" ")


def _completed(world: Stack, ctx: Context, run: Run, why: str) -> None:
    ctx.figures.expect(run.completed, f"{run.label}: expected to complete ({why}); {run.tail(6)}")


def _failed(world: Stack, ctx: Context, run: Run, why: str, says: str) -> None:
    ctx.figures.expect(
        run.returncode not in (0, None) and says in run.output,
        f"{run.label}: expected to fail saying {says!r} ({why}); exit {run.returncode}; "
        f"{run.tail(6)}",
    )


def _clean_run(world: Stack, ctx: Context) -> Run:
    run = world.run("clean")
    _completed(world, ctx, run, "no fault yet")
    return run


def _raw_now(world: Stack, ctx: Context, label: str, excluded: dict[str, set[Key]]) -> None:
    """Raw equals the source now, but for ``excluded`` keys: a completed run lost nothing."""
    for relation, diff in compare_raw(world, excluded).items():
        ctx.figures.rows_lost += len(diff.lost)
        ctx.figures.duplicate_keys += diff.duplicates
        if diff.lost or diff.duplicates:
            ctx.figures.problems.append(
                f"{label}: {relation}: {len(diff.lost)} lost {diff.lost[:3]}, "
                f"{diff.duplicates} duplicate keys"
            )
        if diff.differing or diff.extra:
            ctx.figures.mismatch(
                f"{label}: {relation}: {len(diff.differing)} differ, {len(diff.extra)} extra",
                len(diff.differing) + len(diff.extra),
            )


def _quarantined(world: Stack, table: str) -> list[tuple[str, str]]:
    """(reason, key) of the rows of a table in quarantine, not yet replayed."""
    return [
        (reason, key)
        for reason, key in world.query(
            "select reason, row_key from quarantine.rows where table_name = "
            f"'{table}' and replayed_at is null"
        )
    ]


# --- random kills ---------------------------------------------------------------------------


def random_kill(*, main_only: bool, phase: Phase | None = None) -> Inject:
    """A kill of a first load or of an incremental run (``phase``, else drawn), at a moment
    drawn uniformly over that kind of run's measured duration."""

    def inject(world: Stack, ctx: Context) -> None:
        kind: Phase = phase or ctx.rng.choice(("first", "incremental"))
        if kind == "incremental":
            _clean_run(world, ctx)
            world.simulate()
        at = ctx.rng.uniform(0, ctx.durations[(world.backend, kind)])
        world.run_killed(f"killed-{kind}-at-{at:.1f}s", after=at, main_only=main_only)

    return inject


def _control(world: Stack, ctx: Context) -> None:
    """No fault: two runs whose durations the random kills draw their moments from."""
    first = _clean_run(world, ctx)
    world.simulate()
    again = world.run("incremental")
    _completed(world, ctx, again, "no fault")
    if first.completed and again.completed:
        ctx.durations[(world.backend, "first")] = first.seconds
        ctx.durations[(world.backend, "incremental")] = again.seconds


# --- the numbered cases -------------------------------------------------------------


def _cursor_2099(world: Stack, ctx: Context) -> None:
    """Case 1: a shop row and a payment stamped 2099 are quarantined, move no cursor, and later
    changes keep arriving; fixed at the source, they arrive by themselves."""
    _clean_run(world, ctx)
    [(order_id,)] = world.shop("select min(order_id) + 6 from orders")
    [(payment_id,)] = world.store_rows("select min(payment_id) from payments")
    world.simulate()
    world.shop(
        "update orders set status = 'returned', updated_at = '2099-01-01 00:00:00' "
        f"where order_id = {order_id}"
    )
    world.store(
        f"update payments set updated_at = '2099-01-01 00:00:00' where payment_id = '{payment_id}'"
    )
    poisoned = world.run("poisoned")
    _completed(world, ctx, poisoned, "the rows are quarantined")
    for table, key in (("orders", str(order_id)), ("payments", payment_id)):
        ctx.figures.expect(
            any(
                "cursor" in reason and key in row_key
                for reason, row_key in _quarantined(world, table)
            ),
            f"{table} {key} stamped 2099 is not in quarantine.rows",
        )
    world.simulate()
    later = world.run("later-changes")
    _completed(world, ctx, later, "the cursor did not move to 2099")
    excluded = {"raw_shop.orders": {(order_id,)}, "raw_payments.payments": {(payment_id,)}}
    _raw_now(world, ctx, "later-changes", excluded)
    world.shop(f"update orders set updated_at = '{_stamp()}' where order_id = {order_id}")
    world.store(f"update payments set updated_at = '{_stamp()}' where payment_id = '{payment_id}'")


LOOSE_ORDER_ITEMS = """
create table loose as select * from order_items;
drop table order_items;
create table order_items (order_item_id bigint primary key, order_id integer not null,
  product_id integer not null, quantity integer not null, unit_price_cents integer not null,
  updated_at datetime not null);
insert into order_items select * from loose;
drop table loose;
create index ix_order_items_updated_at on order_items (updated_at);
"""


def _null_key(world: Stack, ctx: Context) -> None:
    """Case 2: a row with a NULL key goes to quarantine, nothing loaded is deleted, nothing
    wedges. (SQLite lets a primary key that is not an INTEGER hold NULL.)"""
    world.shop_script(LOOSE_ORDER_ITEMS)
    _clean_run(world, ctx)
    world.shop(
        "insert into order_items select null, order_id, product_id, 5, unit_price_cents, "
        f"'{_stamp()}' from order_items where order_item_id = 1"
    )
    faulted = world.run("null-key")
    _completed(world, ctx, faulted, "the row is quarantined")
    ctx.figures.expect(
        any("primary key" in reason for reason, _ in _quarantined(world, "order_items")),
        "the NULL-key order item is not in quarantine.rows",
    )
    _raw_now(world, ctx, "null-key", {"raw_shop.order_items": {(None,)}})
    world.shop("delete from order_items where order_item_id is null")


def _bulk_plan_kill(world: Stack, ctx: Context) -> Options:
    """Case 3: PostgreSQL first load SIGKILLed as soon as the bulk-read plan appears; the next
    run recovers by itself."""
    pipelines = world.data_dir / "pipelines"
    killed = world.run_killed(
        "killed-at-bulk-plan", when=lambda: any(pipelines.glob("*.bulk.json"))
    )
    ctx.figures.expect(killed.killed == "group", "the bulk-read plan never appeared")
    return Options()


def _webhook_fails(world: Stack, ctx: Context) -> None:
    """Case 4: a run failing (a wrong API token) while the webhook answers 500 still sends its
    e-mail, and the webhook's URL (its path is the secret) is in none of the run's output."""
    path = f"/services/{secrets.token_hex(12)}"
    with (
        webhook_receiver(status=500, path=path) as (hook, posted),
        smtp_receiver() as (port, mails),
    ):
        world.extra_env.update(
            TRIBUTARY_SLACK_WEBHOOK_URL=hook,
            TRIBUTARY_SMTP_HOST="127.0.0.1",
            TRIBUTARY_SMTP_PORT=str(port),
            TRIBUTARY_ALERT_EMAIL_TO='["data-team@example.com"]',
            SOURCES__PAYMENTS__TOKEN="not-the-token",
        )
        try:
            failed = world.run("wrong-token")
        finally:
            world.extra_env.clear()
    _failed(world, ctx, failed, "the API answers 401", "ingest payments")
    ctx.figures.expect(bool(posted), "the webhook was never tried")
    ctx.figures.expect(bool(mails), "the e-mail did not go out after the webhook failed")
    ctx.figures.expect(path[10:] not in failed.output, "the webhook's secret path is in the output")


def _failing_test(world: Stack, ctx: Context) -> None:
    """Case 5: data that fails a dbt test publishes nothing (readers keep the last good set);
    fixed at the source, the next run publishes."""
    _clean_run(world, ctx)
    kept = world.published_version()
    world.simulate()
    [(order_id,)] = world.shop("select min(order_id) + 4 from orders")
    world.shop(
        f"update orders set total_cents = total_cents + 1, updated_at = '{_stamp()}' "
        f"where order_id = {order_id}"
    )
    faulted = world.run("failing-test")
    _failed(world, ctx, faulted, "a dbt test fails", "not published")
    ctx.figures.expect(
        world.published_version() == kept, "a build with a failing test changed what is published"
    )
    world.shop(
        f"update orders set total_cents = total_cents - 1, updated_at = '{_stamp()}' "
        f"where order_id = {order_id}"
    )


def _reader_held(world: Stack, ctx: Context) -> None:
    """Case 5: a reader holding the published file open across a whole run never makes it
    fail, and keeps the set it opened."""
    _clean_run(world, ctx)
    world.simulate()
    with duckdb.connect(str(world.published), read_only=True) as reader:
        [(before,)] = reader.execute("select count(*) from marts.fct_orders").fetchall()
        held = world.run("reader-held")
        _completed(world, ctx, held, "readers never block a run")
        [(after,)] = reader.execute("select count(*) from marts.fct_orders").fetchall()
    ctx.figures.expect(before == after, f"a held reader saw its marts change ({before} → {after})")


# The demo store enforces types a real provider's API may not: loosen it to serve bad rows.
LOOSE_PAYMENTS = """
create table loose as select * from payments;
drop table payments;
create table payments (payment_id, order_id, method, currency, amount, amount_refunded, status,
  created_at, updated_at);
insert into payments select * from loose;
drop table loose;
"""


def bad_api_rows(world: Stack, ctx: Context) -> None:
    """Case 6: a text amount, a missing amount, an unknown currency and a NULL payment_id are
    quarantined and never reach raw; the run completes and the next ones are not stuck."""
    world.store(LOOSE_PAYMENTS)
    at = _stamp()
    world.store(
        "insert into payments values "
        f"('p-text', 1, 'card', 'EUR', 'lots', 0, 'succeeded', '{at}', '{at}'), "
        f"('p-missing', 1, 'card', 'EUR', null, 0, 'succeeded', '{at}', '{at}'), "
        f"('p-currency', 1, 'card', 'XXX', 100, 0, 'succeeded', '{at}', '{at}'), "
        f"(null, 1, 'card', 'EUR', 100, 0, 'succeeded', '{at}', '{at}');"
    )
    faulted = world.run("bad-api-rows")
    _completed(world, ctx, faulted, "4 rows are within TRIBUTARY_QUARANTINE_MAX_ROWS")
    found = _quarantined(world, "payments")
    ctx.figures.expect(len(found) == 4, f"expected the 4 bad payments in quarantine, got {found}")
    bad = {(key,) for key in ("p-text", "p-missing", "p-currency")} | {(None,)}
    _raw_now(world, ctx, "bad-api-rows", {"raw_payments.payments": bad})
    world.store("delete from payments where payment_id like 'p-%' or payment_id is null;")


def _emptied_tables(world: Stack, ctx: Context) -> None:
    """Case 7: orders and order items emptied at the source: the run stops before deleting,
    readers keep their marts; `tributary run --confirm-deletes` then deletes."""
    _clean_run(world, ctx)
    kept = world.published_version()
    [(orders,)] = world.query("select count(*) from raw_shop.orders")
    world.shop("delete from order_items")
    world.shop("delete from orders")
    stopped = world.run("emptied")
    _failed(world, ctx, stopped, "a mass delete needs a confirmation", "would delete")
    ctx.figures.expect(
        world.query("select count(*) from raw_shop.orders") == [(orders,)],
        "a stopped run deleted orders",
    )
    ctx.figures.expect(world.published_version() == kept, "a stopped run published")
    confirmed = world.tributary("confirm-deletes", "run", "--confirm-deletes")
    _completed(world, ctx, confirmed, "confirmed")
    ctx.figures.expect(
        world.query("select count(*) from raw_shop.orders") == [(0,)],
        "the confirmed run did not delete the orders",
    )


HOLD = (
    "import sys, duckdb\n"
    "c = duckdb.connect(sys.argv[1], read_only=True)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def _warehouse_held(world: Stack, ctx: Context) -> None:
    """Case 9: a process holding the working warehouse makes the run fail; the failure is
    recorded by a later run (checked with the history)."""
    _clean_run(world, ctx)
    world.simulate()
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLD, str(world.warehouse)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        held = world.run("warehouse-held")
        _failed(world, ctx, held, "another process holds the warehouse", "TRIBUTARY_WAREHOUSE_PATH")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def _drift_added_column(world: Stack, ctx: Context) -> None:
    """Case 11: a column added at the source is reported as drift and loaded (evolve)."""
    _clean_run(world, ctx)
    world.shop("alter table orders add column channel varchar(20)")
    world.shop(
        f"update orders set channel = 'web', updated_at = '{_stamp()}' "
        "where order_id in (select order_id from orders order by order_id limit 3)"
    )
    drifted = world.run("drift")
    _completed(world, ctx, drifted, "drift evolves by default")
    ctx.figures.expect(
        world.query("select count(*) from ops.schema_changes where column_name = 'channel'")
        != [(0,)],
        "the added column is not in ops.schema_changes",
    )


def _corrupt_warehouse(world: Stack, ctx: Context) -> Options:
    """Case 12: a truncated warehouse fails the run naming its setting; `tributary warehouse
    restore` brings it back and the next run reloads every source."""
    _clean_run(world, ctx)
    size = world.warehouse.stat().st_size
    with world.warehouse.open("r+b") as file:
        file.truncate(size // 2)
    first_after = len(world.runs)
    broken = world.run("corrupt")
    _failed(world, ctx, broken, "the warehouse is unreadable", "TRIBUTARY_WAREHOUSE_PATH")
    restored = world.tributary("restore", "warehouse", "restore")
    _completed(world, ctx, restored, "`tributary warehouse restore`")
    # The run that published last recorded itself after publishing: its row went with the file.
    return Options(history_from=first_after, counts=False)


def _fx_gap(world: Stack, ctx: Context) -> None:
    """Case 13: rates missing for some days (a weekend, a holiday): payments on those days
    convert at the latest earlier rate and the run completes."""
    world.store(
        "delete from exchange_rates where date in (select distinct date from exchange_rates "
        "order by date limit 3 offset 150);"
    )
    gapped = world.run("fx-gap")
    _completed(world, ctx, gapped, "the latest earlier rate converts")


# --- the API misbehaving ------------------------------------------------------------------


def _api(**knobs: Any) -> Inject:
    def inject(world: Stack, ctx: Context) -> None:
        """The first load against a misbehaving API: it completes with every row or fails
        (a completed run that lost rows would be silent loss); the storm then passes."""
        world.api_faults(max_page_size=API_PAGE, **knobs)
        faulted = world.run("api-fault")
        world.api_faults()
        if faulted.completed:
            _raw_now(world, ctx, "completed during the API fault", {})

    return inject


# --- PostgreSQL cut off mid-extract -------------------------------------------------------


def _pg_terminate(world: Stack, ctx: Context) -> None:
    """PostgreSQL terminates the first load's connection (`pg_terminate_backend`) while it
    extracts: the run retries or fails, and a re-run loads everything."""
    database = world.shop_url.rsplit("/", 1)[1]
    stop = threading.Event()
    terminated: list[int] = []

    def terminate() -> None:
        engine = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                while not stop.is_set() and not terminated:
                    rows = connection.execute(
                        text(
                            "select pid, pg_terminate_backend(pid) from pg_stat_activity "
                            "where datname = :db and pid <> pg_backend_pid() "
                            "and backend_type = 'client backend'"
                        ),
                        {"db": database},
                    ).fetchall()
                    terminated.extend(pid for pid, done in rows if done)
                    time.sleep(0.002)
        finally:
            engine.dispose()

    terminator = threading.Thread(target=terminate, daemon=True)
    terminator.start()
    try:
        world.run("terminated")
    finally:
        stop.set()
        terminator.join()
    ctx.figures.expect(bool(terminated), "no connection of the run was ever seen to terminate")


# --- the catalogue --------------------------------------------------------------------------

CONTROL = Fault(
    "control",
    "control",
    BACKENDS,
    "no fault: the checks hold, and two runs measure the durations kills are drawn from",
    _control,
)
KILLS = (
    Fault(
        "kill-group",
        "kill",
        BACKENDS,
        "SIGKILL of the run's process group at a uniform moment of a first or incremental run",
        random_kill(main_only=False),
    ),
    Fault(
        "kill-main",
        "kill",
        BACKENDS,
        "SIGKILL of the main process alone at a uniform moment; nothing it started survives",
        random_kill(main_only=True),
    ),
)
NAMED = (
    Fault("cursor-2099", "named", BACKENDS, _cursor_2099.__doc__ or "", _cursor_2099),
    Fault("null-key", "named", ("sqlite",), _null_key.__doc__ or "", _null_key),
    Fault(
        "bulk-plan-kill", "named", ("postgresql",), _bulk_plan_kill.__doc__ or "", _bulk_plan_kill
    ),
    Fault("webhook-fails", "named", ("sqlite",), _webhook_fails.__doc__ or "", _webhook_fails),
    Fault("failing-test", "named", ("sqlite",), _failing_test.__doc__ or "", _failing_test),
    Fault("reader-held", "named", ("sqlite",), _reader_held.__doc__ or "", _reader_held),
    Fault("bad-api-rows", "named", ("sqlite",), bad_api_rows.__doc__ or "", bad_api_rows),
    Fault("emptied-tables", "named", BACKENDS, _emptied_tables.__doc__ or "", _emptied_tables),
    Fault("warehouse-held", "named", ("sqlite",), _warehouse_held.__doc__ or "", _warehouse_held),
    Fault(
        "drift-added-column",
        "named",
        BACKENDS,
        _drift_added_column.__doc__ or "",
        _drift_added_column,
    ),
    Fault(
        "corrupt-warehouse",
        "named",
        ("sqlite",),
        _corrupt_warehouse.__doc__ or "",
        _corrupt_warehouse,
    ),
    Fault("fx-gap", "named", ("sqlite",), _fx_gap.__doc__ or "", _fx_gap),
)
API = (
    Fault(
        "api-5xx-storm", "api", ("sqlite",), "half the API's answers are 503", _api(error_rate=0.5)
    ),
    Fault(
        "api-429",
        "api",
        ("sqlite",),
        "half the API's answers are 429 with Retry-After: 1",
        _api(rate_limit_rate=0.5, retry_after_seconds=1),
    ),
    Fault(
        "api-truncated-json",
        "api",
        ("sqlite",),
        "a fifth of the answers are 200 with half a JSON body",
        _api(truncate_rate=0.2),
    ),
    Fault(
        "api-repeated-page",
        "api",
        ("sqlite",),
        "a third of the payments pages come again (their next_cursor asks for the same page)",
        _api(repeat_page_rate=0.3),
    ),
    Fault(
        "api-gone-mid-page",
        "api",
        ("sqlite",),
        "a fifth of the answers stop halfway: the connection closes mid-body",
        _api(disconnect_rate=0.2),
    ),
)
POSTGRES = (
    Fault(
        "pg-terminate",
        "postgresql",
        ("postgresql",),
        _pg_terminate.__doc__ or "",
        _pg_terminate,
        orders=20_000,
    ),
)
FAULTS = {fault.name: fault for fault in (CONTROL, *KILLS, *NAMED, *API, *POSTGRES)}


def run_trial(
    fault: Fault,
    backend: Backend,
    *,
    seed: int,
    root: Path,
    prefect_home: Path,
    durations: dict[tuple[Backend, Phase], float],
    keep: bool = False,
) -> Trial:
    """One trial: a fresh world, the fault, a step of the shop, re-runs until one completes,
    the checks. A trial that finds something keeps its folder (logs of every run in it)."""
    started = time.monotonic()
    figures = Figures()
    ctx = Context(random.Random(seed), figures, durations)
    known = set(prefect_flow_runs(prefect_home))
    with stack(
        root, backend, seed=seed, prefect_home=prefect_home, orders=fault.orders, keep=keep
    ) as world:
        try:
            options = fault.inject(world, ctx) or Options()
            world.api_faults()
            world.simulate()
            if world.recover(RECOVERY_CAP) is None:
                figures.stuck_runs += 1
                figures.problems.append(f"no run completed in {RECOVERY_CAP} re-runs")
            else:
                check(
                    world,
                    figures,
                    known_runs=known,
                    excluded=options.excluded,
                    history_from=options.history_from,
                    counts=options.counts,
                )
        except Exception as exc:  # a broken trial must show, not vanish
            figures.mismatch(f"harness error: {type(exc).__name__}: {exc}")
            (root / "harness-error.txt").write_text(traceback.format_exc())
        if not figures.survived:
            world.keep = True
    return Trial(
        fault.name,
        backend,
        figures,
        time.monotonic() - started,
        root if world.keep else None,
        [f"{run.label} {_ending(run)}" for run in world.runs],
    )


def _ending(run: Run) -> str:
    if run.killed:
        return f"killed ({run.killed}) at {run.seconds:.0f} s"
    if run.stuck:
        return "stuck"
    return "completed" if run.completed else f"failed (exit {run.returncode})"
