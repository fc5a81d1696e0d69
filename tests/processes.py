"""Processes as /proc shows them, read independently of the code under test: which a run
left behind, and whether they still live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    pgrp: int
    state: str
    start_ticks: int
    command: str


def processes() -> dict[int, Process]:
    """Every process, read from /proc independently of the code under test."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = Process(
            pid=int(entry.name),
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            state=fields[0],
            start_ticks=int(fields[19]),
            command=command,
        )
    return found


def living(group: Sequence[Process]) -> list[Process]:
    """Those still running (not exited, not zombies, their PIDs not reused)."""
    now = processes()
    return [
        p
        for p in group
        if p.pid in now and now[p.pid].start_ticks == p.start_ticks and now[p.pid].state != "Z"
    ]
