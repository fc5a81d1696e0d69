"""The warehouse lock as another run holds it."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tributary.lock import warehouse_lock
from tributary.settings import Settings


@contextmanager
def held_by_another_run(settings: Settings) -> Iterator[None]:
    """The warehouse lock, held for the block by another thread: ``warehouse_lock`` is
    re-entrant in the thread that holds it, so holding it in the test's own thread would not
    stand for another run. (This context's hold, copied, is not the other thread's: the lock
    is keyed by thread.)"""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with warehouse_lock(settings):
            holding.set()
            done.wait()

    # In a copy of this context: the same Prefect settings, so the same lock (the server's
    # limit or the lock file) as the code under test asks for.
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(hold,), name="another run", daemon=True
    )
    thread.start()
    try:
        assert holding.wait(60), "the other thread never got the warehouse lock"
        yield
    finally:
        done.set()
        thread.join(60)
