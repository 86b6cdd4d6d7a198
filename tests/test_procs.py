"""The fleet supervisor of `tap serve --edges N` (tap/runtime/procs.py), on stand-in children.

The children are `tests/child_stub.py` processes that log what they are made to do into one
events file, so each test reads the order of things: edges start only once the core answers
/readyz; a child that cannot start fails the whole start and stops the rest; a killed child is
started again, a crash loop with a doubling delay; a stop SIGTERMs the edges and waits for their
drain before it SIGTERMs the core; a child deaf to SIGTERM is killed after the bound; nothing
outlives a cancelled supervisor. The command line refuses a fleet it cannot run (no Redis), and
a real `tap serve` child drains by itself when its supervisor dies.

Nothing asserts on timing: every wait is a bounded poll of an observable state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from tap.runtime import cli
from tap.runtime.procs import (
    ChildSpec,
    FileReady,
    Fleet,
    FleetFailed,
    HttpReady,
    Policy,
    fleet,
    restart_delay,
    supervise,
    watch_parent,
)
from tests.procs import ROOT, server_env

STUB = [sys.executable, str(Path(__file__).with_name("child_stub.py"))]
FAST = Policy(
    start_within_s=20,  # an interpreter start on a busy machine; a bound, not a measurement
    stop_within_s=10,
    backoff_first_s=0.05,
    backoff_cap_s=0.2,
    stable_after_s=60,
    poll_s=0.02,
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Stubs:
    """Specs of stand-in children that share one events file."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.events = tmp_path / "events"
        self.core_port = _free_port()

    def core(self, *extra: str) -> ChildSpec:
        argv = [*STUB, "core", str(self.events), "--readyz-port", str(self.core_port), *extra]
        return ChildSpec("core", "core", argv, HttpReady("127.0.0.1", self.core_port))

    def edge(self, i: int, *extra: str) -> ChildSpec:
        ready = self.dir / f"edge-{i}.ready"
        argv = [*STUB, f"edge-{i}", str(self.events), "--ready-file", str(ready), *extra]
        return ChildSpec(f"edge-{i}", "edge", argv, FileReady(ready))

    def lines(self) -> list[str]:
        if not self.events.exists():
            return []
        return self.events.read_text().splitlines()

    def index(self, line: str) -> int:
        return self.lines().index(line)


async def _until(condition: object, within_s: float = 20.0) -> None:
    with trio.fail_after(within_s):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110 - a child's state
            await trio.sleep(0.02)


def _gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_edges_start_only_once_the_core_answers_readyz(tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core("--not-ready-for", "3"), stubs.edge(1), stubs.edge(2)]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        the_fleet: Fleet = await nursery.start(
            partial(supervise, specs, FAST, stop=stop, handle_signals=False)
        )
        assert all(c.ready for c in the_fleet.children)
        stop.set()
    lines = stubs.lines()
    assert lines.count("core readyz 503") == 3
    ready_at = lines.index("core readyz 200")
    edge_starts = [
        i for i, line in enumerate(lines) if line.startswith("edge-") and "start" in line
    ]
    assert len(edge_starts) == 2
    assert min(edge_starts) > ready_at
    assert the_fleet.exit_code == 0


async def test_a_core_never_ready_fails_the_start_and_no_edge_is_started(tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core("--not-ready-for", "1000000"), stubs.edge(1)]
    with pytest.raises(FleetFailed, match="core"):
        await supervise(specs, dataclasses.replace(FAST, start_within_s=1.0), handle_signals=False)
    lines = stubs.lines()
    assert not [line for line in lines if line.startswith("edge-")]
    assert "core term" in lines  # stopped, not abandoned
    core_pid = int(next(line for line in lines if line.startswith("core start")).split()[2])
    assert _gone(core_pid)


async def test_an_edge_that_exits_at_startup_fails_the_start_and_stops_the_rest(
    tmp_path: Path,
) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1), stubs.edge(2, "--exit-code", "3")]
    with pytest.raises(FleetFailed, match="edge-2"):
        await supervise(specs, FAST, handle_signals=False)
    lines = stubs.lines()
    assert "edge-1 term" in lines
    assert "core term" in lines
    assert lines.index("edge-1 exit") < lines.index("core term")  # the stop keeps its order


