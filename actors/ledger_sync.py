"""The ledger-sync actor: after each commit, bring the hot state and the edge's pending map in line.

Admission reserves in the hot state *before* the writer decides (DESIGN rule 6); this actor
applies the writer's verdicts afterwards, so the hot balance follows the ledger in the safe
direction only:
- a bet confirmed → it is no longer "pending" on the edge (its hold already matches the stake),
  unless the confirmation is of an earlier bet with the same nonce (a replay the hot state did not
  recognise, after Redis lost its data): then the replay's hold is given back;
- a bet rejected → the hold and the cell marker are given back (the nonce stays burned, as in the
  ledger, unless the writer refused before storing anything — `overloaded` — when the client may
  retry the same nonce);
- a bet won or void → its payout or refund becomes spendable;
- a deposit or positive credit → spendable; a negative credit lowers it.
Every credit carries the entry_id of its ledger row: a balance the hot state seeded from a ledger
read made after that commit (another admission got there first) already holds it, and skips it.
When the hot state is unreachable an update is skipped: every skipped update leaves the hot
balance *lower* than the ledger's, never higher, and the balance cache is rebuilt from the ledger
when the store comes back.
If this subscriber ever lags (it is sized far beyond a column's worth of events), it rebuilds the
hot balances from the ledger and resubscribes instead of guessing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from actors.batcher import CommittedFanout, Lagged
from tap.edge.desk import PendingBets
from tap.hotstate import HotState, HotStateUnavailable
from tap.messages import (
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    EntryPosted,
)
from tap.runtime import metrics

log = logging.getLogger(__name__)

# Events one subscriber may fall behind: a column end settles every open bet of a column in one
# batch (plus one balance event per address); 64k covers several full columns at peak rate.
CAPACITY = 65_536

# The writer's refusals that stored nothing: the nonce was never burned in the ledger.
UNSTORED_REFUSALS = frozenset({"overloaded", "internal_error"})


async def apply(hot: HotState, pending: PendingBets, event: Committed) -> None:
    match event:
        case BetConfirmed(bet=bet):
            admitted = pending.pop(bet.bet_id)  # counted in tap_bets_total by the writer
            if admitted is not None and admitted.accepted_at != bet.accepted_at:
                # The writer answered a replay with the bet its nonce already made: no stake
                # moved for this request, so give its hold back (the cell stays taken).
                await hot.release(bet.address, admitted.amount)
        case BetRejected(bet=bet, reason=reason):
            pending.pop(bet.bet_id)
            nonce = bet.nonce if reason in UNSTORED_REFUSALS else None
            await hot.release(bet.address, bet.amount, cell_id=bet.cell_id, nonce=nonce)
        case BetResolved(bet=bet, entry_id=entry_id):
            if bet.status in ("won", "void") and bet.payout:
                await hot.credit(bet.address, bet.payout, entry_id=entry_id)
        case EntryPosted(entry=entry) if entry is not None:
            if entry.kind in ("deposit", "adjustment") and entry.amount:
                await hot.credit(entry.address, entry.amount, entry_id=entry.entry_id)
        case _:
            pass


async def run(
    fanout: CommittedFanout,
    hot: HotState,
    pending: PendingBets,
    rebuild: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow every commit until the fan-out closes. `rebuild` reloads the hot balances from the
    ledger (used after a lag)."""
    sub = fanout.subscribe(CAPACITY, "ledger-sync")
    task_status.started()
    while True:
        try:
            async for event in sub:
                try:
                    await apply(hot, pending, event)
                except HotStateUnavailable:
                    metrics.REDIS_ERRORS.inc()  # safe direction; recovery rebuilds balances
            return
        except Lagged:
            log.error("ledger-sync lagged; rebuilding hot balances from the ledger")
            sub = fanout.subscribe(CAPACITY, "ledger-sync")
            await rebuild()
