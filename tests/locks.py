"""The warehouse lock as another run holds it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tributary.lock import warehouse_lock
from tributary.settings import Settings


@contextmanager
def held_by_another_run(settings: Settings) -> Iterator[None]:
    """The warehouse lock, held for the block by another thread: ``warehouse_lock`` is
    re-entrant in the thread that holds it, so holding it in the test's own thread would not
    stand for another run."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with warehouse_lock(settings):
            holding.set()
            done.wait()

    thread = threading.Thread(target=hold, name="another run", daemon=True)
    thread.start()
    try:
        assert holding.wait(60), "the other thread never got the warehouse lock"
        yield
    finally:
        done.set()
        thread.join(60)
