"""`tap serve --edges N`: one core and N edge processes on one port, kept running.

It decides which processes make the fleet and with which commands, when a child counts as
ready, when a dead child is started again, and the order of a stop. It does not know what a
core or an edge does inside: each child is `tap serve --role …` on the same config file and
environment, and drains itself on SIGTERM. The fleet, as a table (`fleet`):

```
 child    command                                                   ready when
 core     tap serve --role core --port C                            GET :C/readyz answers 200
 edge-i   tap serve --role edge --port P --reuse-port --ready-file F    F exists (it serves)
```

- **Start**: the core first, then the edges once it is ready (an edge admits bets on the core's
  grid, and hands them to it). An edge is ready when it has written its ready file: every edge
  listens on the same port (SO_REUSEPORT), so a probe of that port reaches one of them at random
  and says nothing about a given edge. A child that is not ready within `start_within_s` (or
  exits first) fails the whole start (`FleetFailed`, exit code 1): nothing half-started stays.
- **Restart**: a child that dies is started again after a backoff that doubles with each death
  in quick succession (a crash loop), up to a cap; a child that lived `stable_after_s` starts its
  next streak afresh. The edges keep serving while the core is down (they refuse bets with 503).
- **Stop** (SIGTERM/SIGINT, or `stop`): SIGTERM to every edge, which finish their in-flight
  requests; then to the core, whose writer commits what it was handed; each wave is waited for
  at most `stop_within_s`, then killed. The exit code is 0 only if every child exited 0.

Children run in their own process groups, so a terminal's Ctrl-C reaches the supervisor alone
and the stop keeps its order; a child also stops by itself when its supervisor is gone
(`--supervisor-pid`, `watch_parent`), so a SIGKILLed supervisor leaves no orphan on the port.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trio

log = logging.getLogger("tap.procs")

Role = Literal["core", "edge"]  # the two kinds of child; `tap serve --role all` is no fleet


@dataclass(frozen=True)
class HttpReady:
    """Ready when `GET path` on host:port answers 200 (the core's /readyz)."""

    host: str
    port: int
    path: str = "/readyz"
    tls: bool = False


@dataclass(frozen=True)
class FileReady:
    """Ready when the child has written `path` (`tap serve --ready-file`, once it serves)."""

    path: Path


@dataclass(frozen=True)
class ChildSpec:
    name: str  # "core", "edge-1", … (logs and `Fleet.child`)
    role: Role
    argv: list[str]
    ready: HttpReady | FileReady


@dataclass(frozen=True)
class Policy:
    """How long to wait, and how fast to restart. The defaults suit a busy 2-core machine."""

    start_within_s: float = 60.0  # an interpreter start, migration, Redis and the first ticks
    stop_within_s: float = 15.0  # per wave; a child's own graceful timeout is shorter
    backoff_first_s: float = 0.5
    backoff_cap_s: float = 30.0
    stable_after_s: float = 60.0  # a child that lived this long was not crash-looping
    poll_s: float = 0.1  # readiness probes, while a child starts


class FleetFailed(Exception):
    """A child could not be started at all; the others were stopped again."""


@dataclass
class Child:
    """One slot of the fleet and its current process (a restart replaces `proc`)."""

    spec: ChildSpec
    proc: trio.Process | None = None
    starts: int = 0
    ready: bool = False
    started_at: float = 0.0  # trio.current_time() of the latest start

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Fleet:
    """What `supervise` hands back once every child is ready (tests and the CLI read it)."""

    children: list[Child]
    exit_code: int | None = None  # set when the supervisor returns
    stopped: trio.Event = field(default_factory=trio.Event)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.spec.name == name)

    def wave(self, role: Role) -> list[Child]:
        return [c for c in self.children if c.spec.role == role]


def fleet(
    tap: Sequence[str],
    *,
    edges: int,
    host: str,
    port: int,
    core_port: int,
    tls: bool,
    run_dir: Path,
    supervisor_pid: int,
) -> list[ChildSpec]:
    """The table: `tap` is the command every child starts from (`[python, -m, tap.runtime.cli,
    --config, FILE]`), so all share one config; the environment is inherited as a whole."""
    watched = ["--supervisor-pid", str(supervisor_pid)]
    core = ChildSpec(
        "core",
        "core",
        [*tap, "serve", "--role", "core", "--port", str(core_port), *watched],
        HttpReady(_probe_host(host), core_port, tls=tls),
    )
    return [core] + [
        ChildSpec(
            f"edge-{i}",
            "edge",
            [
                *tap,
                "serve",
                "--role",
                "edge",
                "--port",
                str(port),
                "--reuse-port",
                "--ready-file",
                str(run_dir / f"edge-{i}.ready"),
                *watched,
            ],
            FileReady(run_dir / f"edge-{i}.ready"),
        )
        for i in range(1, edges + 1)
    ]


