"""The resolver actor: settles confirmed bets from live ticks through `tap.resolver`.

It owns one `ResolverIndex` per market. At startup it rebuilds them from the bets still open in
the ledger and re-resolves those against the stored ticks since the earliest open window (what
`tap.resolver.replay` does), so outcomes missed while the process was down are decided exactly as
the live path would have decided them. Then it applies live ticks and newly confirmed bets, and
hands every outcome to the writer in `Settle` batches. The rules are the core's; this module only
moves values between channels.

Settlement hand-off — why it cannot lose money and cannot stall resolution:
- Outcomes go into a local queue and a separate task `await`s the writer's channel. Awaiting is
  right here: this is not a request path, and a settlement must never be dropped. trio serves
  blocked senders before new `send_nowait`s, so when the writer's queue is full the edge's new
  bets get 503 while settlements keep their place in line.
- Meanwhile ticks keep flowing into the index, so a slow writer never makes the resolver miss a
  tick. The local queue holds at most one outcome per open bet (each bet resolves once), so it is
  bounded by the bets whose stakes are locked, not by time.
- If the process dies with outcomes still queued, nothing is lost: the bets are still open in the
  ledger, and the next startup's reload decides them again from the stored ticks. The writer's
  settle applies only to bets still open, which makes a repeated outcome harmless.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping

import trio

from tap.config import Config, MarketConfig
from tap.grid import CellId
from tap.messages import Bet, Outcome, PlaceBet, Settle, Tick
from tap.resolver import BetOutsideHistory, OpenBet, ResolverIndex
from tap.runtime.clock import Clock
from tap.runtime.metrics import BETS_RESOLVED

log = logging.getLogger(__name__)


def symbol_of(bet: Bet | PlaceBet) -> str:
    return bet.symbol if isinstance(bet, PlaceBet) else CellId.parse(bet.cell_id).symbol


def open_bet(bet: Bet | PlaceBet, market: MarketConfig) -> OpenBet:
    """The resolver's view of a confirmed bet. A `Bet` (the committed stream's form) carries only
    its cell id, so its window and band come from the market's grid; a `PlaceBet` carries them,
    and the index checks they are on the grid."""
    if isinstance(bet, PlaceBet):
        return OpenBet(
            bet_id=bet.bet_id,
            address=bet.address,
            col=bet.col,
            row=bet.row,
            t_start=bet.t_start,
            t_end=bet.t_end,
            price_lo=bet.price_lo,
            price_hi=bet.price_hi,
            amount=bet.amount,
            multiplier_bps=bet.multiplier_bps,
        )
    cell = CellId.parse(bet.cell_id)
    bounds = cell.bounds(market)
    return OpenBet(
        bet_id=bet.bet_id,
        address=bet.address,
        col=cell.col,
        row=cell.row,
        t_start=bounds.t_start,
        t_end=bounds.t_end,
        price_lo=bounds.price_lo,
        price_hi=bounds.price_hi,
        amount=bet.amount,
        multiplier_bps=bet.multiplier_bps,
    )


class ResolverHandle:
    """Read-only figures for health checks and tests."""

    def __init__(self, indexes: Mapping[str, ResolverIndex], settlements: _Settlements) -> None:
        self._indexes = indexes
        self._settlements = settlements

    def open_bets(self) -> int:
        return sum(index.open_bets for index in self._indexes.values())

    def pending_outcomes(self) -> int:
        """Outcomes decided but not yet accepted by the writer's queue."""
        return len(self._settlements.pending)