@pytest.mark.parametrize("victim", ["edge-1", "core"])
async def test_a_killed_child_is_started_again_and_the_others_are_left_alone(
    tmp_path: Path, victim: str
) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1), stubs.edge(2)]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        the_fleet: Fleet = await nursery.start(
            partial(supervise, specs, FAST, stop=stop, handle_signals=False)
        )
        child = the_fleet.child(victim)
        assert child.proc is not None
        old_pid = child.proc.pid
        os.kill(old_pid, signal.SIGKILL)
        await _until(lambda: child.starts == 2 and child.ready)
        assert child.proc.pid != old_pid
        others = [c for c in the_fleet.children if c is not child]
        assert [c.starts for c in others] == [1, 1]
        stop.set()
    assert the_fleet.exit_code == 0


async def test_a_stop_while_a_restarted_child_is_still_starting_is_clean(tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1, "--slow-restart", str(tmp_path / "started"))]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        the_fleet: Fleet = await nursery.start(
            partial(supervise, specs, FAST, stop=stop, handle_signals=False)
        )
        edge = the_fleet.child("edge-1")
        assert edge.proc is not None
        os.kill(edge.proc.pid, signal.SIGKILL)
        await _until(lambda: edge.starts == 2 and edge.alive)
        stop.set()
    assert edge.proc.returncode == -signal.SIGTERM  # it died of the signal, still starting
    assert the_fleet.exit_code == 0


def test_the_restart_delay_doubles_up_to_the_cap() -> None:
    policy = Policy(backoff_first_s=0.5, backoff_cap_s=30.0)
    assert [restart_delay(n, policy) for n in range(1, 9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0
    ]  # fmt: skip


async def test_a_crash_loop_backs_off_up_to_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tap.procs")
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1, "--die-after-s", "0.3")]
    stop = trio.Event()

    def delays() -> list[float]:
        return [
            r.restart_in_s  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "child exited; restarting"
        ]

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(supervise, specs, FAST, stop=stop, handle_signals=False))
        await _until(lambda: len(delays()) >= 4, within_s=60)
        stop.set()
    assert delays()[:4] == [0.05, 0.1, 0.2, 0.2]


async def test_a_stop_drains_the_edges_before_it_stops_the_core(tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1, "--drain-s", "0.5"), stubs.edge(2, "--drain-s", "0.5")]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        the_fleet: Fleet = await nursery.start(
            partial(supervise, specs, FAST, stop=stop, handle_signals=False)
        )
        stop.set()
    core_term = stubs.index("core term")
    assert stubs.index("edge-1 exit") < core_term
    assert stubs.index("edge-2 exit") < core_term
    assert "core exit" in stubs.lines()
    assert the_fleet.exit_code == 0


def test_a_second_signal_does_not_break_the_order_of_the_stop(tmp_path: Path) -> None:
    """SIGTERM, then SIGINT while the edges drain (a service manager's repeat, a second
    Ctrl-C): the supervisor still waits for the edges before it stops the core, and exits 0."""
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1, "--drain-s", "1.0")]
    described = [
        {"name": s.name, "role": s.role, "argv": s.argv}
        | (
            {"ready_file": str(s.ready.path)}
            if isinstance(s.ready, FileReady)
            else {"ready_port": s.ready.port}
        )
        for s in specs
    ]
    (tmp_path / "specs.json").write_text(json.dumps(described))
    supervisor = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("fleet_stub.py")),
            str(tmp_path / "specs.json"),
        ],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert supervisor.stdout is not None
        assert supervisor.stdout.readline().strip() == "fleet ready"
        supervisor.send_signal(signal.SIGTERM)
        _wait_for(lambda: "edge-1 term" in stubs.lines(), "the edge to be told to stop")
        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(timeout=30) == 0
    finally:
        supervisor.kill()
        supervisor.wait(timeout=10)
    lines = stubs.lines()
    assert lines.index("edge-1 exit") < lines.index("core term")


async def test_an_edge_deaf_to_sigterm_is_killed_after_the_bound(tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1, "--ignores-term")]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        the_fleet: Fleet = await nursery.start(
            partial(
                supervise,
                specs,
                dataclasses.replace(FAST, stop_within_s=1.0),
                stop=stop,
                handle_signals=False,
            )
        )
        edge = the_fleet.child("edge-1")
        stop.set()
    assert edge.proc is not None and edge.proc.returncode == -signal.SIGKILL
    lines = stubs.lines()
    assert "edge-1 exit" not in lines
    assert lines.index("edge-1 term") < lines.index("core term")
    assert the_fleet.exit_code == 1  # not every child stopped cleanly


