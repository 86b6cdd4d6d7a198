"""The resolver actor: settles confirmed bets from live ticks through `tap.resolver`, and keeps
the tick log those settlements can be re-checked against.

It owns one `ResolverIndex` per market. At startup it rebuilds them from the bets still open in
the ledger and re-resolves those against the stored ticks since the earliest open window (what
`tap.resolver.replay` does), so outcomes missed while the process was down are decided exactly as
the live path would have decided them. Then it applies live ticks and newly confirmed bets. The
rules are the core's; this module moves values between channels.

What it sends the writer, in one ordered stream:
- `StoreTicks`: every tick the index accepted (the out-of-order ones it ignores are not stored),
  so the log holds exactly the ticks resolution used — `replay` over the log gives the same
  outcomes;
- `Settle`: the outcomes. A settlement is always sent after (or, in a writer batch, together with)
  the ticks that decided it, because both queues are snapshotted together and ticks go first.

The hand-off — why it cannot lose money and cannot make resolution miss a tick:
- Outcomes and ticks go into local queues; a separate task `await`s the writer's channel. Awaiting
  is right here: this is not a request path, and a settlement must never be dropped. trio hands a
  freed slot to a blocked sender before any new `send_nowait`, so when the writer's queue is full
  the edge's new bets get 503 while settlements keep their place in line.
- Meanwhile ticks keep flowing into the index. Unsent outcomes are bounded by the open bets (each
  resolves once). Unsent ticks are bounded by `MAX_UNWRITTEN_TICKS` (plus the batch in flight):
  past it the resolver stops taking ticks, ingest (which treats the resolver as lossless) waits,
  the breaker goes stale and opens — no new bets while the log is behind, rather than memory
  without bound.
- If the process dies with either queue unsent, nothing is lost that matters: the bets are still
  open in the ledger and the next startup decides them again from the stored ticks (a tick that
  never reached the log shows there as a gap: void, never a guess). The writer settles only bets
  still open, so an outcome sent twice is harmless.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping

import trio

from tap.config import Config, MarketConfig
from tap.grid import CellId
from tap.messages import Bet, Outcome, PlaceBet, Settle, StoreTicks, Tick, project
from tap.resolver import BetOutsideHistory, OpenBet, ResolverIndex
from tap.runtime.clock import Clock

log = logging.getLogger(__name__)

# Ticks accepted but not yet handed to the writer before the resolver stops taking more: a
# column's worth of a busy feed (the same depth as its input channel), so a writer pause of a few
# seconds is absorbed and a stuck writer stops the feed instead of growing memory.
MAX_UNWRITTEN_TICKS = 4096


def symbol_of(bet: Bet | PlaceBet) -> str:
    return bet.symbol if isinstance(bet, PlaceBet) else CellId.parse(bet.cell_id).symbol


def open_bet(bet: Bet | PlaceBet, market: MarketConfig) -> OpenBet:
    """The resolver's view of a confirmed bet. A `Bet` (the committed stream's form) carries only
    its cell id, so its window and band come from the market's grid; a `PlaceBet` (the ledger's
    form at startup) carries them, and the index checks they are on the grid."""
    if isinstance(bet, PlaceBet):
        return project(OpenBet, bet)
    cell = CellId.parse(bet.cell_id)
    return project(OpenBet, bet, cell.bounds(market), col=cell.col, row=cell.row)


class _ToWriter:
    """The ordered queue between the index and the writer (see the module docstring)."""

    def __init__(self, writer: trio.abc.SendChannel[Settle | StoreTicks], max_batch: int) -> None:
        self._writer = writer
        self._max_batch = max_batch
        self.outcomes: deque[Outcome] = deque()
        self.ticks: deque[Tick] = deque()
        self._work = trio.lowlevel.ParkingLot()  # the deliverer waits here for something to send
        self._room = trio.lowlevel.ParkingLot()  # the tick loop waits here when ticks pile up
        self._closing = False

    def put(self, tick: Tick | None, outcomes: list[Outcome]) -> None:
        if tick is not None:
            self.ticks.append(tick)
        self.outcomes.extend(outcomes)
        if tick is not None or outcomes:
            self._work.unpark_all()

    async def wait_for_room(self) -> None:
        while len(self.ticks) >= MAX_UNWRITTEN_TICKS:
            await self._room.park()

    def close(self) -> None:
        """Nothing more will be put: `deliver` returns once both queues are empty."""
        self._closing = True
        self._work.unpark_all()

    async def deliver(self) -> None:
        try:
            await self._deliver()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The writer stopped on a fatal error (the supervisor closed its input). Nothing can
            # be written any more; keep taking ticks (so ingest, prices and the grid live on)
            # and drop them: every bet still open is settled again from the ledger at the next
            # start, from the stored ticks and the feed.
            log.error("the writer is gone: ticks and settlements are no longer written")
            while not self._closing:
                self.ticks.clear()
                self.outcomes.clear()
                self._room.unpark_all()
                await self._work.park()

    async def _deliver(self) -> None:
        while True:
            if self.ticks or self.outcomes:
                # Snapshot both at once: every outcome taken here was decided by a tick that is
                # in this snapshot or was sent before it.
                ticks, self.ticks = self.ticks, deque()
                outcomes, self.outcomes = self.outcomes, deque()
                self._room.unpark_all()
                while ticks:
                    batch = [ticks.popleft() for _ in range(min(len(ticks), self._max_batch))]
                    await self._writer.send(StoreTicks(ticks=tuple(batch)))
                while outcomes:
                    take = min(len(outcomes), self._max_batch)
                    settled = tuple(outcomes.popleft() for _ in range(take))
                    # Counted by the writer once committed (tap_bets_resolved_total), not here.
                    await self._writer.send(Settle(outcomes=settled))
            elif self._closing:
                return
            else:
                await self._work.park()


class ResolverHandle:
    """Read-only figures for health checks and tests."""

    def __init__(self, indexes: Mapping[str, ResolverIndex], to_writer: _ToWriter) -> None:
        self._indexes = indexes
        self._to_writer = to_writer

    def open_bets(self) -> int:
        return sum(index.open_bets for index in self._indexes.values())

    def unsent_outcomes(self) -> int:
        """Outcomes decided but not yet in the writer's queue (the batch being sent excluded)."""
        return len(self._to_writer.outcomes)

    def unsent_ticks(self) -> int:
        return len(self._to_writer.ticks)


