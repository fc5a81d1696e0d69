"""Readers in other processes, as a notebook or a BI tool would be: one holds a read-only DuckDB
connection open and answers queries on it; one keeps opening fresh connections."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# One connection for the life of the process; one query per line in, one JSON line out.
HOLDER = r"""
import json, sys, duckdb
connection = duckdb.connect(sys.argv[1], read_only=True)
print(json.dumps({"rows": []}), flush=True)
for line in sys.stdin:
    try:
        answer = {"rows": connection.execute(line).fetchall()}
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer, default=str), flush=True)
"""
# A fresh connection per query, each closed before the next, until stdin closes; then every
# answer (or error) as one JSON list.
POLLER = r"""
import json, sys, threading, time, duckdb
path, sql = sys.argv[1], sys.argv[2]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
answers = []
while not stop.is_set():
    try:
        with duckdb.connect(path, read_only=True) as connection:
            answers.append({"rows": connection.execute(sql).fetchall()})
    except Exception as exc:
        answers.append({"error": f"{type(exc).__name__}: {exc}"})
    time.sleep(0.2)
print(json.dumps(answers, default=str), flush=True)
"""


class HeldConnection:
    """A read-only connection held open by another process."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._answer()  # connected

    def _answer(self) -> list[list[Any]]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            raise RuntimeError(f"the reader died: {self.process.stderr.read()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["rows"]

    def query(self, sql: str) -> list[list[Any]]:
        assert self.process.stdin is not None
        self.process.stdin.write(" ".join(sql.split()) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)


@contextmanager
def held_connection(path: Path) -> Iterator[HeldConnection]:
    reader = HeldConnection(path)
    try:
        yield reader
    finally:
        reader.close()
        if reader.process.poll() is None:
            reader.process.kill()


class Poller:
    """Fresh read-only connections, one every 0.2 s, until ``stop``."""

    def __init__(self, path: Path, sql: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", POLLER, str(path), " ".join(sql.split())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> list[dict[str, Any]]:
        """Every answer: ``{"rows": …}`` or ``{"error": …}``."""
        output, _ = self.process.communicate(timeout=60)
        return json.loads(output)


@contextmanager
def poller(path: Path, sql: str) -> Iterator[Poller]:
    polling = Poller(path, sql)
    try:
        yield polling
    finally:
        if polling.process.poll() is None:
            polling.process.kill()
