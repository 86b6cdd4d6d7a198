"""The ledger rules: which rows each money event writes, and when an event must be refused.

An account has `available` (spendable) and `locked` (stakes of confirmed, unresolved bets). Every
balance change is one ledger row, a `Movement` of `amount` (signed change of available, the public
API's "amount") and `locked_delta` (signed change of locked), so that for every account
Σ amount == available, Σ locked_delta == locked, and neither ever goes below zero.

    event                 kind        amount     locked_delta
    deposit               deposit     +a         0
    withdrawal            withdrawal  −a         0          refused if available < a
    admin adjustment      adjustment  ±a         0          refused if it takes available below 0
    bet confirmed         stake       −a         +a         refused if available < a
    bet rejected          (no row)
    bet won               payout      +payout    −a         payout = a * multiplier_bps // 10000
    bet lost              payout      0          −a         "a payout of 0"
    bet void              refund      +a         −a

So a confirmed bet has exactly one stake row and a resolved bet exactly one more row. This module
decides those rows and the refusals, on plain values; it never stores anything. Its callers are the
SQL writer (`tap/store/write.py`, which performs the same movement as a conditional UPDATE), the
integrity check (which compares stored rows with `bet_movements`) and the property tests.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec

from tap.messages import EntryKind

BPS = 10_000  # multiplier basis points per 1.0×

Resolution = Literal["won", "lost", "void"]


class LedgerError(Exception):
    """A movement the rules forbid. `code` is the API.md reason the writer reports."""

    code = "ledger_violation"


class InsufficientFunds(LedgerError):
    """The account's available balance does not cover the debit; nothing moved."""

    code = "insufficient_funds"


class InvalidAmount(LedgerError):
    """A stake, deposit or withdrawal that is not a positive integer (it would mint money)."""

    code = "invalid_amount"


class Movement(msgspec.Struct, frozen=True):
    """What one ledger row does to its account, before it is numbered and stored."""

    kind: EntryKind
    amount: int  # signed change of `available`, units
    locked_delta: int  # signed change of `locked`, units


class Posting(msgspec.Struct, frozen=True):
    """A movement applied to an account: the row's values once `balance_after` is known.

    `tap.messages.LedgerEntry` is the committed form of this (with entry_id, address, ref, at).
    """

    kind: EntryKind
    amount: int
    locked_delta: int
    balance_after: int  # `available` after this row


class Account(msgspec.Struct, frozen=True):
    available: int = 0  # units
    locked: int = 0  # units: stakes of confirmed, unresolved bets

    @property
    def total(self) -> int:
        return self.available + self.locked


class Applied(NamedTuple):
    """The account after an event, and the rows the event wrote (none for a rejected bet)."""

    account: Account
    entries: tuple[Posting, ...]


def _positive(amount: int, what: str) -> None:
    # bool is an int subclass; a True stake would be a 1-unit bet nobody meant.
    if type(amount) is not int or amount <= 0:
        raise InvalidAmount(f"{what} must be a positive integer number of units, got {amount!r}")


def apply(account: Account, movement: Movement) -> Applied:
    """Apply one movement; refuse it (raise) if either balance would go below zero.

    A shortfall in `available` is the player's problem (`InsufficientFunds`); a shortfall in
    `locked` can only mean the stored state is wrong (`LedgerError`), never a reason to refuse a
    player politely.
    """
    available = account.available + movement.amount
    locked = account.locked + movement.locked_delta
    if locked < 0:
        raise LedgerError(
            f"{movement.kind} releases {-movement.locked_delta} but only {account.locked} is locked"
        )
    if available < 0:
        raise InsufficientFunds(
            f"{movement.kind} needs {-movement.amount} but only {account.available} is available"
        )
    after = Account(available, locked)
    return Applied(
        after, (Posting(movement.kind, movement.amount, movement.locked_delta, available),)
    )


# ── the movement of each event ────────────────────────────────────────────────────────────────


def payout_for(stake: int, multiplier_bps: int) -> int:
    """Units credited for a win: `stake × multiplier`, rounded down (API.md, Conventions)."""
    return stake * multiplier_bps // BPS


def deposit_movement(amount: int) -> Movement:
    _positive(amount, "deposit")
    return Movement("deposit", amount, 0)


def withdrawal_movement(amount: int) -> Movement:
    _positive(amount, "withdrawal")
    return Movement("withdrawal", -amount, 0)


def adjustment_movement(amount: int) -> Movement:
    """An operator's signed credit. Zero is refused: a row that moves nothing explains nothing."""
    if type(amount) is not int or amount == 0:
        raise InvalidAmount(f"adjustment must be a non-zero integer, got {amount!r}")
    return Movement("adjustment", amount, 0)


def stake_movement(stake: int) -> Movement:
    _positive(stake, "stake")
    return Movement("stake", -stake, stake)


def resolution_movement(status: str, stake: int, multiplier_bps: int) -> Movement:
    """The one row a confirmed bet gets when it resolves (the table in the module docstring)."""
    _positive(stake, "stake")
    if status == "won":
        return Movement("payout", payout_for(stake, multiplier_bps), -stake)
    if status == "lost":
        return Movement("payout", 0, -stake)
    if status == "void":
        return Movement("refund", stake, -stake)
    raise ValueError(f"not a resolution: {status!r}")


def resolution_payout(status: str, stake: int, multiplier_bps: int) -> int:
    """The bet's `payout` field: what came back to available (0 on a loss, the stake on void)."""
    return resolution_movement(status, stake, multiplier_bps).amount


def bet_movements(status: str, stake: int, multiplier_bps: int) -> tuple[Movement, ...]:
    """Every row a bet in `status` must have: the integrity check compares stored rows to this.

    pending and rejected bets moved no money; confirmed ones hold one stake row; resolved ones
    hold the stake row and their resolution row.
    """
    if status in ("pending", "rejected"):
        return ()
    if status == "confirmed":
        return (stake_movement(stake),)
    if status in ("won", "lost", "void"):
        return (stake_movement(stake), resolution_movement(status, stake, multiplier_bps))
    raise ValueError(f"not a bet status: {status!r}")


# ── events on an account ─────────────────────────────────────────────────────────────────────


def deposit(account: Account, amount: int) -> Applied:
    return apply(account, deposit_movement(amount))


def withdraw(account: Account, amount: int) -> Applied:
    return apply(account, withdrawal_movement(amount))


def adjust(account: Account, amount: int) -> Applied:
    return apply(account, adjustment_movement(amount))


def reserve_stake(account: Account, stake: int) -> Applied:
    """Confirming a bet moves its stake from available to locked, or refuses it whole."""
    return apply(account, stake_movement(stake))


def reject_bet(account: Account) -> Applied:
    """A rejected bet writes nothing: admission's hold was never money, only a promise."""
    return Applied(account, ())


def settle_win(account: Account, stake: int, multiplier_bps: int) -> Applied:
    return apply(account, resolution_movement("won", stake, multiplier_bps))


def settle_loss(account: Account, stake: int) -> Applied:
    return apply(account, resolution_movement("lost", stake, 0))


def settle_void(account: Account, stake: int) -> Applied:
    return apply(account, resolution_movement("void", stake, 0))


def settle(account: Account, status: Resolution, stake: int, multiplier_bps: int) -> Applied:
    return apply(account, resolution_movement(status, stake, multiplier_bps))
