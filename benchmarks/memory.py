"""Memory of a process tree from /proc: PSS (pages shared between processes, such as Ray's object
store or memory-mapped features, count once, split among them) and RSS, sampled while it runs.

Used by ``benchmarks.scale`` and by the test that runs a search over data far larger than memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children(current)
    return out


def rollup(pid: int) -> dict[str, int]:
    """``Pss`` and ``Rss`` of one process in bytes (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("Pss:", "Rss:"):
            values[parts[0][:-1]] = int(parts[1]) * 1024
    return values


@dataclass
class TreeMemory:
    """Peaks seen by ``sample``: the whole tree's PSS, and the largest RSS of any one process."""

    peak_pss: int = 0
    peak_process_rss: int = 0
    samples: int = 0
    by_process: dict[int, int] = field(default_factory=dict)  # peak RSS per pid

    def sample(self, pid: int) -> None:
        total = 0
        for child in tree(pid):
            values = rollup(child)
            total += values.get("Pss", 0)
            rss = values.get("Rss", 0)
            self.by_process[child] = max(self.by_process.get(child, 0), rss)
            self.peak_process_rss = max(self.peak_process_rss, rss)
        self.peak_pss = max(self.peak_pss, total)
        self.samples += 1


class Sampler:
    """Samples the tree under ``pid`` every ``every_s`` seconds on a thread until stopped."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.pid, self.every_s, self.memory = pid, every_s, TreeMemory()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.memory.sample(self.pid)
            self.stopped.wait(self.every_s)

    def __enter__(self) -> TreeMemory:
        self.thread.start()
        return self.memory

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"