def _prior(initial_last_tick_ts: int | Mapping[str, int] | None, symbol: str) -> int | None:
    if initial_last_tick_ts is None or isinstance(initial_last_tick_ts, int):
        return initial_last_tick_ts
    return initial_last_tick_ts.get(symbol)


async def run(
    cfg: Config,
    clock: Clock,
    ticks: trio.abc.ReceiveChannel[Tick],
    new_bets: trio.MemoryReceiveChannel[Bet | PlaceBet],
    settle: trio.abc.SendChannel[Settle | StoreTicks],
    initial_open_bets: Iterable[Bet | PlaceBet],
    initial_last_tick_ts: int | Mapping[str, int] | None,
    initial_ticks_for_reload: Iterable[Tick],
    *,
    task_status: trio.TaskStatus[ResolverHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Resolve bets until `ticks` ends, then hand the writer everything decided and return.

    Startup inputs, read from the ledger before the writer starts taking bets (so no bet is
    confirmed between this snapshot and `new_bets`):
    - `initial_open_bets`: every confirmed, unresolved bet;
    - `initial_ticks_for_reload`: the stored ticks with `ts >=` the earliest open window's
      `t_start`, in time order per symbol (empty when no bet is open). They are already in the
      log, so they are not stored again;
    - `initial_last_tick_ts`: the newest stored tick *before* those (per symbol as a mapping, or
      one value for every market), so a gap into the first window is seen; None if there is none.
    A bet the reload ticks do not cover raises `BetOutsideHistory`: the loader is wrong, and
    guessing would move money.

    `new_bets` carries bets the writer committed as confirmed (a `Bet` with another status is
    skipped; one already open is ignored, so re-sending every open bet after a lag is safe).
    `settle` is the writer's request channel (a clone the caller owns and closes): `StoreTicks`
    and `Settle` go there. `clock` is not read: outcomes are timed by their deciding tick, so
    replay and live agree to the millisecond; it is accepted so every actor is wired alike.
    """
    markets = {m.symbol: m for m in cfg.markets}
    indexes = {
        m.symbol: ResolverIndex(
            m.symbol,
            m.column_ms,
            m.row_height,
            cfg.feed.max_gap_ms,
            _prior(initial_last_tick_ts, m.symbol),
        )
        for m in cfg.markets
    }
    to_writer = _ToWriter(settle, cfg.batcher.max_batch)

    bets_by_symbol: dict[str, list[OpenBet]] = defaultdict(list)
    for bet in initial_open_bets:
        symbol = symbol_of(bet)
        if symbol not in markets:
            log.error("open bet %s is on unknown market %r; left open", bet.bet_id, symbol)
            continue
        bets_by_symbol[symbol].append(open_bet(bet, markets[symbol]))
    ticks_by_symbol: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for tick in initial_ticks_for_reload:
        ticks_by_symbol[tick.symbol].append((tick.ts, tick.price))
    for symbol, index in indexes.items():
        to_writer.put(None, index.reload(bets_by_symbol[symbol], ticks_by_symbol[symbol]))
    log.info(
        "resolver reloaded %d open bets; %d decided from stored ticks",
        sum(len(b) for b in bets_by_symbol.values()),
        len(to_writer.outcomes),
    )

    def add(bet: Bet | PlaceBet) -> None:
        if isinstance(bet, Bet) and bet.status != "confirmed":
            return
        symbol = symbol_of(bet)
        market = indexes.get(symbol)
        if market is None:
            log.error("confirmed bet %s is on unknown market %r; left open", bet.bet_id, symbol)
            return
        try:
            to_writer.put(None, market.add(open_bet(bet, markets[symbol])))
        except BetOutsideHistory as e:
            # Never guess: the stake stays locked and the next startup's reload decides it.
            log.error("%s; left open until the next reload", e)

    async def follow_bets() -> None:
        async for bet in new_bets:
            add(bet)
            # The rest of what is queued in this round: a committed batch's bets arrive
            # together, and a yield per bet was one task step per bet (issue 12).
            while True:
                try:
                    add(new_bets.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

    task_status.started(ResolverHandle(indexes, to_writer))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(to_writer.deliver)
        async with trio.open_nursery() as live:
            live.start_soon(follow_bets)
            async for tick in ticks:
                ticked = indexes.get(tick.symbol)
                if ticked is None:
                    continue
                accepted = ticked.accepts(tick.ts)
                outcomes = ticked.on_tick(tick.ts, tick.price)
                to_writer.put(tick if accepted else None, outcomes)
                await to_writer.wait_for_room()
            # The feed ended: take no more bets, then let the deliverer empty the queues.
            live.cancel_scope.cancel()
        to_writer.close()
