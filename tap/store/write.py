"""The write layer: the writer's batch transaction, and what it refuses to write.

`apply_batch` turns a batch of `WriterRequest`s into one `BEGIN IMMEDIATE` transaction with an
outcome per item, and returns the `Committed` events to announce — only once `COMMIT` has
returned. One bad item never fails the batch: a unique violation leaves the transaction open
(SQLite undoes only the failing statement), so conflicts are classified after the fact instead of
guarded by a SAVEPOINT per item, and a shortfall is a conditional UPDATE that matches no row;
anything else an item raises sends the batch through a second, careful pass with a SAVEPOINT per
item, where that item alone is refused. The money rules themselves (which row each event writes)
come from `tap.ledger`; the bounds a request must keep to be written (`bet_problem`,
`entry_problem`, …) are checked here again because the writer is the last line; `is_fatal` names
the errors after which nothing more may be written. Cell liability (the cap on a cell's sum of
potential payouts) is kept in step by every batch and rebuilt at start (`rebuild_cell_liability`).

Everything here is synchronous: the batcher (`actors.batcher`) runs it in its worker thread;
tests call it directly.

What the caller decides: the connection (`tap.store.connect.open_writer`) and which thread uses
it, retrying a batch that met `SQLITE_BUSY` (or refusing it: `refusals`), the clock (`now_ms` is
an argument) and the caps (`cell_caps`). Reading the stored rows back is `tap.store.read`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import msgspec

from tap import ledger
from tap.admission import valid_nonce
from tap.messages import (
    MAX_MULTIPLIER_BPS,
    AdminCredit,
    Balance,
    BalanceChanged,
    Bet,
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    Deposit,
    EntryKind,
    EntryPosted,
    LedgerEntry,
    Outcome,
    PlaceBet,
    Settle,
    StoreTicks,
    Tick,
    Withdrawal,
    WriterRequest,
    project,
)
from tap.store.connect import is_busy
from tap.store.read import BET_COLUMNS, ENTRY_COLUMNS, bet_from_row, entry_from_row

log = logging.getLogger(__name__)

# Reasons the writer gives besides admission's, as API.md codes so the edge can answer them as is.
STORE_BUSY = "overloaded"  # the write lock stayed busy; nothing was stored: retry, same nonce
INTERNAL_ERROR = "internal_error"  # the item raised in the writer (a bug upstream); refused alone
DUPLICATE_BET_ID = INTERNAL_ERROR  # an edge reused a bet_id for another nonce (an edge bug)
INVALID_REQUEST = "invalid_request"  # a bet outside the bounds the edge enforces (`bet_problem`)

_INSERT_BET = (
    "INSERT INTO bets (bet_id, address, cell_id, symbol, col, row, t_start, t_end, price_lo, "
    "price_hi, amount, multiplier_bps, nonce, status, accepted_at, confirmed_at, reason, "
    "timestamp, chain_id, min_multiplier_bps, signature) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The largest balance (available or locked) an account may hold: 2**53 - 1, the largest integer
# every JSON client reads exactly (a JavaScript number). It also keeps every sum SQLite computes
# far from 2**63, where SQLite does not fail but silently turns the sum into a REAL: a float
# balance, money rounded. Each movement is refused instead of crossing it (`_BatchWriter.move`).
MAX_BALANCE = 2**53 - 1
# Refusals a movement can meet, as API.md codes.
INSUFFICIENT_FUNDS = "insufficient_funds"
AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
# The conditional movement: it matches no row when either balance would go below zero or above
# MAX_BALANCE, so a refusal is "0 rows", decided by SQLite under the write lock (DESIGN rule 5).
# The ceiling is written as `balance <= MAX_BALANCE - credit` so SQLite never computes a sum that
# could overflow; the caller has checked `credit <= MAX_BALANCE`. A side that is not credited
# gets no ceiling (`_NO_CEILING`): a debit always may bring a balance down.
_NO_CEILING = 2**63 - 1
_MOVE = (
    "UPDATE accounts SET available = available + ?, locked = locked + ? "
    "WHERE address = ? AND available >= ? AND locked >= ? AND available <= ? AND locked <= ? "
    "RETURNING available, locked"
)
_CREDIT = (
    "INSERT INTO accounts (address, available, locked) VALUES (?, ?, 0) "
    "ON CONFLICT (address) DO UPDATE SET available = available + excluded.available "
    "WHERE available <= ? "
    "RETURNING available, locked"
)
_INSERT_TICK = "INSERT OR IGNORE INTO ticks (symbol, ts, price) VALUES (?, ?, ?)"
# The conditional liability update: a cell's first bet always fits (the caller checked it
# against the cap alone); a further one only while the sum stays within the cap.
_ADD_LIABILITY = (
    "INSERT INTO cell_liability (cell_id, total) VALUES (?, ?) "
    "ON CONFLICT (cell_id) DO UPDATE SET total = total + excluded.total WHERE total <= ? "
    "RETURNING total"
)
EXPOSURE_LIMIT = "exposure_limit"
_ENTRY_KINDS = frozenset({"deposit", "withdrawal", "adjustment"})  # what moves money but bets
_INSERT_ENTRY = (
    "INSERT INTO ledger (address, kind, amount, locked_delta, balance_after, ref, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


# ── what the writer refuses to write, and what stops it ─────────────────────────────────────

# The bounds the edge enforces at decoding (API.md "Bounds", `tap.messages`), checked again here
# because the writer is the last line: a bet that reaches it by another road (a second edge, a
# bug, a redelivery from an older version) is refused alone, never written, never fatal.
_MAX_TEXT = {
    "bet_id": 64,
    "address": 64,
    "cell_id": 128,
    "symbol": 32,
    "nonce": 64,
    "signature": 256,
}
_NON_NEGATIVE_INTS = (
    "col", "t_start", "t_end", "multiplier_bps", "accepted_at", "timestamp", "min_multiplier_bps",
)  # fmt: skip


def bet_problem(req: PlaceBet) -> str | None:
    """Why the writer will not store `req` as placed (answered `invalid_request`), or None
    (see `_bet_problem`). The writer's hot path: the common case, a sound bet, is decided by
    one expression (~3 µs); only a suspect bet pays for the field-by-field reading."""
    m = MAX_BALANCE
    try:
        sound = (
            -m <= req.row <= m
            and -m <= req.price_lo <= m
            and -m <= req.price_hi <= m
            and 0 <= req.col <= m
            and 0 <= req.t_start <= m
            and 0 <= req.t_end <= m
            and 0 <= req.accepted_at <= m
            and 0 <= req.timestamp <= m
            and 0 <= req.multiplier_bps <= MAX_MULTIPLIER_BPS
            and 0 <= req.min_multiplier_bps <= MAX_MULTIPLIER_BPS
            and 1 <= req.chain_id <= m
            and 0 < len(req.bet_id) <= 64
            and 0 < len(req.address) <= 64
            and 0 < len(req.cell_id) <= 128
            and 0 < len(req.symbol) <= 32
            and 0 < len(req.signature) <= 256
            # Exact types: no float, no bool, no str subclass.
            and type(req.row) is int
            and type(req.price_lo) is int
            and type(req.price_hi) is int
            and type(req.col) is int
            and type(req.t_start) is int
            and type(req.t_end) is int
            and type(req.accepted_at) is int
            and type(req.timestamp) is int
            and type(req.multiplier_bps) is int
            and type(req.min_multiplier_bps) is int
            and type(req.chain_id) is int
            and type(req.amount) is int
            and type(req.bet_id) is str
            and type(req.address) is str
            and type(req.cell_id) is str
            and type(req.symbol) is str
            and type(req.signature) is str
            and type(req.nonce) is str
            and (req.bet_id + req.address + req.cell_id + req.symbol + req.signature).isprintable()
            and valid_nonce(req.nonce)
        )
    except Exception:  # a field of the wrong type: read it field by field below
        sound = False
    return None if sound else _bet_problem(req)


def _bet_problem(req: PlaceBet) -> str | None:
    """Why the writer will not store `req` as placed, field by field, or None.

    Text fields are non-empty, bounded, printable (so valid UTF-8: no lone surrogates), the nonce
    as API.md spells it; every other field an integer within ±(2⁵³ − 1) (every sum SQLite
    computes stays exact, far from 2⁶³), not negative where it is a time, a column or a
    multiplier; `chain_id` ≥ 1; multipliers within `MAX_MULTIPLIER_BPS`. Never raises, whatever
    the fields hold (a request built in code is not type-checked by msgspec)."""
    for name in PlaceBet.__struct_fields__:
        value = getattr(req, name)
        limit = _MAX_TEXT.get(name)
        if limit is not None:
            if type(value) is not str or not 0 < len(value) <= limit or not value.isprintable():
                return f"{name}: 1..{limit} printable characters"
        elif type(value) is not int or not -MAX_BALANCE <= value <= MAX_BALANCE:
            return f"{name}: an integer within ±{MAX_BALANCE}"
    if any(getattr(req, name) < 0 for name in _NON_NEGATIVE_INTS):
        return "times, columns and multipliers may not be negative"
    if req.chain_id < 1:
        return "chain_id: must be positive"
    if max(req.multiplier_bps, req.min_multiplier_bps) > MAX_MULTIPLIER_BPS:
        return f"multiplier above {MAX_MULTIPLIER_BPS} bps"
    if not valid_nonce(req.nonce):
        return "nonce: 16-64 characters of [A-Za-z0-9_-]"
    return None


def _text_ok(value: object, limit: int) -> bool:
    return type(value) is str and 0 < len(value) <= limit and value.isprintable()


def _int_ok(value: object, lo: int = -MAX_BALANCE) -> bool:
    return type(value) is int and lo <= value <= MAX_BALANCE


def entry_problem(req: Deposit | Withdrawal | AdminCredit) -> str | None:
    """Why a deposit, withdrawal or credit is not fit to write (`invalid_request`), or None.
    Amounts themselves are the movement's to judge (`amount_out_of_range`)."""
    if not _text_ok(req.address, _MAX_TEXT["address"]):
        return "address: 1..64 printable characters"
    if not _text_ok(req.ref, 256) or not _int_ok(req.at, 0):
        return "ref or at out of bounds"
    if isinstance(req, Withdrawal) and not _text_ok(req.nonce, _MAX_TEXT["nonce"]):
        return "nonce: 1..64 printable characters"
    if isinstance(req, AdminCredit) and (type(req.reason) is not str or len(req.reason) > 256):
        return "reason: at most 256 characters"
    return None


