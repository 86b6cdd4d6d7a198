"""No double spend: money is conserved and never negative, whatever players, edges and resolver do.

`DoubleSpend` drives several accounts through the life of the real system: deposits, bets
admitted with a hold (the hot state's reservation), then confirmed or rejected by the writer —
alone or several in one batch — settled as won, lost or void, re-sent, replayed; withdrawals and
admin adjustments; and bets that reach the writer without a hold (a second edge, a redelivery),
which only the writer's own check stands in front of. The writer here is `Model`, the contract
written as plainly as possible on top of `tap.ledger`. After every step the invariants hold:
nothing negative, locked == the stakes of open bets, each account's rows sum to its balances,
holds never exceed available unless money left behind admission's back, money is conserved.

`StoreMatchesModel` runs the same sequences through the SQLite write layer
(`tap.store.write.apply_batch`, the batcher's SQL, synchronously, no trio) beside the model and
compares every outcome, balance, row and bet after every step, plus the integrity check.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)
from msgspec.structs import replace

from tap import ledger
from tap.messages import (
    AdminCredit,
    BetConfirmed,
    BetRejected,
    BetResolved,
    Committed,
    DecidedBy,
    Deposit,
    EntryPosted,
    Outcome,
    PlaceBet,
    Settle,
    Withdrawal,
    WriterRequest,
)
from tap.store import connect, read, write
from tap.store.integrity import integrity_check

ADDRESSES = ("0xa1", "0xb2", "0xc3")
SYMBOL = "BTC-USD"

addresses = st.sampled_from(ADDRESSES)
stakes = st.integers(1, 60)
cells = st.tuples(st.integers(0, 2), st.integers(0, 2))  # few cells, so players collide
multipliers = st.sampled_from([10_000, 10_500, 28_106, 29_600, 1_000_000])
resolutions = st.sampled_from(["won", "lost", "void"])

# An item's outcome, the same shape whoever computed it:
#   bet → ("bet", bet_id, "confirmed" | reason); entry → ("entry", ref, error or None, amount);
#   settlement → ("resolved", bet_id).
Token = tuple[object, ...]


@dataclass
class StoredBet:
    request: PlaceBet
    status: str  # confirmed | rejected | won | lost | void
    reason: str | None = None
    payout: int | None = None


@dataclass
class Model:
    """The writer's contract. Mirrors what `apply_batch` must do, item by item."""

    accounts: dict[str, ledger.Account] = field(default_factory=lambda: defaultdict(ledger.Account))
    rows: dict[str, list[tuple[str, int, int, int, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    bets: dict[str, StoredBet] = field(default_factory=dict)
    nonces: dict[tuple[str, str], str] = field(default_factory=dict)  # (address, nonce) → bet_id
    entries: dict[tuple[str, str], Token] = field(default_factory=dict)  # (kind, ref) → answer
    withdrawal_nonces: set[tuple[str, str]] = field(default_factory=set)
    # The conservation tally.
    deposited: int = 0
    withdrawn: int = 0
    adjusted: int = 0
    won_net: int = 0  # Σ (payout − stake) over wins
    lost: int = 0  # Σ stakes lost

    def _post(self, address: str, applied: ledger.Applied, ref: str) -> None:
        self.accounts[address] = applied.account
        for p in applied.entries:
            self.rows[address].append((p.kind, p.amount, p.locked_delta, p.balance_after, ref))

    def live_cell(self, address: str, cell_id: str) -> bool:
        return any(
            b.request.address == address and b.request.cell_id == cell_id and b.status != "rejected"
            for b in self.bets.values()
        )

    def place(self, req: PlaceBet) -> Token:
        known = self.nonces.get((req.address, req.nonce))
        if known is not None:
            if known != req.bet_id:
                return ("bet", req.bet_id, "replayed_nonce")
            stored = self.bets[known]
            return (
                "bet",
                req.bet_id,
                stored.reason if stored.status == "rejected" else "confirmed",
            )
        self.nonces[(req.address, req.nonce)] = req.bet_id
        if self.live_cell(req.address, req.cell_id):
            self.bets[req.bet_id] = StoredBet(req, "rejected", "duplicate_cell_bet")
            return ("bet", req.bet_id, "duplicate_cell_bet")
        try:
            applied = ledger.reserve_stake(self.accounts[req.address], req.amount)
        except ledger.InsufficientFunds:
            self.bets[req.bet_id] = StoredBet(req, "rejected", "insufficient_funds")
            return ("bet", req.bet_id, "insufficient_funds")
        self._post(req.address, applied, req.bet_id)
        self.bets[req.bet_id] = StoredBet(req, "confirmed")
        return ("bet", req.bet_id, "confirmed")

    def settle(self, outcome: Outcome) -> list[Token]:
        stored = self.bets.get(outcome.bet_id)
        if stored is None or stored.status != "confirmed":
            return []
        req = stored.request
        applied = ledger.settle(
            self.accounts[req.address], outcome.status, req.amount, req.multiplier_bps
        )
        self._post(req.address, applied, req.bet_id)
        stored.status = outcome.status
        stored.payout = applied.entries[0].amount
        if outcome.status == "won":
            self.won_net += stored.payout - req.amount
        elif outcome.status == "lost":
            self.lost += req.amount
        return [("resolved", req.bet_id)]

    def deposit(self, req: Deposit) -> Token:
        if ("deposit", req.ref) in self.entries:
            return self.entries[("deposit", req.ref)]
        self._post(req.address, ledger.deposit(self.accounts[req.address], req.amount), req.ref)
        self.deposited += req.amount
        token: Token = ("entry", req.ref, None, req.amount)
        self.entries[("deposit", req.ref)] = token
        return token

    def withdraw(self, req: Withdrawal) -> Token:
        if ("withdrawal", req.ref) in self.entries:
            return self.entries[("withdrawal", req.ref)]
        if (req.address, req.nonce) in self.withdrawal_nonces:
            return ("entry", req.ref, "replayed_nonce", None)
        self.withdrawal_nonces.add((req.address, req.nonce))
        try:
            applied = ledger.withdraw(self.accounts[req.address], req.amount)
        except ledger.InsufficientFunds:
            token: Token = ("entry", req.ref, "insufficient_funds", None)
        else:
            self._post(req.address, applied, req.ref)
            self.withdrawn += req.amount
            token = ("entry", req.ref, None, -req.amount)
        self.entries[("withdrawal", req.ref)] = token
        return token

    def adjust(self, req: AdminCredit) -> Token:
        if ("adjustment", req.ref) in self.entries:
            return self.entries[("adjustment", req.ref)]
        try:
            applied = ledger.adjust(self.accounts[req.address], req.amount)
        except ledger.InsufficientFunds:
            return ("entry", req.ref, "insufficient_funds", None)  # not stored: may be retried
        self._post(req.address, applied, req.ref)
        self.adjusted += req.amount
        token: Token = ("entry", req.ref, None, req.amount)
        self.entries[("adjustment", req.ref)] = token
        return token

    def apply(self, req: WriterRequest) -> list[Token]:
        match req:
            case PlaceBet():
                return [self.place(req)]
            case Settle():
                return [t for o in req.outcomes for t in self.settle(o)]
            case Deposit():
                return [self.deposit(req)]
            case Withdrawal():
                return [self.withdraw(req)]
            case AdminCredit():
                return [self.adjust(req)]
            case _:
                return []


def tokens_of(events: list[Committed]) -> list[Token]:
    """The SQL writer's events in the model's terms (balance events are compared separately)."""
    out: list[Token] = []
    for e in events:
        match e:
            case BetConfirmed():
                out.append(("bet", e.bet.bet_id, "confirmed"))
            case BetRejected():
                out.append(("bet", e.bet.bet_id, e.reason))
            case BetResolved():
                out.append(("resolved", e.bet.bet_id))
            case EntryPosted():
                out.append(("entry", e.ref, e.error, None if e.entry is None else e.entry.amount))
            case _:
                pass
    return out


class DoubleSpend(RuleBasedStateMachine):
    pending = Bundle("pending")  # admitted (held), waiting for the writer
    open_bets = Bundle("open_bets")  # confirmed, unresolved
    resolved = Bundle("resolved")

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.now = 1_000
        self.serial = 0
        self.holds: dict[str, int] = defaultdict(int)  # admission's reservations per address
        self.held: dict[str, PlaceBet] = {}  # bet_id → the admitted request
        self.marked: set[tuple[str, str]] = set()  # admission's one-bet-per-cell markers
        # Addresses whose available dropped while holds were pending, behind admission's back
        # (an admin debit, a bet without a hold): only these may see a held bet refused.
        self.behind_the_back: set[str] = set()
        self.last_deposit: Deposit | None = None
        self.last_withdrawal: Withdrawal | None = None

    # the writer

    def write(self, requests: list[WriterRequest]) -> list[Token]:
        """One batch through the writer; the model's answer for each item, in order."""
        self.now += 1
        return [t for req in requests for t in self.model.apply(req)]

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial:06d}"

    def spendable(self, address: str) -> int:
        return self.model.accounts[address].available - self.holds[address]

    def request(self, address: str, amount: int, cell: tuple[int, int], mult: int) -> PlaceBet:
        col, row = cell
        bet_id = self.next_id("bet")
        return PlaceBet(
            bet_id=bet_id,
            address=address,
            cell_id=f"{SYMBOL}:{col}:{row}",
            symbol=SYMBOL,
            col=col,
            row=row,
            t_start=col * 5000,
            t_end=col * 5000 + 5000,
            price_lo=row * 1000,
            price_hi=row * 1000 + 1000,
            amount=amount,
            multiplier_bps=mult,
            nonce=f"nonce-{bet_id}",
            accepted_at=self.now,
            timestamp=self.now,
            chain_id=31337,
            min_multiplier_bps=0,
            signature="ab" * 64,
        )

    def decrease_behind_the_back(self, address: str) -> None:
        if self.holds[address] > 0:
            self.behind_the_back.add(address)

    # rules: money in and out

    @rule(address=addresses, amount=st.integers(1, 200))
    def deposit(self, address: str, amount: int) -> None:
        ref = self.next_id("dep")
        self.last_deposit = Deposit(address=address, amount=amount, ref=ref, at=self.now)
        [token] = self.write([self.last_deposit])
        assert token == ("entry", ref, None, amount)

    @rule(address=addresses, amount=st.integers(1, 120), admitted=st.booleans())
    def withdraw(self, address: str, amount: int, admitted: bool) -> None:
        if admitted and self.spendable(address) < amount:
            return  # admission refuses it; the writer never sees it
        ref = self.next_id("wd")
        req = Withdrawal(address=address, amount=amount, nonce=f"n-{ref}", ref=ref, at=self.now)
        self.last_withdrawal = req
        [token] = self.write([req])
        if admitted:
            assert token[2] is None, "an admitted withdrawal must never be refused by the writer"
        elif token[2] is None:
            self.decrease_behind_the_back(address)

    @rule(address=addresses, amount=st.one_of(st.integers(-150, -1), st.integers(1, 150)))
    def adjust(self, address: str, amount: int) -> None:
        before = self.model.accounts[address].available
        ref = self.next_id("adj")
        req = AdminCredit(address=address, amount=amount, reason="ops", ref=ref, at=self.now)
        [token] = self.write([req])
        assert (token[2] is None) == (before + amount >= 0)
        if amount < 0 and token[2] is None:
            self.decrease_behind_the_back(address)

    @precondition(lambda self: any(self.holds.values()))
    @rule(data=st.data(), short_by=st.integers(1, 30))
    def debit_while_bets_are_queued(self, data: st.DataObject, short_by: int) -> None:
        """An operator's chargeback landing between admission and the writer, leaving available
        `short_by` below the holds: the race that makes the writer's own check necessary."""
        address = data.draw(st.sampled_from(sorted(a for a, h in self.holds.items() if h)))
        available = self.model.accounts[address].available
        amount = min(available, available - self.holds[address] + short_by)
        if amount > 0:
            self.adjust(address, -amount)

    @precondition(lambda self: self.last_deposit is not None)
    @rule()
    def repeat_last_deposit(self) -> None:
        """A client retrying its last deposit: the same answer, no money moves."""
        req = self.last_deposit
        assert req is not None
        total = sum(a.total for a in self.model.accounts.values())
        first = self.model.entries[("deposit", req.ref)]
        assert self.write([req]) == [first]
        assert sum(a.total for a in self.model.accounts.values()) == total

    @precondition(lambda self: self.last_withdrawal is not None)
    @rule(same_ref=st.booleans())
    def resend_last_withdrawal(self, same_ref: bool) -> None:
        """The same request again answers the same; a new one on a used nonce is refused."""
        req = self.last_withdrawal
        assert req is not None
        first = self.model.entries[("withdrawal", req.ref)]
        if not same_ref:
            req = replace(req, ref=self.next_id("wd"))
        total = sum(a.total for a in self.model.accounts.values())
        [token] = self.write([req])
        assert token == (first if same_ref else ("entry", req.ref, "replayed_nonce", None))
        assert sum(a.total for a in self.model.accounts.values()) == total

    # rules: bets

    @rule(target=pending, address=addresses, amount=stakes, cell=cells, mult=multipliers)
    def admit(self, address: str, amount: int, cell: tuple[int, int], mult: int) -> object:
        """The edge's admission: a hold against spendable and a cell marker, or a refusal."""
        req = self.request(address, amount, cell, mult)
        if self.spendable(address) < amount or (address, req.cell_id) in self.marked:
            return multiple()
        self.holds[address] += amount
        self.marked.add((address, req.cell_id))
        self.held[req.bet_id] = req
        return req.bet_id

    def written(self, bet_ids: list[str]) -> list[str]:
        """The writer takes held bets (one batch); holds are released either way."""
        requests = [self.held.pop(b) for b in bet_ids]
        tokens = self.write(list(requests))
        confirmed = []
        for req, token in zip(requests, tokens, strict=True):
            self.holds[req.address] -= req.amount
            if token[2] == "confirmed":
                confirmed.append(req.bet_id)
                continue
            self.marked.discard((req.address, req.cell_id))
            event(f"held bet rejected: {token[2]}")
            if token[2] == "insufficient_funds":
                assert req.address in self.behind_the_back, "a held bet was refused for funds"
            else:
                assert token[2] == "duplicate_cell_bet", token
                assert self.model.live_cell(req.address, req.cell_id)
        for address in ADDRESSES:
            if self.holds[address] == 0:
                self.behind_the_back.discard(address)
        return confirmed

    @rule(target=open_bets, bet_id=consumes(pending))
    def write_one(self, bet_id: str) -> object:
        """The writer takes one held bet, in any order (bets from several edges interleave)."""
        if bet_id not in self.held:  # already taken by `write_queue`
            return multiple()
        return multiple(*self.written([bet_id]))

    @precondition(lambda self: self.held)
    @rule(target=open_bets, size=st.integers(1, 6))
    def write_queue(self, size: int) -> object:
        """The writer takes the oldest held bets as one batch, as the channel delivers them."""
        return multiple(*self.written(list(self.held)[:size]))

    @rule(target=open_bets, address=addresses, amount=stakes, cell=cells, mult=multipliers)
    def bet_without_hold(
        self, address: str, amount: int, cell: tuple[int, int], mult: int
    ) -> object:
        """A bet the hot state never saw: the writer's conditional update is all that stands."""
        req = self.request(address, amount, cell, mult)
        available = self.model.accounts[address].available
        live = self.model.live_cell(address, req.cell_id)
        [token] = self.write([req])
        event(f"bet without hold: {token[2]}")
        if live:
            assert token[2] == "duplicate_cell_bet"
        elif available < amount:
            assert token[2] == "insufficient_funds"
        else:
            assert token[2] == "confirmed"
            self.marked.add((address, req.cell_id))
            self.decrease_behind_the_back(address)
            return req.bet_id
        return multiple()

    @rule(bet_id=open_bets, same_request=st.booleans())
    def resend_open(self, bet_id: str, same_request: bool) -> None:
        self.resend(bet_id, same_request)

    @rule(bet_id=resolved, same_request=st.booleans())
    def resend_resolved(self, bet_id: str, same_request: bool) -> None:
        self.resend(bet_id, same_request)

    def resend(self, bet_id: str, same_request: bool) -> None:
        """A redelivered bet answers its original outcome; a new bet on a used nonce is refused."""
        original = self.model.bets[bet_id].request
        req = original if same_request else replace(original, bet_id=self.next_id("bet"))
        total = sum(a.total for a in self.model.accounts.values())
        [token] = self.write([req])
        assert token[2] == ("confirmed" if same_request else "replayed_nonce")
        assert sum(a.total for a in self.model.accounts.values()) == total

    def outcome(self, bet_id: str, status: str) -> Outcome:
        return Outcome(
            bet_id=bet_id,
            address=self.model.bets[bet_id].request.address,
            status=status,  # type: ignore[arg-type]
            amount=0,
            payout=0,
            decided_by=DecidedBy(ts=self.now, price=1) if status == "won" else None,
            reason="touch" if status == "won" else "column_end",
            at=self.now,
        )

    @rule(target=resolved, bet_id=consumes(open_bets), status=resolutions)
    def settle(self, bet_id: str, status: str) -> str:
        still_open = self.model.bets[bet_id].status == "confirmed"  # column_end may have come first
        tokens = self.write([Settle(outcomes=(self.outcome(bet_id, status),))])
        assert tokens == ([("resolved", bet_id)] if still_open else [])
        return bet_id

    @rule(bet_id=resolved, status=resolutions)
    def settle_again(self, bet_id: str, status: str) -> None:
        assert self.write([Settle(outcomes=(self.outcome(bet_id, status),))]) == []

    @precondition(lambda self: any(b.status == "confirmed" for b in self.model.bets.values()))
    @rule(status=resolutions)
    def column_end(self, status: str) -> None:
        """The resolver settling many bets in one message; the bundle keeps them as open, and
        `settle` on them later is the idempotent no-op."""
        open_ids = [i for i, b in self.model.bets.items() if b.status == "confirmed"][:5]
        tokens = self.write([Settle(outcomes=tuple(self.outcome(i, status) for i in open_ids))])
        assert tokens == [("resolved", i) for i in open_ids]

    # invariants

    @invariant()
    def nothing_is_negative(self) -> None:
        for address, account in self.model.accounts.items():
            assert account.available >= 0 and account.locked >= 0, (address, account)

    @invariant()
    def locked_is_exactly_the_open_stakes(self) -> None:
        for address in ADDRESSES:
            stakes_open = sum(
                b.request.amount
                for b in self.model.bets.values()
                if b.request.address == address and b.status == "confirmed"
            )
            assert self.model.accounts[address].locked == stakes_open

    @invariant()
    def holds_never_exceed_funds(self) -> None:
        for address in ADDRESSES:
            if address not in self.behind_the_back:
                assert self.holds[address] <= self.model.accounts[address].available
            assert self.holds[address] >= 0

    @invariant()
    def each_account_is_the_sum_of_its_rows(self) -> None:
        for address in ADDRESSES:
            rows = self.model.rows[address]
            account = self.model.accounts[address]
            assert sum(r[1] for r in rows) == account.available
            assert sum(r[2] for r in rows) == account.locked
            assert sum(r[1] + r[2] for r in rows) == account.total
            running = 0
            for _, amount, _, balance_after, _ in rows:
                running += amount
                assert balance_after == running >= 0

    @invariant()
    def money_is_conserved(self) -> None:
        m = self.model
        expected = m.deposited - m.withdrawn + m.adjusted + m.won_net - m.lost
        assert expected == sum(a.total for a in m.accounts.values())

    @invariant()
    def every_bet_has_the_rows_its_status_implies(self) -> None:
        for bet_id, b in self.model.bets.items():
            rows = [
                ledger.Movement(kind, amount, locked)
                for kind, amount, locked, _, ref in self.model.rows[b.request.address]
                if ref == bet_id
            ]
            assert rows == list(
                ledger.bet_movements(b.status, b.request.amount, b.request.multiplier_bps)
            )


class StoreMatchesModel(DoubleSpend):
    """The same sequences through the SQL writer; it must agree with the model at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tap-props-"))
        # synchronous=OFF: durability is not what this machine checks, and fsync per step
        # would make it slow. Semantics are identical.
        self.conn: sqlite3.Connection = connect.open_writer(self.dir / "tap.db", synchronous="OFF")

    def write(self, requests: list[WriterRequest]) -> list[Token]:
        expected = super().write(requests)
        got = tokens_of(write.apply_batch(self.conn, requests, self.now))
        assert got == expected, (requests, got, expected)
        return expected

    @invariant()
    def store_agrees_with_model(self) -> None:
        for address in ADDRESSES:
            assert read.get_balance(self.conn, address) == self.model.accounts[address]
            stored = read.ledger_page(self.conn, address, limit=read.MAX_PAGE).items
            assert [
                (e.kind, e.amount, e.locked_delta, e.balance_after, e.ref) for e in reversed(stored)
            ] == self.model.rows[address]
        for bet_id, b in self.model.bets.items():
            got = read.get_bet(self.conn, bet_id)
            assert got is not None
            assert (got.status, got.reason if b.status == "rejected" else None, got.payout) == (
                b.status,
                b.reason,
                b.payout,
            )
        balances = read.all_balances(self.conn)
        for address in ADDRESSES:
            assert balances.get(address, 0) == self.model.accounts[address].available
        assert integrity_check(self.conn) == []

    def teardown(self) -> None:
        self.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestDoubleSpend = DoubleSpend.TestCase
TestStoreMatchesModel = StoreMatchesModel.TestCase
