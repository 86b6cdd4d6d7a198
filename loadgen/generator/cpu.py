"""CPU use of this process and of the processes it started, read from `/proc` (Linux).

It decides how CPU is sampled: user + system ticks of a pid, turned into the share of one core
over the wall time between two samples (100 % = one core busy), and the time its threads spent
*runnable but waiting* for a core (the scheduler's run-queue delay, `/proc/<pid>/task/*/
schedstat`). The generator reports its own figures so it is never the bottleneck silently, and
the benches report the server's beside them; run-queue delay says when neither was the
bottleneck because something else on the machine held the cores. Elsewhere than Linux the
figures are None.
"""

from __future__ import annotations

import os
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of `pid` (this process when None) and its threads."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its closing paren are fixed.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_tree(pid: int) -> list[int]:
    """`pid` and its living descendants (from `/proc/<pid>/task/*/children`)."""
    found = [pid]
    i = 0
    while i < len(found):
        base = f"/proc/{found[i]}/task"
        i += 1
        try:
            tids = os.listdir(base)
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"{base}/{tid}/children", "rb") as f:
                    found.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` and every living descendant, or None."""
    total = None
    for p in process_tree(pid):
        cpu = cpu_seconds(p)
        if cpu is not None:
            total = (total or 0.0) + cpu
    return total


def run_queue_seconds(pid: int | None = None) -> float | None:
    """Seconds the threads of `pid` (alive now) spent waiting on a run queue, or None."""
    base = f"/proc/{'self' if pid is None else pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"{base}/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class CpuMeter:
    """Share of one core used by `pid`, and share of wall time it waited for a core."""

    def __init__(self, pid: int | None = None, *, tree: bool = False) -> None:
        self.pid = pid
        self.tree = tree and pid is not None
        self._start = self._read()
        self._last = self._start

    def _read(self) -> tuple[float, float | None, float | None]:
        if self.tree and self.pid is not None:
            cpu = tree_cpu_seconds(self.pid)
        else:
            cpu = cpu_seconds(self.pid)
        return time.monotonic(), cpu, run_queue_seconds(self.pid)

    @staticmethod
    def _pct(a: float | None, b: float | None, then: float, now: float) -> float | None:
        if a is None or b is None or now <= then:
            return None
        return max(0.0, 100.0 * (b - a) / (now - then))

    def sample(self) -> float | None:
        """Percent of one core since the previous sample."""
        reading = self._read()
        then, before, _ = self._last
        self._last = reading
        return self._pct(before, reading[1], then, reading[0])

    def overall(self) -> float | None:
        """Percent of one core since the meter was made (or restarted)."""
        now, cpu, _ = self._read()
        then, before, _ = self._start
        return self._pct(before, cpu, then, now)

    def overall_seconds(self) -> float | None:
        """CPU seconds used since the meter was made (or restarted)."""
        _, cpu, _ = self._read()
        before = self._start[1]
        return None if cpu is None or before is None else max(0.0, cpu - before)

    def overall_wait(self) -> float | None:
        """Percent of wall time spent runnable but waiting for a core, since (re)start."""
        now, _, wait = self._read()
        then, _, before = self._start
        return self._pct(before, wait, then, now)

    def restart(self) -> None:
        self._start = self._read()
        self._last = self._start
