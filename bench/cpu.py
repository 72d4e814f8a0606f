"""CPU seconds spent by processes between two instants, sampled on a thread: steadier than
throughput on a shared machine (another tenant's load slows a process, but does not make it
spend more CPU per unit of work).

A group is a function listing its processes now (called every `refresh` s); a process that
exits keeps the CPU it was last seen with.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

Lister = Callable[[], list[psutil.Process]]


class CpuMeter:
    def __init__(self, groups: dict[str, Lister], every: float = 0.02, refresh: float = 0.2):
        self.groups, self.every, self.refresh = groups, every, refresh
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._seen: dict[str, dict[int, tuple[psutil.Process, float]]] = {g: {} for g in groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def __enter__(self) -> CpuMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        listed = 0.0
        while not self._stop.is_set():
            now = time.time()
            if now - listed >= self.refresh:
                listed = now
                for name, lister in self.groups.items():
                    try:
                        procs = lister()
                    except (psutil.Error, OSError):
                        procs = []
                    for proc in procs:
                        self._seen[name].setdefault(proc.pid, (proc, 0.0))
            totals = {}
            for name, seen in self._seen.items():
                for pid, (proc, _) in list(seen.items()):
                    try:
                        times = proc.cpu_times()
                        seen[pid] = (proc, times.user + times.system)
                    except (psutil.Error, OSError):
                        pass  # exited: its last sample stands
                totals[name] = sum(cpu for _, cpu in seen.values())
            self.samples.append((now, totals))
            self._stop.wait(self.every)

    def used(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per group between two wall-clock instants (interpolated)."""
        return {name: self._at(name, end) - self._at(name, start) for name in self.groups}

    def _at(self, name: str, at: float) -> float:
        times = [t for t, _ in self.samples]
        i = bisect.bisect_left(times, at)
        if i == 0:
            return self.samples[0][1].get(name, 0.0) if self.samples else 0.0
        if i >= len(self.samples):
            return self.samples[-1][1].get(name, 0.0)
        (t0, a), (t1, b) = self.samples[i - 1], self.samples[i]
        x0, x1 = a.get(name, 0.0), b.get(name, 0.0)
        return x0 + (x1 - x0) * (at - t0) / (t1 - t0) if t1 > t0 else x1


def children(proc: Callable[[], Any]) -> Lister:
    """A process and its descendants (None: not started)."""

    def listed() -> list[psutil.Process]:
        root = proc()
        if root is None:
            return []
        return [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]

    return listed


def postgres_backends(backend_pid: int, database: str, exclude: set[int]) -> Lister:
    """The server processes serving `database`: children of the postmaster (the parent of
    `backend_pid`, one of our connections' backends) whose title names the database, but
    autovacuum workers and those in `exclude` (the measuring process's own, which may
    grow)."""
    postmaster = psutil.Process(backend_pid).parent()

    def listed() -> list[psutil.Process]:
        if postmaster is None:
            return []
        found = []
        for child in postmaster.children():
            try:
                if child.pid in exclude:
                    continue
                title = " ".join(child.cmdline()) + " "
                # Autovacuum's work comes after the fact, in whichever window it falls.
                if f" {database} " in title and "autovacuum" not in title:
                    found.append(child)
            except (psutil.Error, OSError):
                continue
        return found

    return listed


async def own_backends(engine: AsyncEngine) -> set[int]:
    """The backend pids of the bench's own connections (its polling is not the servers'
    work), kept up to date as its pool opens connections: `exclude` of postgres_backends."""
    pids: set[int] = set()

    def connected(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        pids.add(cursor.fetchone()[0])
        cursor.close()

    await engine.dispose()  # every connection from now on is seen opening
    event.listen(engine.sync_engine, "connect", connected)
    return pids
