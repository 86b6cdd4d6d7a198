"""Configuration: one msgspec Struct per section, decoded strictly from TOML plus environment.

`load_config` reads `tap/configs/default.toml` (the embedded defaults, shipped inside the package
and read through `importlib.resources`, so a wheel install finds them), then an optional file, then
`TAP__SECTION__KEY=value` environment overrides (`TAP__MARKETS__0__COLUMN_MS` reaches into the
list of markets). Every error names the key, the value and what was expected. Secrets (the admin
token) come only from the environment and are never part of these Structs' printable form.

Pure: it reads files and a mapping you pass in; it knows no trio, sockets or clocks.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import msgspec

from tap.messages import MAX_MULTIPLIER_BPS, MAX_SAFE_INT

# Package data, not a path into the source tree: an installed wheel has no `configs/` beside it.
DEFAULT_CONFIG: Traversable = files("tap") / "configs" / "default.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")  # server.log_level, in any letter case


class Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class MarketConfig(Base, frozen=True):
    """One market's grid and money parameters (API.md, "Grid and cells")."""

    symbol: str = "BTC-USD"
    price_scale: int = 100  # price increments per 1.0 of quote currency
    column_ms: int = 5000
    row_height: int = 1000  # price increments (1000 = 10.00 USD)
    columns_ahead: int = 12
    rows: int = 16  # published rows, centred on the current price
    lockout_columns: int = 1
    min_stake: int = 100_000  # units (1 unit = 1e-6 currency)
    max_stake: int = 100_000_000
    stake_presets: list[int] = msgspec.field(
        default_factory=lambda: [1_000_000, 5_000_000, 10_000_000, 50_000_000]
    )
    house_edge_bps: int = 500
    min_multiplier_bps: int = 10_500
    max_multiplier_bps: int = 1_000_000
    # The largest payout one bet may have (units), refused with 422 exposure_limit; 0 = no limit.
    max_bet_payout: int = 0
    # The largest sum of potential payouts (amount × multiplier / 10000) of the open bets on one
    # cell (units): a bet taking a cell past it is refused exposure_limit, by the writer (the
    # final authority; 422 under Prefer: wait) and at once by the edge for a bet past it alone.
    # 0 = no limit. Default 10,000.00: one max_stake bet at max_multiplier_bps fits.
    max_cell_liability: int = 10_000_000_000


class PricingConfig(Base, frozen=True):
    vol_initial: float = 0.60  # annualized σ used until ticks say otherwise
    vol_floor: float = 0.20
    vol_cap: float = 3.00
    vol_halflife_ms: int = 60_000  # EWMA half-life of the variance estimate
    refresh_ms: int = 500  # grid recomputed at most this often (DESIGN rule 10)
    # The tick interval Δ quotes assume (docs/pricing.md). 0 = the feed's own: `feed.sim_tick_ms`
    # for the built-in simulator, else estimated from the stream (EWMA of inter-arrival gaps).
    monitoring_interval_ms: int = 0


class AuthConfig(Base, frozen=True):
    domain: str = "127.0.0.1:8080"
    uri: str = "http://127.0.0.1:8080"
    chain_id: int = 31337  # dev chain id; production configs set 1
    max_skew_ms: int = 30_000
    challenge_ttl_ms: int = 300_000
    session_ttl_ms: int = 86_400_000


class LimitsConfig(Base, frozen=True):
    rate_per_s: float = 10.0  # bets per address per second (token bucket)
    burst: int = 20
    # Login challenges per client address (an IPv6 /64), not per address: addresses are free.
    # Challenges and sessions are signed, not stored (tap/sessions.py), so this bounds CPU and
    # the login claims a client can make (a claim lives challenge_ttl_ms + 1 min): at 100/s one
    # client makes at most ~37k, well under the 100k a process without Redis keeps.
    challenge_rate_per_s: float = 100.0
    challenge_burst: int = 1000
    max_body_bytes: int = 16_384


class BreakerConfig(Base, frozen=True):
    stale_after_ms: int = 10_000
    hysteresis_ms: int = 30_000
    jump_bps: int = 500  # a move of more than this within jump_window_ms opens the breaker
    jump_window_ms: int = 1_000
    # A tick arriving more than this after its own ts opens the breaker (a feed that trails the
    # exchange lets players bet with hindsight); closed again after hysteresis_ms of timely ticks.
    # 0 = off. Not applied to the in-process simulator (its ts is our schedule, not a market's).
    max_tick_age_ms: int = 1_000


