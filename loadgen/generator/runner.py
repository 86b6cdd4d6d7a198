"""One scenario run: set the crowd up, drive the schedule, drain, judge, report.

It decides the order of a run — fetch the market, log every user in (signatures from the worker
process), sign the first bets, then walk the stages open-loop while a monitor prints the live
line and watches the generator itself; after the last stage, wait for requests in flight and for
outstanding confirmations (`client.drain`), and build the report that `thresholds` judges. It
leaves the arrival math to `schedule`, the sending to `engine` and `vu`, and the printing to
`report`.

The generator watches itself: when its own CPU passes 90 % of a core, or its dispatcher wakes
more than 20 ms late, it warns on the spot and lists the warning in the report, because from
then on the figures describe the generator at least as much as the server.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import trio

from loadgen.generator.cpu import CpuMeter
from loadgen.generator.engine import Dispatcher, SlotPool, freeze_heap
from loadgen.generator.recorder import Recorder
from loadgen.generator.report import ProgressLine, verdicts_json
from loadgen.generator.scenario import Scenario, parse_duration
from loadgen.generator.schedule import Schedule
from loadgen.generator.signer import Signer
from loadgen.generator.thresholds import evaluate, passed
from loadgen.generator.vu import Crowd, Target
from loadgen.peers.targets import RunningServer

CPU_WARN_PCT = 90.0
LAG_WARN_MS = 20.0


class Monitor:
    """Samples the generator (and the server, when we started it) once a second."""

    def __init__(
        self,
        *,
        signer: Signer | None = None,
        server: RunningServer | None = None,
        progress: ProgressLine | None = None,
    ) -> None:
        self.cpu = CpuMeter()
        self.signer = signer
        self.signer_cpu: CpuMeter | None = None
        self.server_cpu = server.cpu_meter() if server is not None else None
        self.progress = progress
        self.warnings: Counter[str] = Counter()  # kind → seconds it was seen
        self.first_warning: dict[str, str] = {}

    def restart(self) -> None:
        self.cpu.restart()
        if self.signer_cpu is not None:
            self.signer_cpu.restart()
        if self.server_cpu is not None:
            self.server_cpu.restart()

    def _signer_meter(self) -> CpuMeter | None:
        if self.signer_cpu is None and self.signer is not None and self.signer.pid is not None:
            self.signer_cpu = CpuMeter(self.signer.pid)
        return self.signer_cpu

    def check(self, cpu_pct: float | None, lag_p99_ms: float) -> list[str]:
        """Warn (once per kind, on the spot) when the generator may be what is measured."""
        found = []
        if cpu_pct is not None and cpu_pct >= CPU_WARN_PCT:
            found.append(
                ("cpu", f"generator CPU at {cpu_pct:.0f}% of a core: it may not keep the rate")
            )
        if lag_p99_ms > LAG_WARN_MS:
            found.append(
                (
                    "lag",
                    f"dispatcher {lag_p99_ms:.0f} ms late (p99 over a second): the generator is "
                    "not keeping the rate",
                )
            )
        for kind, text in found:
            if kind not in self.first_warning and self.progress is not None:
                self.progress.warn(text)
            self.first_warning.setdefault(kind, text)
            self.warnings[kind] += 1
        return [text for _, text in found]

    def overall(self) -> dict[str, Any]:
        """CPU since the last restart, and how long each process waited for a core."""
        sig = self._signer_meter()
        return {
            "cpu_pct": self.cpu.overall(),
            "signer_cpu_pct": sig.overall() if sig is not None else None,
            "server_cpu_pct": self.server_cpu.overall() if self.server_cpu else None,
            "server_cpu_s": self.server_cpu.overall_seconds() if self.server_cpu else None,
            "cpu_wait_pct": self.cpu.overall_wait(),
            "server_cpu_wait_pct": self.server_cpu.overall_wait() if self.server_cpu else None,
        }

    def sample(self) -> tuple[float | None, float | None, float | None]:
        sig = self._signer_meter()
        return (
            self.cpu.sample(),
            sig.sample() if sig is not None else None,
            self.server_cpu.sample() if self.server_cpu is not None else None,
        )


def due_times(schedule: Schedule, arrivals: str, seed: int) -> Any:
    return schedule.poisson(random.Random(seed)) if arrivals == "poisson" else schedule.uniform()


async def _pace(crowd: Crowd, schedule: Schedule, t0: float) -> None:
    """Keep `crowd.rate` at the rate due one signing lead ahead, so queues are deep enough."""
    while True:
        crowd.rate = schedule.rate_at(trio.current_time() - t0 + crowd.lead_s)
        await trio.sleep(0.1)


async def _show(
    crowd: Crowd,
    pool: SlotPool[Any],
    dispatcher: Dispatcher,
    monitor: Monitor,
    schedule: Schedule,
    t0: float,
) -> None:
    last = trio.current_time()
    while True:
        await trio.sleep(1.0)
        now = trio.current_time()
        span = now - last
        last = now
        window, count, errors = crowd.recorder.take_window()
        lag = dispatcher.take_window_lag()
        cpu, sig, srv = monitor.sample()
        monitor.check(cpu, lag.percentile(99) / 1000.0)
        elapsed = now - t0
        i = schedule.segment_index_at(elapsed)
        seg = schedule.segments[i]
        if monitor.progress is not None:
            monitor.progress.show(
                elapsed,
                f"{seg.kind} {i + 1}/{len(schedule.segments)} target "
                f"{schedule.rate_at(elapsed):.0f}/s done {count / span:.0f}/s p99 "
                f"{window.percentile(99) / 1000.0:.1f} ms err {errors} busy {pool.busy}/"
                f"{pool.size} backlog {len(pool.backlog)} awaiting-confirm "
                f"{crowd.tracker.unanswered} cpu {cpu or 0:.0f}%"
                + (f" signer {sig:.0f}%" if sig is not None else "")
                + (f" server {srv:.0f}%" if srv is not None else ""),
            )


async def run_scenario(
    scenario: Scenario,
    *,
    base_url: str | None = None,
    progress: ProgressLine | None = None,
    server: RunningServer | None = None,
) -> dict[str, Any]:
    """Run `scenario` against `base_url` (default: the scenario's) and return the report."""
    target = Target(base_url or scenario.base_url)
    spec = scenario.client
    recorder = Recorder()
    crowd = Crowd(target, spec, recorder)
    schedule = Schedule(scenario.stages)
    dispatcher = Dispatcher()
    setup_s = 0.0
    async with Signer(spec.vus, crowd.signer_seed) as signer:
        monitor = Monitor(signer=signer, server=server, progress=progress)
        try:
            async with trio.open_nursery() as nursery:
                started = trio.current_time()
                await crowd.setup(nursery, signer)
                setup_s = trio.current_time() - started
                crowd.rate = schedule.rate_at(crowd.lead_s)
                await crowd.presign_once(signer)
                nursery.start_soon(crowd.presign, signer)
                nursery.start_soon(crowd.watch_grid)
                freeze_heap()
                pool = SlotPool(crowd.users, crowd.fire, recorder)
                pool.bind(nursery)
                t0 = trio.current_time() + 0.05
                recorder.measure_from = t0
                monitor.restart()
                nursery.start_soon(_pace, crowd, schedule, t0)
                nursery.start_soon(_show, crowd, pool, dispatcher, monitor, schedule, t0)
                await dispatcher.drive(
                    due_times(schedule, spec.arrivals, crowd.seed), t0, pool.submit
                )
                with trio.move_on_after(crowd.timeout + 1.0):
                    await pool.wait_idle()
                usage = monitor.overall()
                await crowd.drain(parse_duration(spec.drain))
                nursery.cancel_scope.cancel()
        finally:
            crowd.close()
    if progress is not None:
        progress.end()
    return build_report(
        scenario.name,
        target.base_url,
        schedule.duration,
        recorder,
        crowd,
        dispatcher,
        monitor,
        usage,
        setup_s,
        scenario,
    )


def inline_warning(crowd: Crowd, dispatched: int) -> list[str]:
    """A warning when more than 1 % of bets had to be signed on the event loop."""
    inline = crowd.counters["signed_inline"]
    if dispatched and inline > 0.01 * dispatched:
        return [f"{inline} of {dispatched} bets were signed inline: the presigner fell behind"]
    return []


def build_report(
    name: str,
    base_url: str,
    seconds: float,
    recorder: Recorder,
    crowd: Crowd,
    dispatcher: Dispatcher,
    monitor: Monitor,
    usage: dict[str, Any],
    setup_s: float,
    scenario: Scenario | None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "scenario": name,
        "target": base_url,
        "duration_s": seconds,
        "users": len(crowd.users),
        "setup_s": round(setup_s, 2),
        "routes": recorder.summary(seconds),
        "bets": crowd.tracker.summary(),
        "generator": {
            "cpu_pct": usage["cpu_pct"],
            "signer_cpu_pct": usage["signer_cpu_pct"],
            "cpu_wait_pct": usage["cpu_wait_pct"],
            "dispatch_lag": dispatcher.lag.summary_ms(),
            "dispatched": dispatcher.dispatched,
            "shortfall": dict(recorder.shortfall),
            "warnings": [
                f"{monitor.first_warning[kind]} (in {n} of the run's seconds)"
                for kind, n in monitor.warnings.items()
            ]
            + inline_warning(crowd, dispatcher.dispatched),
            "crowd": crowd.summary(),
        },
        "server_cpu_pct": usage["server_cpu_pct"],
        "server_cpu_wait_pct": usage["server_cpu_wait_pct"],
        "setup": crowd.setup_recorder.summary(max(setup_s, 1e-9)),
    }
    if scenario is not None:
        verdicts = evaluate(scenario.thresholds, report)
        report["thresholds"] = verdicts_json(verdicts)
        report["passed"] = passed(verdicts)
    else:
        report["passed"] = True
    return report