async def test_no_child_outlives_a_cancelled_supervisor(tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    specs = [stubs.core(), stubs.edge(1), stubs.edge(2)]
    async with trio.open_nursery() as nursery:
        the_fleet: Fleet = await nursery.start(
            partial(supervise, specs, FAST, handle_signals=False)
        )
        pids = [c.proc.pid for c in the_fleet.children if c.proc is not None]
        nursery.cancel_scope.cancel()
    assert len(pids) == 3
    assert all(_gone(pid) for pid in pids)


def test_the_fleet_table(tmp_path: Path) -> None:
    specs = fleet(
        ["tap", "--config", "x.toml"],
        edges=2,
        host="0.0.0.0",
        port=9000,
        core_port=9001,
        tls=False,
        run_dir=tmp_path,
        supervisor_pid=42,
    )
    assert [(s.name, s.role) for s in specs] == [
        ("core", "core"), ("edge-1", "edge"), ("edge-2", "edge")
    ]  # fmt: skip
    core, edge1, edge2 = specs
    assert core.argv == [
        "tap", "--config", "x.toml", "serve", "--role", "core", "--port", "9001",
        "--supervisor-pid", "42",
    ]  # fmt: skip
    assert core.ready == HttpReady("127.0.0.1", 9001)  # a wildcard bind is probed on loopback
    for i, edge in ((1, edge1), (2, edge2)):
        assert edge.argv[:8] == [
            "tap", "--config", "x.toml", "serve", "--role", "edge", "--port", "9000"
        ]  # fmt: skip
        assert "--reuse-port" in edge.argv
        assert edge.ready == FileReady(tmp_path / f"edge-{i}.ready")
        assert edge.argv[edge.argv.index("--ready-file") + 1] == str(edge.ready.path)


async def test_a_child_stops_when_its_parent_is_not_its_supervisor() -> None:
    stop = trio.Event()
    with trio.move_on_after(0.2):
        await watch_parent(os.getppid(), stop, poll_s=0.01)
    assert not stop.is_set()  # still our parent: keep serving
    await watch_parent(os.getpid(), stop, poll_s=0.01)  # we are not our own parent
    assert stop.is_set()


@pytest.fixture
def no_tap_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("TAP__")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(cli.logs, "configure", lambda level, *, as_json: None)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--edges", "2"], "redis.url"),
        (["serve", "--edges", "0"], "N >= 1"),
        (["serve", "--core-port", "9001"], "--core-port goes with --edges"),
        (["serve", "--edges", "1", "--role", "edge"], "takes no --role"),
    ],
)
def test_serve_refuses_a_fleet_it_cannot_run(
    no_tap_env: None, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert cli.main(argv) == 2
    assert said in capsys.readouterr().err


@pytest.mark.slow
def test_a_served_child_drains_when_its_supervisor_dies(tmp_path: Path) -> None:
    """A real `tap serve --supervisor-pid P --ready-file F`: F appears once it serves; the
    parent P is SIGKILLed; the orphan stops by itself (exit 0) and removes F."""
    ready = tmp_path / "ready"
    env = server_env(tmp_path)
    # The shell's pid is the supervisor: `exec sleep` keeps it, and is the server's parent.
    script = (
        f'"{sys.executable}" -m tap.runtime.cli serve --supervisor-pid $$ '
        f'--ready-file "{ready}" & echo $! ; exec sleep 600'
    )
    parent = subprocess.Popen(
        ["sh", "-c", script], env=env, cwd=str(ROOT), stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        _wait_for(ready.exists, "the ready file")
        assert ready.read_text().startswith("http://127.0.0.1:")
        parent.kill()
        parent.wait(timeout=10)
        _wait_for(lambda: _gone(server_pid), "the orphaned server to stop")
        assert not ready.exists()
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if "server_pid" in locals() and not _gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def _wait_for(condition: object, what: str, within_s: float = 40.0) -> None:
    import time

    deadline = time.monotonic() + within_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"waited {within_s} s for {what}"
        time.sleep(0.05)
