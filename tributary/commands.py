"""Commands printed in messages, so that each works as printed: the project's own scripts by
the path of the environment that runs this process, not a bare name that needs it activated."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def executable(name: str) -> str:
    """``name`` (tributary, dlt, prefect) from this interpreter's environment when it is
    there, else the bare name (installed elsewhere on PATH)."""
    path = Path(sys.executable).parent / name
    return shlex.quote(str(path)) if path.is_file() else name


def command(name: str, *args: str | Path) -> str:
    """A shell command line: the executable, then each argument quoted as the shell needs."""
    return " ".join([executable(name), *(shlex.quote(str(arg)) for arg in args)])