def outcome_problem(outcome: Outcome) -> str | None:
    """Why a settlement cannot be applied as given (it is skipped and logged), or None."""
    if not isinstance(outcome, Outcome) or type(outcome.bet_id) is not str:
        return "not an outcome"
    if outcome.status not in ("won", "lost", "void") or not _int_ok(outcome.at, 0):
        return "status or at out of bounds"
    if type(outcome.reason) is not str or len(outcome.reason) > 64:
        return "reason: at most 64 characters"
    decided = outcome.decided_by
    if decided is not None and not (_int_ok(decided.ts, 0) and _int_ok(decided.price)):
        return "decided_by out of bounds"
    return None


def tick_problem(tick: Tick) -> str | None:
    if not isinstance(tick, Tick) or not _text_ok(tick.symbol, _MAX_TEXT["symbol"]):
        return "symbol: 1..32 printable characters"
    if not _int_ok(tick.ts, 0) or not _int_ok(tick.price):
        return "ts or price out of bounds"
    return None


# Primary SQLite result codes after which the writer must stop: the file or the disk is broken
# (or memory ran out), and writing on could make the ledger worse. Everything else an item can
# raise — a constraint, a value that does not bind, a bug in one code path — refuses that item.
_FATAL_CODES = frozenset(
    getattr(sqlite3, name)
    for name in (
        "SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_NOTADB",
        "SQLITE_READONLY", "SQLITE_NOMEM", "SQLITE_PROTOCOL", "SQLITE_PERM",
    )
    if hasattr(sqlite3, name)
)  # fmt: skip