class _Settlements:
    """The queue between the index and the writer (see the module docstring)."""

    def __init__(self, settle: trio.abc.SendChannel[Settle], max_batch: int) -> None:
        self._settle = settle
        self._max_batch = max_batch
        self.pending: deque[Outcome] = deque()
        self._wakeup = trio.lowlevel.ParkingLot()
        self._closing = False

    def put(self, outcomes: list[Outcome]) -> None:
        if outcomes:
            self.pending.extend(outcomes)
            self._wakeup.unpark_all()

    def close(self) -> None:
        """No more outcomes will come: `deliver` returns once the queue is empty."""
        self._closing = True
        self._wakeup.unpark_all()

    async def deliver(self) -> None:
        while True:
            if self.pending:
                take = min(len(self.pending), self._max_batch)
                batch = tuple(self.pending.popleft() for _ in range(take))
                await self._settle.send(Settle(outcomes=batch))
                for outcome in batch:
                    BETS_RESOLVED.labels(outcome=outcome.status).inc()
            elif self._closing:
                return
            else:
                await self._wakeup.park()


def _prior(initial_last_tick_ts: int | Mapping[str, int] | None, symbol: str) -> int | None:
    if initial_last_tick_ts is None or isinstance(initial_last_tick_ts, int):
        return initial_last_tick_ts
    return initial_last_tick_ts.get(symbol)


async def run(
    cfg: Config,
    clock: Clock,
    ticks: trio.abc.ReceiveChannel[Tick],
    new_bets: trio.abc.ReceiveChannel[Bet | PlaceBet],
    settle: trio.abc.SendChannel[Settle],
    initial_open_bets: Iterable[Bet | PlaceBet],
    initial_last_tick_ts: int | Mapping[str, int] | None,
    initial_ticks_for_reload: Iterable[Tick],
    *,
    task_status: trio.TaskStatus[ResolverHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Resolve bets until `ticks` ends, then hand over every outcome decided so far and return.

    Startup inputs, read from the ledger before the writer starts taking bets (so no bet is
    confirmed between this snapshot and `new_bets`):
    - `initial_open_bets`: every confirmed, unresolved bet;
    - `initial_ticks_for_reload`: the stored ticks with `ts >=` the earliest open window's
      `t_start`, in time order (empty when no bet is open);
    - `initial_last_tick_ts`: the newest stored tick *before* those (per symbol as a mapping, or
      one value for every market), so a gap into the first window is seen; None if there is none.
    A bet the reload ticks do not cover raises `BetOutsideHistory`: the loader is wrong, and
    guessing would move money.

    `new_bets` carries bets the writer has committed as confirmed (`Bet` with another status is
    skipped). `settle` is the writer's request channel, owned by the caller. `clock` is not read:
    outcomes are timed by their deciding tick, so replay and live agree to the millisecond; it is
    accepted so every actor is wired alike.
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
    settlements = _Settlements(settle, cfg.batcher.max_batch)

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
        settlements.put(index.reload(bets_by_symbol[symbol], ticks_by_symbol[symbol]))
    log.info(
        "resolver reloaded %d open bets; %d decided from stored ticks",
        sum(len(b) for b in bets_by_symbol.values()),
        len(settlements.pending),
    )

    async def follow_bets() -> None:
        async for bet in new_bets:
            if isinstance(bet, Bet) and bet.status != "confirmed":
                continue
            symbol = symbol_of(bet)
            index = indexes.get(symbol)
            if index is None:
                log.error("confirmed bet %s is on unknown market %r; left open", bet.bet_id, symbol)
                continue
            try:
                settlements.put(index.add(open_bet(bet, markets[symbol])))
            except BetOutsideHistory as e:
                # Never guess: the stake stays locked and the next startup's reload decides it.
                log.error("%s; left open until the next reload", e)

    task_status.started(ResolverHandle(indexes, settlements))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(settlements.deliver)
        async with trio.open_nursery() as live:
            live.start_soon(follow_bets)
            async for tick in ticks:
                ticked = indexes.get(tick.symbol)
                if ticked is not None:
                    settlements.put(ticked.on_tick(tick.ts, tick.price))
            # The feed ended: take no more bets, then let the deliverer empty the queue.
            live.cancel_scope.cancel()
        settlements.close()