class BatcherConfig(Base, frozen=True):
    max_batch: int = 512
    # Flush this long after the first queued item: it trades a few ms of confirmation latency
    # (never of the 202) for fewer commits, each of which costs ~0.3 ms of CPU beyond its rows.
    max_wait_ms: int = 8
    queue_size: int = 4096  # bets waiting for the writer before the edge answers 503
    busy_timeout_ms: int = 50
    busy_retries: int = 20
    retry_backoff_ms: int = 5


# "manual": ticks pushed in-process by a test through `actors.ingest.ManualFeed`.
FeedSource = Literal["sim", "ws-sim", "binance", "coinbase", "manual"]


class FeedConfig(Base, frozen=True):
    source: FeedSource = "sim"
    url: str = ""  # for ws-sim / binance / coinbase
    # A second endpoint of the same format: each lost connection tries the other URL next,
    # so a dead primary costs one `dead_after_ms` and a backoff, not an outage. "" = none.
    fallback_url: str = ""
    symbol: str = "BTC-USD"
    # The feed's own instrument name ("BTCUSDT" on Binance); empty = derived from `symbol`.
    instrument: str = ""
    max_gap_ms: int = 2000  # a longer hole in the tick log voids the bets it overlaps
    dead_after_ms: int = 5000  # no message this long → reconnect
    backoff_initial_ms: int = 250
    backoff_max_ms: int = 30_000
    sim_seed: int = 1
    sim_sigma: float = 0.60
    sim_tick_ms: int = 250
    sim_start_price: int = 10_000_000  # increments (100000.00 USD)


class ArchiveConfig(Base, frozen=True):
    dir: str = ""  # "" = "archive" beside the database file
    after_days: int = 30
    interval_s: int = 7 * 86_400
    tick_retention_days: int = 7
    integrity_interval_s: int = 86_400
    backup_dir: str = ""  # "" = "backups" beside the database file
    backup_interval_s: int = 3_600
    backup_keep: int = 24


class RedisConfig(Base, frozen=True):
    url: str = ""  # empty → in-memory hot state (one process)
    prefix: str = "tap"
    socket_timeout_ms: int = 500
    connect_timeout_ms: int = 500
    request_timeout_ms: int = 1000  # admission answers 503 dependency_unavailable after this


class BusConfig(Base, frozen=True):
    """The core ⇄ edges bus (Redis Streams; only `tap serve --role core|edge` uses it)."""

    # Requests waiting for the core (the requests stream's length) past which an edge answers
    # 503 overloaded at once: ~1 s of the writer's peak, so a backed-up core sheds load early.
    max_backlog: int = 20_000
    # An edge that has heard nothing from the core this long refuses bets (503 breaker_open):
    # four missed heartbeats (the core sends one every 250 ms).
    core_silence_ms: int = 1_000
    # Committed batches kept for edges that fall behind (a lagging edge beyond it resyncs).
    committed_maxlen: int = 100_000


