"""CPU use of this process and of the processes it started, read from `/proc` (Linux).

It decides how CPU is sampled: user + system ticks of a pid, turned into the share of one core
over the wall time between two samples (100 % = one core busy). The generator reports its own
figure so it is never the bottleneck silently, and the benches report the server's beside it.
Elsewhere than Linux the figures are None.
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


class CpuMeter:
    """Share of one core used by `pid` since the last `sample()` (and since creation)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        now = time.monotonic()
        first = cpu_seconds(pid)
        self._start = (now, first)
        self._last = (now, first)

    def sample(self) -> float | None:
        """Percent of one core since the previous sample."""
        now = time.monotonic()
        cpu = cpu_seconds(self.pid)
        then, before = self._last
        self._last = (now, cpu)
        if cpu is None or before is None or now <= then:
            return None
        return 100.0 * (cpu - before) / (now - then)

    def overall(self) -> float | None:
        """Percent of one core since the meter was made."""
        now = time.monotonic()
        cpu = cpu_seconds(self.pid)
        then, before = self._start
        if cpu is None or before is None or now <= then:
            return None
        return 100.0 * (cpu - before) / (now - then)

    def restart(self) -> None:
        now = time.monotonic()
        cpu = cpu_seconds(self.pid)
        self._start = (now, cpu)
        self._last = (now, cpu)
