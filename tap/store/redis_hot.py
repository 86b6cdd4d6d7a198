"""`HotState` in Redis, shared by every edge process: admission is one Lua script call per request,
sent through the gateway actor (`actors/redis_gateway.py`), which pipelines concurrent calls.

It decides the key layout, what each script does, how a missing balance is resolved and how the
balance cache is rebuilt while other edges keep admitting. It leaves to its owner the ledger reads
(`balance_source`, `rebuild_from`'s reader) and what to do on recovery (the gateway's hook).
Answers match `InMemoryHotState` exactly (the contract tests run both); when Redis does not answer
within `redis.request_timeout_ms`, every call raises `HotStateUnavailable` instead.

Keys (`p` = `redis.prefix`). Everything one admission touches carries the address as its hash tag,
so each script works inside one slot (Redis Cluster-safe):
    p:{addr}:bal             hash  v = spendable units, t = ledger position (below),
                                   mk = rebuild mark or era, f = folded era, j = journal (below)
    p:{addr}:rl              hash  rate bucket: g = level in grains, t = last now_ms
    p:{addr}:n:<nonce>       str   the nonce, remembered 2 × max_skew_ms (value: mark at admission)
    p:{addr}:c:<cell_id>     str   one bet per cell, remembered marker_ttl_ms (value: mark)
    p:epoch                  str   counter that makes rebuild marks unique
    p:alive                  str   the gateway's sentinel: missing ⇒ the data was lost
    p:breaker:override       str   the latest breaker override (and the pub/sub channel's name)
    p:claim:<name>           str   a claim (`claim_once`: a redeemed login challenge), for its ttl

Time. The rate bucket runs on the `now_ms` the edge passes, as the in-memory one does: both give
the same answers, tests drive it with a mock clock, and a bucket never refills backwards in time
(an edge whose clock lags another's gains nothing). Memory lengths (nonces, cell markers, idle
buckets) are relative expiries (`PX`) on Redis's own clock: durations need no shared origin.

Missing balances. Without a `balance_source`, a missing balance is 0, as in memory: a credit
creates it, and the startup rebuild fills every ledger account. With one, it is *unknown*: the
admission script answers "unknown" before touching anything (not even the rate token), this
module reads the ledger's available for that address, seeds it (`SET`-if-absent semantics: a
concurrent seed or move wins) and asks again. Credits and releases to an unknown balance are
dropped, because the ledger read that will seed it already counts that money. This makes a flushed
or restarted Redis heal address by address, without waiting for a full rebuild.

Ledger positions. A credit is sent by ledger-sync *after* its commit, so a ledger read can land
in between: a balance seeded (or rebuilt) from that read already holds the money, and the late
credit would count it again — the hot balance would read high. So every balance carries `t`, the
ledger position of the read it was built from: the highest `entry_id` of the address that read
included (`balance_source` and the rebuild's reader return it with the available, from one SQL
statement, i.e. one snapshot). Entry ids grow with commit order (SQLite has one writer at a time,
and `AUTOINCREMENT` never reuses one), so the entries of the address that read held are exactly
those with `entry_id <= t`. A credit carries the `entry_id` of the ledger row that made the money
available and is applied only when it is past `t`: exactly once either way.
  - Credits do not move `t`: it says which entries the *read* held, and a credit applied on top
    says nothing about the entries below it. Two edges commit into one ledger, so their credits
    for one address reach Redis in any order; each is applied iff the read did not hold it.
    (Were `t` raised to each applied credit, one arriving after a later one from the other edge
    would be skipped: a payout missing from the hot balance until the next rebuild. That is the
    safe direction, but it would only guard against one entry credited twice, and ledger-sync
    sends each commit's credit once.)
  - A credit without an `entry_id` is applied whatever `t` says (the protocol's older form:
    tests, loadgen). `rebuild(balances)` knows no positions: it sets every `t` to 0.
  - A negative credit at or below `t` is not applied, but it is journalled (below) all the same:
    the journal is measured against the next rebuild's read, which may be older than the seed's.
  - Should a credit ever be wrongly judged "already held", it is missing: the balance reads low
    (the safe direction, DESIGN rule 6), never high — a negative one too, by the journal rule
    just above and because a rebuild sets `t` to exactly its own read's position.

Rebuild while other edges run (`rebuild_from`). A plain overwrite would lose every reservation
other edges make between the ledger read and the write (the hot balance would then sit above
what the ledger allows). Instead, per address, in two phases around the ledger read:
  1. mark: every existing balance gets a fresh unique mark and an empty journal `j`. From then on
     each reservation and each negative credit adds its (negative) amount to `j`; a release adds
     its amount back only when its reservation was made under the same mark (the mark is stored
     with the nonce and the cell marker), so a reservation from before the mark is in neither.
  2. read the ledger (the caller's reader), then apply: `v := available + j` and `t := the read's
     position` for every balance still carrying this mark (or created since: "new"); one stamped
     by a later rebuild is left to it, so concurrent rebuilds by several edges settle per address
     on the last one marked.
Each phase is one script per address, so no move is lost or counted twice inside Redis. The
guarantees, against the ledger read at time T:
  - a reservation made after the mark and not committed by T: counted once (by `j`), exactly;
  - one made after the mark and committed by T: counted twice until the next rebuild (low: safe);
  - a positive credit after the mark is not journalled: if its commit came after T it is missing
    until the next rebuild (low: safe); it is never counted twice (high: unsafe);
  - a credit arriving after the apply is skipped when the read at T already held its entry (its
    entry_id is at or below the applied position) and applied otherwise: exactly;
  - a reservation made before the mark and committed after T is the one case that reads high,
    by that stake, until the next rebuild; keep the mark→read window short (it is: the mark is
    pipelined, and the read follows at once). The writer's conditional deduction is the final
    authority (DESIGN rules 5–6): an over-admission it refuses is released, and nothing is paid.
Each applied rebuild starts a new era of the balance (`mk` = "<mark>=", and `f` = the era whose
journal it folded in): a release of a reservation from an older era is not added back, because
the rebuild already dropped that hold (it was neither in the ledger read nor in the journal);
adding it would count it twice and read high (release.lua).
`rebuild(balances)` (the protocol's form, the ledger already read) marks and applies at once, so
moves between the caller's read and the mark are not journalled; use it at a cold start, when no
other edge is admitting, and `rebuild_from` otherwise.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, get_args

from tap.config import Config
from tap.hotstate import ADMITTED, Admit, AdmitReason, HotStateUnavailable
from tap.messages import BreakerMode
from tap.ratelimit import TokenBucket, rate_fraction
from tap.store.redis_link import MAX_PIPELINE, Gateway, RedisCommand, Undo

_HERE = Path(__file__).resolve().parent
SCRIPT_NAMES: Final = (
    "admit_bet",
    "admit_withdrawal",
    "release",
    "credit",
    "seed_balance",
    "rebuild_mark",
    "rebuild_apply",
)
# name → Lua source: the library the gateway loads (SCRIPT LOAD; EVALSHA; NOSCRIPT → reload).
SCRIPTS: Final[Mapping[str, str]] = {
    n: (_HERE / f"{n}.lua").read_text(encoding="utf-8") for n in SCRIPT_NAMES
}

# address → (the ledger's available, its ledger position: the highest entry_id of the address
# that read included, 0 if none), both from one snapshot (module text: "Ledger positions").
BalanceSource = Callable[[str], Awaitable[tuple[int, int]]]
BalanceReader = Callable[[], Awaitable[Mapping[str, tuple[int, int]]]]  # every address → as above
_REASONS: Final[frozenset[str]] = frozenset(
    ("replayed_nonce", "rate_limited", "duplicate_cell_bet", "insufficient_funds")
)
SEED_ATTEMPTS = 3  # an unknown balance seeded this often and still unknown: Redis is flapping
SCAN_COUNT = 1000  # keys per SCAN step of a rebuild's mark phase


MODES: Final[frozenset[str]] = frozenset(get_args(BreakerMode))  # an operator's override


def override_channel(prefix: str) -> str:
    """The pub/sub channel, and the key holding the latest mode (`tap:breaker:override`)."""
    return f"{prefix}:breaker:override"


def sentinel_key(prefix: str) -> str:
    return f"{prefix}:alive"


def marker_ttl_for(cfg: Config) -> int:
    """The cell marker's memory: a cell is placeable at most `columns_ahead` columns ahead, so
    its window ends within `(columns_ahead + 1) × column_ms` of any bet on it (every market)."""
    return max((m.columns_ahead + 1) * m.column_ms for m in cfg.markets)


class RedisHotState:
    """`HotState` over a `RedisGateway`. Stateless itself: every edge process may hold one."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        prefix: str,
        max_skew_ms: int,
        rate_per_s: float,
        burst: int,
        marker_ttl_ms: int = 3_600_000,
        balance_source: BalanceSource | None = None,
    ) -> None:
        """Arguments as `InMemoryHotState`'s, plus `balance_source`: reads one address's
        available from the ledger, to seed a balance Redis does not have (module text)."""
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix = {prefix!r}: braces would break the address hash tags")
        self.gateway = gateway
        self.prefix = prefix
        self._nonce_ms = str(2 * max_skew_ms)
        self._marker_ms = str(marker_ttl_ms)
        bucket = TokenBucket(rate_per_s, burst)
        rate = rate_fraction(rate_per_s)
        self._bucket_args = (
            str(rate.numerator),  # grains per ms
            str(1000 * rate.denominator),  # grains per token
            str(bucket.capacity),
            str(bucket.refill_ms),
        )
        self._source = balance_source
        self._unknown = "1" if balance_source is not None else "0"

    @classmethod
    def from_config(
        cls, gateway: Gateway, cfg: Config, *, balance_source: BalanceSource | None = None
    ) -> RedisHotState:
        return cls(
            gateway,
            prefix=cfg.redis.prefix,
            max_skew_ms=cfg.auth.max_skew_ms,
            rate_per_s=cfg.limits.rate_per_s,
            burst=cfg.limits.burst,
            marker_ttl_ms=marker_ttl_for(cfg),
            balance_source=balance_source,
        )

    # ── keys ────────────────────────────────────────────────────────────────────────────────

    def _key(self, address: str, *rest: str) -> str:
        return ":".join((self.prefix, f"{{{address}}}", *rest))

    def balance_key(self, address: str) -> str:
        return self._key(address, "bal")

    # ── HotState ────────────────────────────────────────────────────────────────────────────

    async def admit_bet(
        self, address: str, nonce: str, cell_id: str, amount: int, now_ms: int
    ) -> Admit:
        """`HotState.admit_bet` as one Lua script call (`SCRIPTS["admit_bet"]`): rate token,
        nonce `SET NX`, cell marker, reservation, atomically on the server; the undo given to the
        gateway takes the reservation back if this caller is gone when the reply arrives."""
        if amount <= 0:
            raise ValueError(f"amount = {amount}: the edge admits positive stakes only")
        nonce_key = self._key(address, "n", nonce)
        cell_key = self._key(address, "c", cell_id)
        command = RedisCommand(
            (
                self.balance_key(address),
                self._key(address, "rl"),
                nonce_key,
                cell_key,
                str(amount),
                str(now_ms),
                self._nonce_ms,
                self._marker_ms,
                *self._bucket_args,
                self._unknown,
            ),
            script="admit_bet",
            numkeys=4,
        )
        undo = self._undo_admission(address, amount, nonce=nonce, cell_id=cell_id)
        return await self._admit(address, command, undo)

    async def admit_withdrawal(self, address: str, nonce: str, amount: int, now_ms: int) -> Admit:
        """`HotState.admit_withdrawal` as one Lua script call: nonce, then the reservation."""
        if amount <= 0:
            raise ValueError(f"amount = {amount}: the edge admits positive withdrawals only")
        command = RedisCommand(
            (
                self.balance_key(address),
                self._key(address, "n", nonce),
                str(amount),
                self._nonce_ms,
                self._unknown,
            ),
            script="admit_withdrawal",
            numkeys=2,
        )
        undo = self._undo_admission(address, amount, nonce=nonce, cell_id=None)
        return await self._admit(address, command, undo)

    async def release(
        self,
        address: str,
        amount: int,
        *,
        cell_id: str | None = None,
        nonce: str | None = None,
        held_by: str | None = None,
    ) -> None:
        await self.gateway.call(self._release_command(address, amount, cell_id, nonce, held_by))

    async def credit(self, address: str, amount: int, *, entry_id: int | None = None) -> None:
        """Also takes a negative amount (a committed negative adjustment), as in memory. With
        `entry_id`, skipped when the balance's ledger read already held that entry (module
        text: "Ledger positions")."""
        await self.gateway.call(
            RedisCommand(
                (
                    self.balance_key(address),
                    str(amount),
                    self._unknown,
                    "" if entry_id is None else str(entry_id),
                ),
                script="credit",
                numkeys=1,
            )
        )

    async def rebuild(self, balances: Mapping[str, int]) -> None:
        """The ledger was read before this call: mark and apply at once (module text). The read
        has no positions, so every balance gets position 0: use it when no commit is in flight
        (a cold start), and `rebuild_from` otherwise."""

        async def already_read() -> Mapping[str, tuple[int, int]]:
            return {address: (available, 0) for address, available in balances.items()}

        await self.rebuild_from(already_read)

    async def nonce_seen(self, address: str, nonce: str) -> bool:
        """Remembered within the last 2 × max_skew_ms (older nonces are the ledger's to know)."""
        found = await self.gateway.call(RedisCommand(("EXISTS", self._key(address, "n", nonce))))
        return bool(found)

    async def remember_nonces(self, used: Iterable[tuple[str, str, int]], now_ms: int) -> None:
        """Seed the ledger's recent nonces (protocol text). `SET NX`: a live admission's own
        value (its rebuild mark) is never overwritten; expiry is 2 × max_skew_ms from now."""
        commands = [
            RedisCommand(
                ("SET", self._key(address, "n", nonce), "ledger", "NX", "PX", self._nonce_ms)
            )
            for address, nonce, _ in used
        ]
        if commands:
            await self._each(commands)

    async def claim_once(self, name: str, ttl_ms: int, now_ms: int) -> bool:
        """`SET NX PX`: one atomic command, so of any number of edges claiming one name at once
        exactly one hears True. The ttl runs on Redis's clock (a duration needs no shared
        origin); `now_ms` is not needed."""
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms = {ttl_ms}: expected a positive duration")
        reply = await self.gateway.call(
            RedisCommand(("SET", f"{self.prefix}:claim:{name}", "1", "NX", "PX", str(ttl_ms)))
        )
        return reply is not None

    async def ping(self) -> bool:
        return await self.gateway.ping()

    async def aclose(self) -> None:
        """Nothing to close: the gateway actor owns the connection and ends with its nursery."""

    # ── beyond the protocol ─────────────────────────────────────────────────────────────────

    async def rebuild_from(self, read_balances: BalanceReader) -> dict[str, int]:
        """Rebuild every balance from the ledger while other edges keep admitting: mark, then
        `read_balances()`, then apply (module text). Returns counts for the startup log."""
        mark = f"{await self.gateway.call(RedisCommand(('INCR', f'{self.prefix}:epoch')))}"
        mark += f".{secrets.token_hex(4)}"
        marked = await self._existing_addresses()
        replies = await self._each(
            [
                RedisCommand((self.balance_key(a), mark), script="rebuild_mark", numkeys=1)
                for a in marked
            ]
        )
        balances = await read_balances()
        addresses = list(
            dict.fromkeys([*balances, *(a for a, r in zip(marked, replies, strict=True) if r)])
        )

        def apply(address: str) -> RedisCommand:
            available, through = balances.get(address, (0, 0))
            known = "1" if address in balances else "0"
            return RedisCommand(
                (self.balance_key(address), mark, str(available), known, str(through)),
                script="rebuild_apply",
                numkeys=1,
            )

        applied = await self._each([apply(a) for a in addresses])
        counts = {"marked": sum(1 for r in replies if r)}
        for outcome in ("applied", "seeded", "skipped", "absent"):
            counts[outcome] = sum(1 for r in applied if r == outcome)
        return counts

    async def seed_if_absent(self, address: str, available: int, *, through: int) -> bool:
        """Set a missing balance from a ledger read that held the address's entries up to
        `through` (its ledger position); False when the balance was already there."""
        reply = await self.gateway.call(
            RedisCommand(
                (self.balance_key(address), str(available), str(through)), "seed_balance", 1
            )
        )
        return bool(reply)

    async def position(self, address: str) -> int | None:
        """The balance's ledger position, or None when Redis has none for this address (tests)."""
        spendable, position = await self.gateway.call(
            RedisCommand(("HMGET", self.balance_key(address), "v", "t"))
        )
        return None if spendable is None else int(position or 0)

    async def spendable(self, address: str) -> int | None:
        """The hot balance, or None when Redis has none for this address (tests, `/healthz`)."""
        reply = await self.gateway.call(RedisCommand(("HGET", self.balance_key(address), "v")))
        return None if reply is None else int(reply)

    async def publish_override(self, mode: BreakerMode) -> int:
        """Tell every process's breaker (`actors/breaker_override.py` listens): store `mode` as
        the current override and publish it; returns how many subscribers heard it."""
        if mode not in MODES:
            raise ValueError(f"mode = {mode!r}: expected one of {sorted(MODES)}")
        name = override_channel(self.prefix)
        _, receivers = await self.gateway.call_many(
            (RedisCommand(("SET", name, mode)), RedisCommand(("PUBLISH", name, mode)))
        )
        return int(receivers)

    # ── internals ───────────────────────────────────────────────────────────────────────────

    async def _admit(self, address: str, command: RedisCommand, undo: Undo) -> Admit:
        for _ in range(SEED_ATTEMPTS):
            reply = await self.gateway.call(command, undo=undo)
            code, retry_after_ms = reply[0], reply[1]
            if code == "ok":
                if len(reply) < 3:  # admit_withdrawal: no rate token taken
                    return ADMITTED
                return Admit(True, tokens_left=int(reply[1]), full_in_ms=int(reply[2]))
            if code in _REASONS:
                reason: AdmitReason = code
                return Admit(False, reason, int(retry_after_ms))
            if code != "unknown" or self._source is None:
                raise RuntimeError(f"admission script answered {code!r}")
            available, through = await self._source(address)
            await self.seed_if_absent(address, available, through=through)
        raise HotStateUnavailable(f"the balance of {address} vanished while being seeded")

    def _release_command(
        self,
        address: str,
        amount: int,
        cell_id: str | None,
        nonce: str | None,
        held_by: str | None = None,
    ) -> RedisCommand:
        keys = [self.balance_key(address)]
        era_from = nonce if nonce is not None else held_by
        if era_from is not None:
            keys.append(self._key(address, "n", era_from))
        if cell_id is not None:
            keys.append(self._key(address, "c", cell_id))
        # Nonce flag: '1' forget it, 'k' only read the reservation's era from it (release.lua).
        nonce_flag = "1" if nonce is not None else ("k" if held_by is not None else "0")
        flags = (nonce_flag, "1" if cell_id is not None else "0")
        return RedisCommand(
            (*keys, str(amount), *flags, self._unknown), script="release", numkeys=len(keys)
        )

    def _undo_admission(
        self, address: str, amount: int, *, nonce: str, cell_id: str | None
    ) -> Undo:
        """An admission whose caller is gone never reaches the writer: release it, nonce too
        (the client heard 503 and may send the same request again)."""

        def undo(replies: Sequence[Any]) -> Sequence[RedisCommand]:
            reply = replies[0] if replies else None
            if isinstance(reply, list) and reply and reply[0] == "ok":
                return (self._release_command(address, amount, cell_id, nonce),)
            return ()

        return undo

    async def _existing_addresses(self) -> list[str]:
        """Every address Redis holds a balance for (SCAN: incremental, never blocks the server)."""
        head = f"{self.prefix}:{{"
        pattern = _glob_escape(head) + "*}:bal"
        found: dict[str, None] = {}
        cursor = "0"
        while True:
            cursor, keys = await self.gateway.call(
                RedisCommand(("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT))
            )
            for key in keys:
                found[key[len(head) : -len("}:bal")]] = None
            if str(cursor) == "0":
                return list(found)

    async def _each(self, commands: list[RedisCommand]) -> list[Any]:
        """Many independent commands, one pipeline per `MAX_PIPELINE`."""
        replies: list[Any] = []
        step = MAX_PIPELINE
        for i in range(0, len(commands), step):
            replies.extend(await self.gateway.call_many(commands[i : i + step]))
        return replies


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
