"""`python -m loadgen bench scale`: the parts that decide what is reported, without servers.

A fleet's server processes are told apart by their `--role` (the supervisor itself and anything
else in its tree are not counted as servers); Redis commands are counted from `INFO commandstats`
without INFO itself; the table says what was measured and prints no ratio it could not compute.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis

from loadgen.benches.bench_scale import FleetServer, format_scale, redis_commands
from tests.redis_fixtures import redis_url

__all__ = ["redis_url"]

PARENT = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
kids = [subprocess.Popen(sleeper + ["--role", r]) for r in ("core", "edge", "edge")]
kids.append(subprocess.Popen(sleeper))  # not a server: no --role
print("up", flush=True)
time.sleep(60)
"""


def test_a_fleets_processes_are_named_by_role(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "up"
        server = FleetServer("tap", "127.0.0.1", 0, parent, tmp_path / "log")  # type: ignore[arg-type]
        deadline = time.monotonic() + 10  # a child's /proc entry may lag its start a little
        while sorted(named := server.processes()) != ["core", "edge-1", "edge-2"]:
            assert time.monotonic() < deadline, named
            time.sleep(0.05)
        assert parent.pid not in named.values()
    finally:
        parent.kill()
        parent.wait()


def test_one_process_is_named_tap(tmp_path: Path) -> None:
    lone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        server = FleetServer("tap", "127.0.0.1", 0, lone, tmp_path / "log")  # type: ignore[arg-type]
        assert server.processes() == {"tap": lone.pid}
    finally:
        lone.kill()
        lone.wait()


def test_redis_commands_leave_info_out(redis_url: str) -> None:
    before = redis_commands(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    finally:
        client.close()
    after = redis_commands(redis_url)
    assert "info" not in after
    assert after["ping"] >= before.get("ping", 0) + 1


def test_the_table_prints_no_ratio_it_could_not_compute() -> None:
    steady = {
        "rate": 200,
        "cpu_ms_per_bet": {"core": 0.9, "edge-1": 2.7},
        "redis_commands_per_bet": 14.0,
    }
    report = {
        "vus": 300,
        "cpus": 2,
        "topologies": {
            "one process (--role all)": {"capacity": {"max_rate": 0.0}, "steady": steady},
            "core + 1 edge": {
                "capacity": {"max_rate": 350.0, "p99_ms_at_max": 80.0},
                "steady": steady,
            },
        },
        "scaling_vs_one_process": {"one process (--role all)": None, "core + 1 edge": None},
    }
    lines = format_scale(report)
    assert "at 200/s" in lines[1]
    one = lines[2].removeprefix("one process (--role all)").split()
    assert one[:3] == ["0", "—", "—"]  # no capacity, no p99, no ratio
    fleet = lines[3].removeprefix("core + 1 edge").split()
    assert fleet[:3] == ["350", "80", "—"]  # no ratio without one process's capacity
    assert "core 0.9, edge-1 2.7; 14.0" in lines[3]
