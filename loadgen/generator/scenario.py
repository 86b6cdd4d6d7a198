"""Load scenarios: what a run asks for, read strictly from TOML (`loadgen/scenarios/*.toml`).

It decides the scenario format: stages in the k6 vocabulary (`ramp`, `steady`, `spike`, `soak`,
each a duration and a target arrival rate), how the virtual users behave (how many, which
transport they tap over, what they subscribe to), and the thresholds that make a run fail. It
leaves to `loadgen.generator.schedule` how stages become send times, and to
`loadgen.generator.thresholds` how
results are judged.

Stage semantics (rates in requests per second):
- `ramp`: linear from the rate the previous stage ended at (0 at the start) to `target`.
- `steady`: constant `target` (the previous rate when `target` is omitted).
- `spike`: jumps to `target` at once and holds it; the next stage starts from there (a `spike`
  followed by a short `ramp` down is k6's spike test).
- `soak`: `steady` by another name: a long constant stage whose point is duration.

Durations are `"500ms"`, `"30s"`, `"2m"`, `"1h"`, or a bare number of seconds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"  # package data (pyproject)

StageKind = Literal["ramp", "steady", "spike", "soak"]
Transport = Literal["http", "ws", "mixed"]
Arrivals = Literal["uniform", "poisson"]

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ScenarioError(ValueError):
    """The scenario file is malformed; the text names the key."""


def parse_duration(value: str | int | float) -> float:
    """Seconds from `"250ms"`, `"30s"`, `"2m"`, `"1h"` or a number of seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"duration {value!r}: expected e.g. '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(value)
        if m is None:
            raise ScenarioError(f"duration {value!r}: expected e.g. '500ms', '30s', '2m', '1h'")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds < 0:
        raise ScenarioError(f"duration {value!r}: must not be negative")
    return seconds


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Stage(_Strict):
    kind: StageKind
    duration: str | float  # see `parse_duration`
    target: float | None = None  # requests/s at the end of the stage (None: keep the rate)

    @property
    def seconds(self) -> float:
        return parse_duration(self.duration)


class ClientSpec(_Strict):
    """How the virtual users behave."""

    vus: int = 10  # wallets, each with its own HTTP connection and WebSocket
    # How many of them also subscribe to prices + grid (the rest take `account` only). Every
    # subscriber decodes a full grid every second: on the generator's single core, hundreds of
    # them would measure the generator, not the server. `bench fanout` measures fan-out.
    market_data_vus: int = 1
    transport: Transport = "http"
    ws_share: float = 0.5  # with transport = "mixed": the share of taps sent over the WebSocket
    symbol: str = "BTC-USD"
    deposit: int = 1_000_000_000  # units each VU deposits at login (mock deposits)
    stake: int = 0  # units per bet; 0 = the market's min_stake
    arrivals: Arrivals = "uniform"  # uniform spacing (k6 constant-arrival-rate) or Poisson
    seed: int = 0  # Poisson arrivals and cell choice; 0 = random per run
    timeout: str | float = "10s"  # per request
    drain: str | float = "10s"  # after the last stage: wait for outstanding confirmations
    # How long an idle HTTP connection is reused before the next request opens a new one: keep
    # it under the server's keep-alive timeout (Hypercorn's default 5 s; tap's
    # `server.keep_alive_timeout_s`, 30 s), or every request of a user who taps more slowly
    # than this pays a TCP and HTTP setup.
    keep_alive: str | float = "4s"
    setup_concurrency: int = 32  # logins in flight at once (the server's backlog is finite)
    # Tap only the nearest `columns` placeable columns (0: any of them). A bet settles at its
    # column's end; nearer columns bring a run to its steady state (as many bets settled as
    # placed per second) sooner: the bench's tap probes use 2.
    columns: int = 0


class RouteThresholds(_Strict):
    """Limits on one route (or `"*"`: each route). Unset = not checked."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    error_rate: float | None = None  # non-2xx answers + transport failures, over all requests
    server_error_rate: float | None = None  # 5xx answers + transport failures, over all requests


class Thresholds(_Strict):
    routes: dict[str, RouteThresholds] = msgspec.field(default_factory=dict)
    max_unanswered: int | None = 0  # 202s never confirmed nor rejected on the WebSocket
    confirm_p99_ms: float | None = None  # acceptance → confirmation on the WebSocket
    max_generator_shortfall: int | None = None  # arrivals the generator could not send


class Scenario(_Strict):
    name: str
    description: str = ""
    base_url: str = "http://127.0.0.1:8080"
    client: ClientSpec = msgspec.field(default_factory=ClientSpec)
    stages: list[Stage] = msgspec.field(default_factory=list)
    thresholds: Thresholds = msgspec.field(default_factory=Thresholds)

    @property
    def duration_s(self) -> float:
        return sum(s.seconds for s in self.stages)


def _check(s: Scenario) -> None:
    if not s.stages:
        raise ScenarioError("stages: at least one stage is needed")
    for i, st in enumerate(s.stages):
        where = f"stages[{i}]"
        seconds = st.seconds
        if st.target is not None and st.target < 0:
            raise ScenarioError(f"{where}.target = {st.target}: must be >= 0")
        if st.kind in ("ramp", "spike") and st.target is None:
            raise ScenarioError(f"{where}.target: a {st.kind} stage needs a target rate")
        if seconds <= 0:
            raise ScenarioError(f"{where}.duration: must be positive")
    c = s.client
    if c.vus < 1:
        raise ScenarioError(f"client.vus = {c.vus}: must be >= 1")
    if not 0 <= c.market_data_vus <= c.vus:
        raise ScenarioError(f"client.market_data_vus = {c.market_data_vus}: must be 0..vus")
    if not 0.0 <= c.ws_share <= 1.0:
        raise ScenarioError(f"client.ws_share = {c.ws_share}: must be within 0..1")
    if c.setup_concurrency < 1:
        raise ScenarioError("client.setup_concurrency: must be >= 1")
    if c.columns < 0:
        raise ScenarioError(f"client.columns = {c.columns}: must be >= 0 (0: every column)")
    parse_duration(c.timeout)
    parse_duration(c.drain)
    parse_duration(c.keep_alive)
    for route, t in s.thresholds.routes.items():
        for name in ("error_rate", "server_error_rate"):
            v = getattr(t, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ScenarioError(f"thresholds.routes.{route!r}.{name} = {v}: a fraction 0..1")


def decode_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: {e}") from e
    try:
        scenario = msgspec.convert(tree, Scenario)
    except msgspec.ValidationError as e:
        raise ScenarioError(f"{source}: {e}") from e
    try:
        _check(scenario)
    except ScenarioError as e:
        raise ScenarioError(f"{source}: {e}") from e
    return scenario


def resolve_path(name_or_path: str) -> Path:
    """A path as given, or a bare name looked up in `loadgen/scenarios/` (`smoke` → smoke.toml)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return SCENARIO_DIR / f"{name_or_path}.toml"


def load_scenario(name_or_path: str) -> Scenario:
    path = resolve_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ScenarioError(f"scenario {name_or_path!r}: no such file ({path})") from e
    return decode_scenario(text, str(path))