def _probe_host(host: str) -> str:
    """Where to reach a server bound to `host` from this machine (a wildcard is not an
    address to connect to)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def restart_delay(streak: int, policy: Policy) -> float:
    """Seconds before the next start of a child that died `streak` times in quick succession
    (1 = its first death after a stable run): first, ×2 each time, at most the cap."""
    return float(min(policy.backoff_cap_s, policy.backoff_first_s * 2 ** max(0, streak - 1)))


async def supervise(
    specs: Sequence[ChildSpec],
    policy: Policy = Policy(),
    *,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Fleet] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Start the fleet (cores, then edges), hand it back through `task_status`, keep every child
    running until `stop` (or SIGTERM/SIGINT), then stop edges before cores. Returns the exit
    code (0: every child exited 0 at the stop); raises `FleetFailed` if a child could not be
    started. Whatever ends it — a failure, a cancellation — no child outlives it."""
    stop = trio.Event() if stop is None else stop
    the_fleet = Fleet([Child(spec) for spec in specs])
    waves = [the_fleet.wave("core"), the_fleet.wave("edge")]
    not_ready: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_watch_signals, stop)
            with trio.CancelScope() as starting:  # a stop while starting ends the start
                nursery.start_soon(_cancel_on, stop, starting)
                for wave in waves:
                    if not await _start_wave(wave, policy):
                        not_ready = [c.spec.name for c in wave if not c.ready]
                        break
            if not not_ready and not stop.is_set():
                names = [c.spec.name for c in the_fleet.children]
                log.info("fleet ready", extra={"children": names})
                task_status.started(the_fleet)
                async with trio.open_nursery() as keepers:
                    for child in the_fleet.children:
                        keepers.start_soon(_keep, child, policy)
                    await stop.wait()
                    keepers.cancel_scope.cancel()  # no restart from here on
            clean = await _stop_waves(list(reversed(waves)), policy)
            nursery.cancel_scope.cancel()
        if not_ready:
            raise FleetFailed(f"not ready within {policy.start_within_s} s: {not_ready}")
        the_fleet.exit_code = 0 if clean else 1
        return the_fleet.exit_code
    finally:
        with trio.CancelScope(shield=True):
            for child in the_fleet.children:
                if child.alive:
                    assert child.proc is not None
                    child.proc.kill()
                    await child.proc.wait()
        the_fleet.stopped.set()


async def _start(child: Child) -> None:
    if isinstance(child.spec.ready, FileReady):
        child.spec.ready.path.unlink(missing_ok=True)  # a previous run's file says nothing
    child.ready = False
    # Its own process group: a terminal's Ctrl-C goes to the supervisor only (module docstring).
    child.proc = await trio.lowlevel.open_process(child.spec.argv, process_group=0)
    child.starts += 1
    child.started_at = trio.current_time()
    log.info(
        "child started",
        extra={"child": child.spec.name, "pid": child.proc.pid, "start": child.starts},
    )


async def _start_wave(wave: list[Child], policy: Policy) -> bool:
    """Start every child of the wave, then wait for all of them to be ready (bounded)."""
    for child in wave:
        await _start(child)
    async with trio.open_nursery() as nursery:
        for child in wave:
            nursery.start_soon(_wait_ready, child, policy)
    return all(c.ready for c in wave)


async def _wait_ready(child: Child, policy: Policy) -> None:
    """Poll the child's readiness until it is ready, exits, or `start_within_s` passes."""
    with trio.move_on_after(policy.start_within_s):
        while child.alive:
            if await _is_ready(child.spec.ready):
                child.ready = True
                log.info("child ready", extra={"child": child.spec.name})
                return
            await trio.sleep(policy.poll_s)
    proc = child.proc
    log.error(
        "child not ready",
        extra={
            "child": child.spec.name,
            "returncode": proc.returncode if proc is not None else None,
            "within_s": policy.start_within_s,
        },
    )


async def _is_ready(probe: HttpReady | FileReady) -> bool:
    if isinstance(probe, FileReady):
        return probe.path.exists()
    return await _http_ok(probe)