class ServerConfig(Base, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    db_path: str = "data/tap.db"
    cors_origins: list[str] = msgspec.field(default_factory=list)
    tls_cert: str = ""
    tls_key: str = ""
    graceful_timeout_s: float = 5.0
    send_timeout_ms: int = 5000  # TCP_USER_TIMEOUT on accepted sockets
    keep_alive_timeout_s: float = 30.0  # an idle HTTP/1.1 connection is closed after this
    ws_queue: int = 64  # per-client outbound queue (account messages beyond it → close 1013)
    ws_max_bad_frames: int = 5
    ws_hello_timeout_s: float = 10.0  # no auth/subscribe by then → close 1008 (API.md)
    log_level: str = "info"  # `tap serve` only: one of LOG_LEVELS (other commands log INFO)
    # Peers (IPs or CIDRs) whose X-Forwarded-For is believed: the client is the rightmost hop
    # not in this list. Empty: the socket peer is the client, whatever the header says.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)


class PaymentsConfig(Base, frozen=True):
    mock_deposits: bool = False
    max_deposit: int = 1_000_000_000


class Config(Base, frozen=True):
    markets: list[MarketConfig] = msgspec.field(default_factory=lambda: [MarketConfig()])
    pricing: PricingConfig = msgspec.field(default_factory=PricingConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    batcher: BatcherConfig = msgspec.field(default_factory=BatcherConfig)
    feed: FeedConfig = msgspec.field(default_factory=FeedConfig)
    archive: ArchiveConfig = msgspec.field(default_factory=ArchiveConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    payments: PaymentsConfig = msgspec.field(default_factory=PaymentsConfig)

    def market(self, symbol: str) -> MarketConfig | None:
        for m in self.markets:
            if m.symbol == symbol:
                return m
        return None


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; the text says which."""


ENV_PREFIX = "TAP__"


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_env_value(raw: str) -> Any:
    """TOML-decode a scalar or array (`5000`, `true`, `[1, 2]`, `"x"`); else it is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(path) < 2 or not all(path):
            raise ConfigError(f"{name}: expected TAP__SECTION__KEY")
        node: Any = tree
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{name}: {where!r} needs an index below {len(node)}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"{name}: {where!r} is not a section")
        if not isinstance(node, dict):
            raise ConfigError(f"{name}: {'.'.join(path[:-1])!r} is a list, not a section")
        node[path[-1]] = _parse_env_value(environ[name])
    return tree


def _read_toml(path: Path | Traversable) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {str(path)!r} not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r}: {e}") from e


def _validate(cfg: Config) -> None:
    def need(ok: bool, key: str, value: object, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{key} = {value!r}: expected {expected}")

    need(len(cfg.markets) >= 1, "markets", cfg.markets, "at least one market")
    for i, m in enumerate(cfg.markets):
        k = f"markets[{i}]"
        need(m.column_ms > 0, f"{k}.column_ms", m.column_ms, "a positive integer")
        need(m.row_height > 0, f"{k}.row_height", m.row_height, "a positive integer")
        need(m.rows > 0, f"{k}.rows", m.rows, "a positive integer")
        need(m.lockout_columns >= 0, f"{k}.lockout_columns", m.lockout_columns, ">= 0")
        need(
            m.columns_ahead >= 1 + m.lockout_columns,
            f"{k}.columns_ahead",
            m.columns_ahead,
            "at least 1 + lockout_columns",
        )
        need(0 < m.min_stake <= m.max_stake, f"{k}.min_stake", m.min_stake, "0 < min <= max_stake")
        need(0 <= m.house_edge_bps < 10_000, f"{k}.house_edge_bps", m.house_edge_bps, "0..9999")
        need(
            10_000 <= m.min_multiplier_bps <= m.max_multiplier_bps,
            f"{k}.min_multiplier_bps",
            m.min_multiplier_bps,
            "10000 <= min <= max_multiplier_bps",
        )
        need(
            m.max_multiplier_bps <= MAX_MULTIPLIER_BPS,
            f"{k}.max_multiplier_bps",
            m.max_multiplier_bps,
            f"at most {MAX_MULTIPLIER_BPS} (the wire bound of min_multiplier_bps)",
        )
        need(m.max_stake <= MAX_SAFE_INT, f"{k}.max_stake", m.max_stake, f"<= {MAX_SAFE_INT}")
        need(
            0 <= m.max_cell_liability <= MAX_SAFE_INT,
            f"{k}.max_cell_liability",
            m.max_cell_liability,
            f"0 (no limit) .. {MAX_SAFE_INT}",
        )
    p = cfg.pricing
    need(0 < p.vol_floor <= p.vol_cap, "pricing.vol_floor", p.vol_floor, "0 < floor <= vol_cap")
    need(p.refresh_ms > 0, "pricing.refresh_ms", p.refresh_ms, "a positive integer")
    need(
        0 <= p.monitoring_interval_ms <= 3_600_000,
        "pricing.monitoring_interval_ms",
        p.monitoring_interval_ms,
        "0 (the feed's own tick interval) or 1..3600000 ms",
    )
    need(cfg.auth.max_skew_ms > 0, "auth.max_skew_ms", cfg.auth.max_skew_ms, "a positive integer")
    for key in ("challenge_ttl_ms", "session_ttl_ms"):
        value = getattr(cfg.auth, key)
        need(0 < value <= MAX_SAFE_INT, f"auth.{key}", value, "a positive integer")
    need(cfg.limits.rate_per_s > 0, "limits.rate_per_s", cfg.limits.rate_per_s, "> 0")
    need(cfg.limits.burst >= 1, "limits.burst", cfg.limits.burst, ">= 1")
    need(
        cfg.limits.challenge_rate_per_s > 0,
        "limits.challenge_rate_per_s",
        cfg.limits.challenge_rate_per_s,
        "> 0",
    )
    need(
        cfg.limits.challenge_burst >= 1,
        "limits.challenge_burst",
        cfg.limits.challenge_burst,
        ">= 1",
    )
    for i, proxy in enumerate(cfg.server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            need(False, f"server.trusted_proxies[{i}]", proxy, "an IP address or CIDR network")
    need(cfg.batcher.max_batch >= 1, "batcher.max_batch", cfg.batcher.max_batch, ">= 1")
    need(cfg.batcher.queue_size >= 1, "batcher.queue_size", cfg.batcher.queue_size, ">= 1")
    need(cfg.feed.max_gap_ms > 0, "feed.max_gap_ms", cfg.feed.max_gap_ms, "a positive integer")
    need(cfg.feed.sim_tick_ms > 0, "feed.sim_tick_ms", cfg.feed.sim_tick_ms, "a positive integer")
    need(
        cfg.feed.source in ("sim", "manual") or bool(cfg.feed.url),
        "feed.url",
        cfg.feed.url,
        f"a ws:// URL for feed.source = {cfg.feed.source!r}",
    )
    need(
        cfg.server.keep_alive_timeout_s > 0,
        "server.keep_alive_timeout_s",
        cfg.server.keep_alive_timeout_s,
        "> 0",
    )
    need(0 <= cfg.server.port <= 65535, "server.port", cfg.server.port, "0..65535")
    need(
        cfg.server.ws_hello_timeout_s > 0,
        "server.ws_hello_timeout_s",
        cfg.server.ws_hello_timeout_s,
        "a positive number of seconds",
    )
    need(
        cfg.server.log_level.lower() in LOG_LEVELS,
        "server.log_level",
        cfg.server.log_level,
        "one of " + "/".join(LOG_LEVELS),
    )
    need(
        bool(cfg.server.tls_cert) == bool(cfg.server.tls_key),
        "server.tls_cert",
        cfg.server.tls_cert,
        "tls_cert and tls_key both set or both empty",
    )


def decode_config(tree: Mapping[str, Any]) -> Config:
    """Strictly decode a merged tree; a wrong key or type names its path."""
    try:
        cfg = msgspec.convert(dict(tree), Config, strict=False)
    except msgspec.ValidationError as e:
        # msgspec says e.g. "Expected `int`, got `str` - at `$.markets[0].column_ms`"
        raise ConfigError(f"invalid configuration: {e}") from e
    _validate(cfg)
    beside_db = Path(cfg.server.db_path).parent
    archive = msgspec.structs.replace(
        cfg.archive,
        dir=cfg.archive.dir or str(beside_db / "archive"),
        backup_dir=cfg.archive.backup_dir or str(beside_db / "backups"),
    )
    return msgspec.structs.replace(cfg, archive=archive)


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    defaults: str | Path | Traversable = DEFAULT_CONFIG,
) -> Config:
    """Embedded defaults ← optional file ← `TAP__…` environment overrides."""
    tree = _read_toml(Path(defaults) if isinstance(defaults, str) else defaults)
    if path is not None:
        tree = _merge(tree, _read_toml(Path(path)))
    tree = _apply_env(tree, os.environ if environ is None else environ)
    return decode_config(tree)


def describe(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data for the startup log, secrets masked."""
    data: dict[str, Any] = msgspec.to_builtins(cfg)
    url = data["redis"]["url"]
    if "@" in url:  # redis://user:password@host → mask the credentials
        scheme, _, rest = url.partition("://")
        data["redis"]["url"] = f"{scheme}://***@{rest.rpartition('@')[2]}"
    return data
