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
If this subscriber ever lags (it is sized far beyond a column's worth of events), it resubscribes
and resyncs from the ledger instead of guessing: first the edge's pending bets — each one the
ledger already decided is dropped (its verdict event was among those missed; a rejected one also
frees its cell), and one the ledger never heard of long after its 202 was refused unstored — then
the hot balances are rebuilt. A resync that fails (Redis down, a ledger read failing) is retried
with backoff; the actor never dies of it, and never of one event it cannot apply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from actors.fanout import FOLLOW_CAPACITY, CommittedFanout, follow
from tap.hotstate import HotState, HotStateUnavailable
from tap.messages import (
    Bet,
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    EntryPosted,
)
from tap.pending import PendingBets
from tap.runtime import metrics

log = logging.getLogger(__name__)

CAPACITY = FOLLOW_CAPACITY  # events this follower may fall behind before it resyncs

# The writer's refusals that stored nothing: the nonce was never burned in the ledger.
UNSTORED_REFUSALS = frozenset({"overloaded", "internal_error", "invalid_request"})

# A pending bet the ledger does not hold this long after its 202 was refused without being
# stored (busy lock, a bad item) and its refusal was among the events missed. The writer's
# own worst case (every busy retry, a full queue) is a few seconds.
STALE_PENDING_MS = 60_000
RECONCILE_CHUNK = 500  # bet ids per ledger read

# bet ids → the bets the ledger holds among them (any status), for a resync.
CommittedBets = Callable[[Sequence[str]], Awaitable[Mapping[str, Bet]]]


def _log_commit(pending: PendingBets, bet: Bet, what: str, reason: str | None) -> None:
    """The writer's verdict on a bet this process accepted, under the request id of its 202
    (this task is not the request's: the id comes from the pending entry)."""
    rid = pending.request_id(bet.bet_id)
    if rid is None:
        return  # accepted by another process, or before a restart: its log has no 202 here
    log.info(what, extra={"request_id": rid, "bet_id": bet.bet_id, "reason": reason})


async def apply(hot: HotState | None, pending: PendingBets, event: Committed) -> None:
    """One committed event. `hot` is None on an edge: the core alone keeps the hot state in line
    with the ledger; an edge only forgets the pending bets the ledger has decided."""
    match event:
        case BetConfirmed(bet=bet):
            _log_commit(pending, bet, "bet confirmed", None)
            admitted = pending.pop(bet.bet_id)  # counted in tap_bets_total by the writer
            if hot is not None and admitted is not None and admitted.accepted_at != bet.accepted_at:
                # The writer answered a replay with the bet its nonce already made: no stake
                # moved for this request, so give its hold back (the cell stays taken).
                await hot.release(bet.address, admitted.amount, held_by=bet.nonce)
        case BetRejected(bet=bet, reason=reason):
            _log_commit(pending, bet, "bet rejected", reason)
            pending.pop(bet.bet_id)
            if hot is not None:
                nonce = bet.nonce if reason in UNSTORED_REFUSALS else None
                await hot.release(
                    bet.address, bet.amount, cell_id=bet.cell_id, nonce=nonce, held_by=bet.nonce
                )
        case BetResolved(bet=bet, entry_id=entry_id) if hot is not None:
            if bet.status in ("won", "void") and bet.payout:
                await hot.credit(bet.address, bet.payout, entry_id=entry_id)
        case EntryPosted(entry=entry) if hot is not None and entry is not None:
            if entry.kind in ("deposit", "adjustment") and entry.amount:
                await hot.credit(entry.address, entry.amount, entry_id=entry.entry_id)
        case _:
            pass


async def run(
    fanout: CommittedFanout,
    hot: HotState | None,
    pending: PendingBets,
    rebuild: Callable[[], Awaitable[None]],
    *,
    committed_bets: CommittedBets | None = None,
    now_ms: Callable[[], int] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow every commit until the fan-out closes. After a lag: `committed_bets` reads the
    ledger's verdicts on pending bets (`now_ms` dates the stale ones), then `rebuild` reloads
    the hot balances from the ledger (module text)."""

    async def on_event(event: Committed) -> None:
        try:
            await apply(hot, pending, event)
        except HotStateUnavailable:
            metrics.REDIS_ERRORS.inc()  # safe direction; recovery rebuilds balances
        except Exception:
            # A bug on one event must not stop the hot state following the ledger;
            # the next rebuild repairs whatever this one left.
            log.exception("ledger-sync could not apply %s", type(event).__name__)

    async def on_lag() -> None:
        try:
            if committed_bets is not None:
                await reconcile_pending(hot, pending, committed_bets, now_ms)
            await rebuild()
        except HotStateUnavailable:
            metrics.REDIS_ERRORS.inc()
            raise

    await follow(
        fanout, "ledger-sync", on_event, on_lag, capacity=CAPACITY, task_status=task_status
    )


async def reconcile_pending(
    hot: HotState | None,
    pending: PendingBets,
    committed_bets: CommittedBets,
    now_ms: Callable[[], int] | None,
) -> None:
    """Drop the pending bets whose verdict was missed (module text). Their holds are not given
    back here: the rebuild that follows recomputes every balance without them."""
    ids = list(pending.by_id)
    decided: dict[str, Bet] = {}
    for i in range(0, len(ids), RECONCILE_CHUNK):
        decided.update(await committed_bets(ids[i : i + RECONCILE_CHUNK]))
    stale_before = None if now_ms is None else now_ms() - STALE_PENDING_MS
    for bet_id in ids:
        admitted = pending.get(bet_id)
        if admitted is None:
            continue  # its verdict arrived meanwhile
        stored = decided.get(bet_id)
        if stored is not None:
            pending.pop(bet_id)
            if stored.status == "rejected" and hot is not None:
                try:  # the cell marker only: amount 0 (the hold goes with the rebuild)
                    await hot.release(admitted.address, 0, cell_id=admitted.cell_id)
                except HotStateUnavailable:
                    pass  # the marker expires by itself
        elif stale_before is not None and admitted.accepted_at < stale_before:
            pending.pop(bet_id)