def is_fatal(exc: BaseException) -> bool:
    """True when `exc` must stop the writer (or, for busy, end the batch to retry it whole):
    a broken file or disk, memory exhausted, the lock held by another process (`is_busy`), or
    `ledger.LedgerError` — the stored state contradicts the money rules; writing on would build
    on it (run the integrity check). Everything else is one item's problem."""
    if not isinstance(exc, Exception) or isinstance(exc, MemoryError | ledger.LedgerError):
        return True
    if is_busy(exc):
        return True
    if isinstance(exc, sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _FATAL_CODES
    return False


def _ref_of(req: WriterRequest) -> str:
    match req:
        case PlaceBet():
            return repr(req.bet_id)[:80]
        case Deposit() | Withdrawal() | AdminCredit():
            return repr(req.ref)[:80]
        case _:
            return type(req).__name__


def _bet_row(
    req: PlaceBet, status: str, confirmed_at: int | None, reason: str | None
) -> tuple[object, ...]:
    return (
        req.bet_id,
        req.address,
        req.cell_id,
        req.symbol,
        req.col,
        req.row,
        req.t_start,
        req.t_end,
        req.price_lo,
        req.price_hi,
        req.amount,
        req.multiplier_bps,
        req.nonce,
        status,
        req.accepted_at,
        confirmed_at,
        reason,
        req.timestamp,
        req.chain_id,
        req.min_multiplier_bps,
        req.signature,
    )


def _refused_bet(req: PlaceBet, reason: str) -> Bet:
    return req.as_bet("rejected", reason)


class _BatchWriter:
    """One batch's work inside the open transaction; collects events and final balances."""

    def __init__(
        self, conn: sqlite3.Connection, now_ms: int, cell_caps: Mapping[str, int] | None = None
    ) -> None:
        self.cur = conn.cursor()
        self.now_ms = now_ms
        self.cell_caps = cell_caps or {}  # symbol → max_cell_liability (units); absent/0 = none
        self.settled = False  # any settlement in this batch (cell_liability rows to tidy)
        self.events: list[Committed] = []
        self.balances: dict[str, tuple[int, int]] = {}  # address → (available, locked), last seen
        # Careful mode (`apply_batch`'s second pass): each item runs inside its own SAVEPOINT,
        # and `undo` records the balances it overwrote, so a failed item leaves no trace.
        self.careful = False
        self.undo: list[tuple[str, tuple[int, int] | None]] = []
        # Accounts a deposit, withdrawal or credit moved: they get a `BalanceChanged` (bet
        # events carry their own balance).
        self.entries_moved: set[str] = set()

    def announce(self, event: BetConfirmed | BetRejected | BetResolved) -> None:
        """Queue a bet event with the account's balance right after it (API.md: bet frames
        carry the balance, so a committed bet is one frame)."""
        address = event.bet.address
        now = self.balances.get(address)
        if now is None and type(address) is str:
            # Not moved in this batch (a refusal): the stored balance, if any. A refusal of a
            # malformed bet must not fail on its own address: then it goes out without one.
            try:
                row = self.cur.execute(
                    "SELECT available, locked FROM accounts WHERE address = ?", (address,)
                ).fetchone()
            except (sqlite3.Error, ValueError, OverflowError):
                row = None
            now = None if row is None else (int(row[0]), int(row[1]))
        if now is not None:
            event = msgspec.structs.replace(event, balance=Balance(available=now[0], locked=now[1]))
        self.events.append(event)

    # money movements

    def move(self, address: str, m: ledger.Movement) -> tuple[int, int] | str:
        """Perform `m` on the account: the balances after it, or why it was refused (nothing
        moved): `INSUFFICIENT_FUNDS` when a balance would go below zero (or there is no account
        to debit), `AMOUNT_OUT_OF_RANGE` when one would go above `MAX_BALANCE`."""
        if abs(m.amount) > MAX_BALANCE or abs(m.locked_delta) > MAX_BALANCE:
            return AMOUNT_OUT_OF_RANGE  # also keeps the value bindable (sqlite3 takes int64)
        credit, lock = max(0, m.amount), max(0, m.locked_delta)
        if m.amount >= 0 and m.locked_delta == 0:
            params: tuple[object, ...] = (address, m.amount, MAX_BALANCE - credit)
            row = self.cur.execute(_CREDIT, params).fetchone()
        else:
            params = (
                m.amount,
                m.locked_delta,
                address,
                max(0, -m.amount),
                max(0, -m.locked_delta),
                MAX_BALANCE - credit if credit else _NO_CEILING,
                MAX_BALANCE - lock if lock else _NO_CEILING,
            )
            row = self.cur.execute(_MOVE, params).fetchone()
        if row is None:
            return self.refusal(address, credit, lock)
        balance = (int(row[0]), int(row[1]))
        if self.careful:
            self.undo.append((address, self.balances.get(address)))
        self.balances[address] = balance
        if m.kind in _ENTRY_KINDS:
            self.entries_moved.add(address)
        return balance

    def refusal(self, address: str, credit: int, lock: int) -> str:
        """Why a movement matched no row: over the ceiling, or else short of funds. Asked only
        after a refusal, so the common path pays no extra read."""
        row = self.cur.execute(
            "SELECT available, locked FROM accounts WHERE address = ?", (address,)
        ).fetchone()
        if row is not None and (
            (credit and row[0] > MAX_BALANCE - credit) or (lock and row[1] > MAX_BALANCE - lock)
        ):
            return AMOUNT_OUT_OF_RANGE
        return INSUFFICIENT_FUNDS

    def post(self, address: str, m: ledger.Movement, available: int, ref: str) -> LedgerEntry:
        """Write the ledger row of movement `m`, just performed (`available` is the balance
        after it), and return it as the API shows it. Called only after `move` succeeded: the
        ledger never records money that did not move."""
        self.cur.execute(
            _INSERT_ENTRY, (address, m.kind, m.amount, m.locked_delta, available, ref, self.now_ms)
        )
        entry_id = self.cur.lastrowid
        assert entry_id is not None
        return LedgerEntry(
            entry_id=entry_id,
            address=address,
            kind=m.kind,
            amount=m.amount,
            locked_delta=m.locked_delta,
            balance_after=available,
            ref=ref,
            at=self.now_ms,
        )

    def entry_by_ref(self, ref: str, kind: EntryKind) -> LedgerEntry | None:
        row = self.cur.execute(
            f"SELECT {ENTRY_COLUMNS} FROM ledger WHERE ref = ? AND kind = ?",
            (ref, kind),
        ).fetchone()
        return None if row is None else entry_from_row(row)

    # bets

    def place_bet(self, req: PlaceBet) -> None:
        """Confirm or refuse one bet, each rule decided where it is cheapest and exact: the
        bounds first (a malformed bet may not even bind, so it is refused before any statement);
        then the insert, whose unique indexes decide a replayed nonce, a reused bet_id or a second
        bet on one cell (`bet_conflict`); then the cell's liability cap; then the stake movement,
        which decides the funds. A refusal after the insert turns the stored row into a rejection
        (`reject_stored`), so the nonce stays burned and a by-nonce lookup answers it."""
        if type(req.amount) is int and not 0 < req.amount <= MAX_BALANCE:
            bet = _refused_bet(req, AMOUNT_OUT_OF_RANGE)
            self.announce(BetRejected(bet=bet, reason=AMOUNT_OUT_OF_RANGE))
            return
        problem = bet_problem(req)
        if problem is not None:  # not stored: its values may not even bind
            log.warning("bet %s refused (%s): %s", _ref_of(req), INVALID_REQUEST, problem)
            self.announce(
                BetRejected(bet=_refused_bet(req, INVALID_REQUEST), reason=INVALID_REQUEST)
            )
            return
        try:
            stake = ledger.stake_movement(req.amount)
        except ledger.InvalidAmount:
            self.announce(
                BetRejected(
                    bet=_refused_bet(req, "amount_out_of_range"), reason="amount_out_of_range"
                )
            )
            return
        try:
            self.cur.execute(_INSERT_BET, _bet_row(req, "confirmed", self.now_ms, None))
        except sqlite3.IntegrityError as conflict:
            self.bet_conflict(req, conflict)
            return
        cap = self.cell_caps.get(req.symbol, 0)
        liability = req.amount * req.multiplier_bps // 10_000
        if cap and not self.add_liability(req.cell_id, liability, cap):
            self.reject_stored(req, EXPOSURE_LIMIT)
            return
        balance = self.move(req.address, stake)
        if isinstance(balance, str):
            if cap:
                self.add_liability(req.cell_id, -liability, cap)
            self.reject_stored(req, balance)
            return
        self.post(req.address, stake, balance[0], req.bet_id)
        bet = project(Bet, req, status="confirmed", confirmed_at=self.now_ms)
        self.announce(BetConfirmed(bet=bet))

    def reject_stored(self, req: PlaceBet, reason: str) -> None:
        """Turn the bet just inserted as confirmed into a stored rejection (nothing moved)."""
        self.cur.execute(
            "UPDATE bets SET status = 'rejected', reason = ?, confirmed_at = NULL WHERE bet_id = ?",
            (reason, req.bet_id),
        )
        self.announce(BetRejected(bet=_refused_bet(req, reason), reason=reason))

    def add_liability(self, cell_id: str, payout: int, cap: int) -> bool:
        """Add a bet's potential payout to its cell's liability if the sum stays within `cap`
        (a negative `payout` takes one back); False, with nothing changed, if it would not.
        Decided by SQLite under the write lock, like a balance (DESIGN rule 5)."""
        if payout > cap:
            return False  # also keeps the value bindable: cap <= 2**53 - 1
        row = self.cur.execute(_ADD_LIABILITY, (cell_id, payout, cap - payout)).fetchone()
        return row is not None

    def bet_conflict(self, req: PlaceBet, conflict: sqlite3.IntegrityError) -> None:
        """Which unique rule the insert broke, and what to answer (the first insert is undone)."""
        row = self.cur.execute(
            f"SELECT {BET_COLUMNS} FROM bets WHERE address = ? AND nonce = ?",
            (req.address, req.nonce),
        ).fetchone()
        if row is not None:
            stored = bet_from_row(row)
            if stored.bet_id == req.bet_id:
                # The same request delivered twice (a retried hand-over): answer what happened.
                if stored.status == "rejected":
                    self.announce(BetRejected(bet=stored, reason=stored.reason or "rejected"))
                else:
                    self.announce(BetConfirmed(bet=stored))
                return
            bet = _refused_bet(req, "replayed_nonce")
            self.announce(BetRejected(bet=bet, reason="replayed_nonce"))
            return
        archived = self.cur.execute(
            "SELECT 1 FROM archived_nonces WHERE address = ? AND nonce = ?",
            (req.address, req.nonce),
        ).fetchone()
        if archived is not None:  # its bet was archived; the nonce stays burned (schema 3)
            self.events.append(
                BetRejected(bet=_refused_bet(req, "replayed_nonce"), reason="replayed_nonce")
            )
            return
        taken = self.cur.execute("SELECT 1 FROM bets WHERE bet_id = ?", (req.bet_id,)).fetchone()
        if taken is not None:
            bet = _refused_bet(req, DUPLICATE_BET_ID)
            self.announce(BetRejected(bet=bet, reason=DUPLICATE_BET_ID))
            return
        occupied = self.cur.execute(
            "SELECT 1 FROM bets WHERE address = ? AND cell_id = ? AND status <> 'rejected'",
            (req.address, req.cell_id),
        ).fetchone()
        if occupied is None:
            raise conflict  # a CHECK or other constraint: a bug upstream, not a player's error
        # Stored so the nonce stays burned and by-nonce answers; outside the partial cell index.
        self.cur.execute(_INSERT_BET, _bet_row(req, "rejected", None, "duplicate_cell_bet"))
        bet = _refused_bet(req, "duplicate_cell_bet")
        self.announce(BetRejected(bet=bet, reason="duplicate_cell_bet"))

    def settle(self, outcome: Outcome) -> None:
        problem = outcome_problem(outcome)
        if problem is not None:
            log.error("settlement %r skipped: %s", outcome, problem)
            return
        self.settle_valid(outcome)

    def settle_valid(self, outcome: Outcome) -> None:
        """Resolve one confirmed bet; anything else (already resolved, rejected, unknown) is a
        no-op, which is what makes a re-sent settlement harmless.

        The stake and multiplier are the stored ones: the resolver decides *whether* a bet won,
        the ledger decides *how much* (so `outcome.amount` / `outcome.payout` are not trusted).

        A payout or refund that would take the account above `MAX_BALANCE` is not applied: the
        bet stays confirmed (its stake still locked, nothing announced) and an error is logged
        for the operator. Stakes and multipliers are bounded far below that, so it needs a
        balance already near 2**53 units; losing the whole batch (or stopping the writer) over
        one bet would be worse, and paying a rounded or capped amount would be wrong money.
        """
        row = self.cur.execute(
            f"SELECT {BET_COLUMNS} FROM bets WHERE bet_id = ?", (outcome.bet_id,)
        ).fetchone()
        if row is None:
            return
        bet = bet_from_row(row)
        if bet.status != "confirmed":
            return
        m = ledger.resolution_movement(outcome.status, bet.amount, bet.multiplier_bps)
        balance = self.move(bet.address, m)
        if balance == AMOUNT_OUT_OF_RANGE:
            log.error(
                "bet %s (%s) left open: crediting %d would take account %s above %d units",
                bet.bet_id,
                outcome.status,
                m.amount,
                bet.address,
                MAX_BALANCE,
            )
            return
        if isinstance(balance, str):
            raise ledger.LedgerError(
                f"bet {bet.bet_id}: account {bet.address} has less than {bet.amount} locked"
            )
        liability = bet.amount * bet.multiplier_bps // 10_000
        if liability <= MAX_BALANCE:  # a larger one was never admitted under any cap
            self.cur.execute(
                "UPDATE cell_liability SET total = total - ? WHERE cell_id = ?",
                (liability, bet.cell_id),
            )
            self.settled = True
        decided = outcome.decided_by
        self.cur.execute(
            "UPDATE bets SET status = ?, resolved_at = ?, payout = ?, decided_ts = ?, "
            "decided_price = ?, reason = ? WHERE bet_id = ? AND status = 'confirmed'",
            (
                outcome.status,
                outcome.at,
                m.amount,
                None if decided is None else decided.ts,
                None if decided is None else decided.price,
                outcome.reason,
                bet.bet_id,
            ),
        )
        entry = self.post(bet.address, m, balance[0], bet.bet_id)
        resolved = msgspec.structs.replace(
            bet,
            status=outcome.status,
            resolved_at=outcome.at,
            payout=m.amount,
            decided_by=decided,
            reason=outcome.reason,
        )
        self.announce(BetResolved(bet=resolved, entry_id=entry.entry_id))

    # deposits, withdrawals, credits

    def deposit(self, req: Deposit) -> None:
        """Credit a deposit once per `ref`: a repeat (a caller retrying after a lost answer)
        answers the entry the first one posted; only a credit above `MAX_BALANCE` is refused."""
        if self.refuse_malformed_entry(req):
            return
        done = self.entry_by_ref(req.ref, "deposit")
        if done is not None:
            self.events.append(EntryPosted(ref=req.ref, entry=done))
            return
        try:
            m = ledger.deposit_movement(req.amount)
        except ledger.InvalidAmount:
            self.events.append(EntryPosted(ref=req.ref, entry=None, error="amount_out_of_range"))
            return
        balance = self.move(req.address, m)
        if isinstance(balance, str):  # a credit is refused only above MAX_BALANCE
            self.events.append(EntryPosted(ref=req.ref, entry=None, error=balance))
            return
        entry = self.post(req.address, m, balance[0], req.ref)
        self.events.append(EntryPosted(ref=req.ref, entry=entry))

    def withdraw(self, req: Withdrawal) -> None:
        """Debit a withdrawal once per `ref`. Its `withdrawals` row is written first, so the
        table's unique keys decide a repeat (answered with the first outcome, confirmed or
        refused) or a replayed nonce; a shortfall then marks that row rejected, so a retry with
        the same `ref` hears the same refusal instead of being tried again."""
        if self.refuse_malformed_entry(req):
            return
        try:
            m = ledger.withdrawal_movement(req.amount)
        except ledger.InvalidAmount:
            self.events.append(EntryPosted(ref=req.ref, entry=None, error="amount_out_of_range"))
            return
        try:
            self.cur.execute(
                "INSERT INTO withdrawals (ref, address, nonce, amount, status, at) "
                "VALUES (?, ?, ?, ?, 'completed', ?)",
                (req.ref, req.address, req.nonce, req.amount, self.now_ms),
            )
        except sqlite3.IntegrityError:
            row = self.cur.execute(
                "SELECT status, reason FROM withdrawals WHERE ref = ?", (req.ref,)
            ).fetchone()
            if row is None:
                self.events.append(EntryPosted(ref=req.ref, entry=None, error="replayed_nonce"))
            elif row[0] == "completed":
                self.events.append(
                    EntryPosted(ref=req.ref, entry=self.entry_by_ref(req.ref, "withdrawal"))
                )
            else:
                self.events.append(EntryPosted(ref=req.ref, entry=None, error=str(row[1])))
            return
        balance = self.move(req.address, m)
        if isinstance(balance, str):
            self.cur.execute(
                "UPDATE withdrawals SET status = 'rejected', reason = ? WHERE ref = ?",
                (balance, req.ref),
            )
            self.events.append(EntryPosted(ref=req.ref, entry=None, error=balance))
            return
        entry = self.post(req.address, m, balance[0], req.ref)
        self.events.append(EntryPosted(ref=req.ref, entry=entry))

    def admin_credit(self, req: AdminCredit) -> None:
        """An operator's signed adjustment, once per `ref` like a deposit; the `adjustments`
        row keeps the operator's reason beside the ledger entry. A debit short of funds, or a
        credit above `MAX_BALANCE`, is refused."""
        if self.refuse_malformed_entry(req):
            return
        done = self.entry_by_ref(req.ref, "adjustment")
        if done is not None:
            self.events.append(EntryPosted(ref=req.ref, entry=done))
            return
        try:
            m = ledger.adjustment_movement(req.amount)
        except ledger.InvalidAmount:
            self.events.append(EntryPosted(ref=req.ref, entry=None, error="amount_out_of_range"))
            return
        balance = self.move(req.address, m)
        if isinstance(balance, str):
            self.events.append(EntryPosted(ref=req.ref, entry=None, error=balance))
            return
        self.cur.execute(
            "INSERT INTO adjustments (ref, address, amount, reason, at) VALUES (?, ?, ?, ?, ?)",
            (req.ref, req.address, req.amount, req.reason, self.now_ms),
        )
        entry = self.post(req.address, m, balance[0], req.ref)
        self.events.append(EntryPosted(ref=req.ref, entry=entry))

    def refuse_malformed_entry(self, req: Deposit | Withdrawal | AdminCredit) -> bool:
        problem = entry_problem(req)
        if problem is None:
            return False
        log.warning(
            "%s %s refused (invalid_request): %s", type(req).__name__, _ref_of(req), problem
        )
        self.events.append(EntryPosted(ref=req.ref, entry=None, error=INVALID_REQUEST))
        return True

    def store_ticks(self, req: StoreTicks) -> None:
        """Insert-or-ignore the ticks (a repeat is harmless). The fast path writes them with one
        `executemany`; careful mode gives each tick its own SAVEPOINT, so a tick that does not
        bind costs only itself. Ticks out of bounds are logged and never written."""
        if not self.careful:
            rows = [(t.symbol, t.ts, t.price) for t in req.ticks if tick_problem(t) is None]
            if len(rows) < len(req.ticks):
                log.error("%d ticks out of bounds not stored", len(req.ticks) - len(rows))
            self.cur.executemany(_INSERT_TICK, rows)
            return
        for tick in req.ticks:  # one bad tick costs only itself
            if tick_problem(tick) is not None:
                log.error("tick %r out of bounds, not stored", tick)
                continue
            self.isolated(
                partial(self.cur.execute, _INSERT_TICK, (tick.symbol, tick.ts, tick.price)),
                partial(log.error, "tick %r not stored: %s", tick),
            )

    def apply(self, req: WriterRequest) -> None:
        """Hand one request to its handler. In careful mode each outcome of a settlement is
        isolated on its own: one `Settle` carries many bets' outcomes, and one that raises must
        not leave the others open."""
        match req:
            case PlaceBet():
                self.place_bet(req)
            case Settle():
                for outcome in req.outcomes:
                    if self.careful:
                        self.isolated(
                            partial(self.settle, outcome),
                            partial(log.error, "settlement of %s not applied: %s", outcome.bet_id),
                        )
                    else:
                        self.settle(outcome)
            case Deposit():
                self.deposit(req)
            case Withdrawal():
                self.withdraw(req)
            case AdminCredit():
                self.admin_credit(req)
            case StoreTicks():
                self.store_ticks(req)

    # one item's failure (careful mode)

    def isolated(self, work: Callable[[], object], on_failure: Callable[[str], object]) -> bool:
        """Run `work` inside a SAVEPOINT; if it raises anything but a fatal error, undo exactly
        what it did (rows, events, balances), tell `on_failure` why and return False."""
        events, undo = len(self.events), len(self.undo)
        self.cur.execute("SAVEPOINT item")
        try:
            work()
        except Exception as exc:
            if is_fatal(exc):
                raise
            self.cur.execute("ROLLBACK TO item")
            self.cur.execute("RELEASE item")
            del self.events[events:]
            while len(self.undo) > undo:
                address, before = self.undo.pop()
                if before is None:
                    self.balances.pop(address, None)
                else:
                    self.balances[address] = before
            on_failure(f"{type(exc).__name__}: {exc}")
            return False
        self.cur.execute("RELEASE item")
        return True

    def apply_isolated(self, req: WriterRequest) -> None:
        """`apply`, but an error in this request refuses it alone (with a reason for whoever
        waits on it) instead of failing the batch."""
        if isinstance(req, Settle | StoreTicks):
            # Isolated per outcome / per tick inside; this outer savepoint catches a request
            # that is malformed as a whole (nobody waits on it: logged only).
            self.isolated(
                partial(self.apply, req),
                partial(log.error, "%s not applied: %s", type(req).__name__),
            )
            return

        def refuse(why: str) -> None:
            log.error("writer refused %s %s: %s", type(req).__name__, _ref_of(req), why)
            if isinstance(req, PlaceBet):
                self.refuse_bet(req, INTERNAL_ERROR, why)
            else:
                self.events.append(EntryPosted(ref=req.ref, entry=None, error=INTERNAL_ERROR))

        self.isolated(partial(self.apply, req), refuse)

    def refuse_bet(self, req: PlaceBet, reason: str, why: str) -> None:
        """Answer `reason` for a bet that cannot be written as placed. The refusal is stored
        when its values can be (so GET and by-nonce answer `rejected` and the nonce stays
        burned); when even that fails, the answer alone goes out and nothing is stored."""
        log.warning("bet %s refused (%s): %s", _ref_of(req), reason, why)
        if bet_problem(req) is None:
            self.isolated(
                partial(self.cur.execute, _INSERT_BET, _bet_row(req, "rejected", None, reason)),
                lambda _: None,
            )
        self.announce(BetRejected(bet=_refused_bet(req, reason), reason=reason))


def apply_batch(
    conn: sqlite3.Connection,
    requests: Sequence[WriterRequest],
    now_ms: int,
    *,
    cell_caps: Mapping[str, int] | None = None,
) -> list[Committed]:
    """Apply `requests` in order in one `BEGIN IMMEDIATE` transaction; return the events to
    announce, in order (each bet event carrying its account's balance right after it), followed by
    one `BalanceChanged` per account that a deposit, withdrawal or credit moved.

    Per item: a bet is confirmed (stake moved, one ledger row) or rejected (`replayed_nonce`,
    `duplicate_cell_bet`, `insufficient_funds`, `amount_out_of_range`, `invalid_request` when
    `bet_problem` finds it outside the wire bounds, or `internal_error` for a bet_id already
    used by another nonce);
    a settlement resolves a confirmed bet or does nothing; deposits, credits and withdrawals
    are idempotent by `ref` (a repeat answers the original entry); ticks are insert-or-ignore.
    No movement takes a balance above `MAX_BALANCE`: such a bet, deposit, credit or withdrawal
    is answered `amount_out_of_range`, such a settlement leaves its bet open (see `settle`).
    With `cell_caps` (symbol → `max_cell_liability`), a bet that would take its cell's sum of
    potential payouts past its market's cap is rejected `exposure_limit` (stored, no money).

    One bad item never fails the batch: whatever it raises (a value that does not bind, a
    constraint, a bug in one path), the batch is applied again with a SAVEPOINT per item, and
    that item alone is refused — a bet or an entry with `internal_error`, a settlement left
    open, a tick not stored, each logged — while every other item commits.

    Raises, with the transaction rolled back and nothing to announce, only what `is_fatal`
    names: `sqlite3.OperationalError` for which `is_busy` is true (retry the same batch later),
    a broken file or disk, or `ledger.LedgerError` (stored state contradicts the rules: stop
    writing, run the integrity check).
    """
    try:
        writer = _write(conn, requests, now_ms, careful=False, cell_caps=cell_caps)
    except Exception as exc:
        if is_fatal(exc):
            raise
        # One item raised. Do the batch again with each item in its own SAVEPOINT, so that
        # item alone is refused and the rest commit. Only this rare pass pays the savepoints.
        log.error("batch of %d failed on one item (%r); applying item by item", len(requests), exc)
        writer = _write(conn, requests, now_ms, careful=True, cell_caps=cell_caps)
    events = writer.events
    for address in writer.entries_moved:
        final = writer.balances.get(address)
        if final is not None:
            events.append(
                BalanceChanged(address=address, available=final[0], locked=final[1], at=now_ms)
            )
    return events


def _write(
    conn: sqlite3.Connection,
    requests: Sequence[WriterRequest],
    now_ms: int,
    *,
    careful: bool,
    cell_caps: Mapping[str, int] | None,
) -> _BatchWriter:
    """One attempt at the batch's transaction: committed, or rolled back and raised."""
    writer = _BatchWriter(conn, now_ms, cell_caps)
    writer.careful = careful
    conn.execute("BEGIN IMMEDIATE")
    try:
        for req in requests:
            if careful:
                writer.apply_isolated(req)
            else:
                writer.apply(req)
        if writer.settled:  # cells whose open bets are all settled (a few hundred rows at most)
            conn.execute("DELETE FROM cell_liability WHERE total <= 0")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return writer


def rebuild_cell_liability(conn: sqlite3.Connection) -> int:
    """Recompute `cell_liability` from the confirmed bets (a writer starting; the table is kept
    in step by every batch after that). Returns the number of cells with open bets."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM cell_liability")
        conn.execute(
            "INSERT INTO cell_liability (cell_id, total) "
            "SELECT cell_id, SUM(amount * multiplier_bps / 10000) FROM bets "
            "WHERE status = 'confirmed' GROUP BY cell_id"
        )
        cells = int(conn.execute("SELECT count(*) FROM cell_liability").fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return cells


def cell_liability(conn: sqlite3.Connection, cell_id: str) -> int:
    row = conn.execute("SELECT total FROM cell_liability WHERE cell_id = ?", (cell_id,)).fetchone()
    return 0 if row is None else int(row[0])


def refusals(requests: Sequence[WriterRequest], reason: str) -> list[Committed]:
    """The answers for requests the writer gives up on without touching the database (the lock
    stayed busy): every waiter hears `reason` and nothing was stored, so the request may be
    retried with the same nonce. Settlements and ticks have nobody waiting and get no answer."""
    events: list[Committed] = []
    for req in requests:
        match req:
            case PlaceBet():
                events.append(BetRejected(bet=_refused_bet(req, reason), reason=reason))
            case Deposit() | Withdrawal() | AdminCredit():
                events.append(EntryPosted(ref=req.ref, entry=None, error=reason))
            case Settle() | StoreTicks():
                pass
    return events