async def _http_ok(probe: HttpReady) -> bool:
    """One `GET` with a one-second bound: does the status line say 200? (No HTTP client
    library: the runtime has none, and one status line is all it takes.)"""
    request = (
        f"GET {probe.path} HTTP/1.1\r\nHost: {probe.host}:{probe.port}\r\nConnection: close\r\n\r\n"
    ).encode()
    with trio.move_on_after(1.0):
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(probe.host, probe.port)
            if probe.tls:
                context = ssl.create_default_context()
                context.check_hostname = False  # our own child, on this machine
                context.verify_mode = ssl.CERT_NONE
                stream = trio.SSLStream(stream, context, server_hostname=probe.host)
            async with stream:
                await stream.send_all(request)
                head = b""
                while b"\r\n" not in head and len(head) < 1024:
                    chunk = await stream.receive_some(1024)
                    if not chunk:
                        break
                    head += chunk
        except (OSError, trio.BrokenResourceError, ssl.SSLError):
            return False
        return head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]
    return False


async def _keep(child: Child, policy: Policy) -> None:
    """Restart `child` whenever it dies, with the crash-loop backoff (see `restart_delay`)."""
    streak = 0
    while True:
        assert child.proc is not None
        returncode = await child.proc.wait()
        child.ready = False
        lived_s = trio.current_time() - child.started_at
        streak = 1 if lived_s >= policy.stable_after_s else streak + 1
        delay = restart_delay(streak, policy)
        log.error(
            "child exited; restarting",
            extra={
                "child": child.spec.name,
                "pid": child.proc.pid,
                "returncode": returncode,
                "lived_s": round(lived_s, 1),
                "restart_in_s": delay,
            },
        )
        await trio.sleep(delay)
        await _start(child)
        await _wait_ready(child, policy)
        if not child.ready and child.alive:
            assert child.proc is not None
            child.proc.kill()  # not ready in time: counts as one more death of the streak


async def _stop_waves(waves: list[list[Child]], policy: Policy) -> bool:
    """SIGTERM each wave in turn and wait for it (bounded, then SIGKILL). True when every
    child that was serving exited 0. A child still starting (a restart not ready yet) may die
    of the SIGTERM itself before its handler is installed: it had nothing to drain, so that
    counts as clean too."""
    clean = True
    for wave in waves:
        running = [c for c in wave if c.alive]
        starting = {id(c) for c in running if not c.ready}
        for child in running:
            assert child.proc is not None
            log.info("stopping child", extra={"child": child.spec.name, "pid": child.proc.pid})
            child.proc.send_signal(signal.SIGTERM)
        async with trio.open_nursery() as nursery:
            for child in running:
                nursery.start_soon(_reap, child, policy.stop_within_s)
        ok = {0}
        clean = clean and all(
            c.proc is not None
            and c.proc.returncode in (ok | {-signal.SIGTERM} if id(c) in starting else ok)
            for c in running
        )
    return clean


async def _reap(child: Child, within_s: float) -> None:
    assert child.proc is not None
    with trio.move_on_after(within_s):
        await child.proc.wait()
        log.info(
            "child stopped",
            extra={"child": child.spec.name, "returncode": child.proc.returncode},
        )
        return
    log.error("child did not stop in time; killing it", extra={"child": child.spec.name})
    child.proc.kill()
    await child.proc.wait()


async def _watch_signals(stop: trio.Event) -> None:
    """The first SIGTERM/SIGINT starts the stop. The receiver stays open until the supervisor
    returns: a second signal (an impatient Ctrl-C, a service manager's repeat) would otherwise
    kill it outright and leave its children to stop all at once, out of order."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                log.info("signal received; already stopping", extra={"signal": signum})
                continue
            log.info("signal received, stopping the fleet", extra={"signal": signum})
            stop.set()


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def watch_parent(supervisor_pid: int, stop: trio.Event, poll_s: float = 1.0) -> None:
    """In a child: set `stop` (drain and exit) once its supervisor is gone — the parent is then
    someone else (the child was re-parented), whatever killed it."""
    while os.getppid() == supervisor_pid:  # noqa: ASYNC110 - re-parenting sends no event
        await trio.sleep(poll_s)
    log.warning("supervisor gone; draining", extra={"supervisor_pid": supervisor_pid})
    stop.set()


def tap_command(config_path: str | None) -> list[str]:
    """How a child runs `tap`: this interpreter, this package, the supervisor's config file."""
    command = [sys.executable, "-m", "tap.runtime.cli"]
    if config_path:
        command += ["--config", config_path]
    return command
