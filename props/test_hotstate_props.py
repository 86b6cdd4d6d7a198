"""Replay and double-spend properties of the hot state, against both implementations.

Hypothesis writes a program: funded addresses, then rounds of bets, withdrawals, releases and
credits, the operations of one round running *concurrently* (on Redis they share pipelines, so
their scripts interleave on the server). A model kept from the observed answers checks, after
every round:
  - replay: an (address, nonce) is admitted at most once until a release forgets it;
  - one bet per cell: an address never holds two admitted bets on one cell;
  - double spend: the admitted reservations never exceed what the address was funded with, and
    the hot balance is exactly funded − reserved (no unit created or lost);
  - no false refusal: a round of one operation refused `insufficient_funds` really lacked funds.
Credits carry rising ledger entry ids, as ledger-sync sends them; no balance here is seeded from a
ledger read, so every one must be applied, whatever order a round delivers them in.
Each example is one `trio.run` (pytest-trio's Hypothesis support), with its own key prefix on
Redis. One round costs one pipeline round trip, plus one to read the balances back.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from actors.redis_gateway import open_redis_hot_state
from tap.config import Config
from tap.hotstate import Admit, HotState
from tap.store.redis_hot import RedisHotState
from tests.redis_fixtures import delete_prefix, hot_config, redis_url

__all__ = ["redis_url"]

ADDRESSES = (
    "0x00000000000000000000000000000000000000aa",
    "0x00000000000000000000000000000000000000bb",
)
NONCES = 6  # few, so replays are common
CELLS = 4  # few, so duplicate cells are common
SKEW_MS = 30_000
T0 = 1_732_290_000_000
MAX_OPS = 50  # operations per example (the `ci` profile's 50 steps)


@dataclass(frozen=True)
class Bet:
    who: int
    nonce: int
    cell: int
    amount: int


@dataclass(frozen=True)
class Withdraw:
    who: int
    nonce: int
    amount: int


@dataclass(frozen=True)
class Release:
    pick: int  # which outstanding reservation (modulo how many there are)
    forget_nonce: bool


@dataclass(frozen=True)
class Credit:
    who: int
    amount: int


Op = Bet | Withdraw | Release | Credit

_who = st.integers(0, len(ADDRESSES) - 1)
_amount = st.integers(1, 60)
ops = st.one_of(
    st.builds(Bet, _who, st.integers(0, NONCES - 1), st.integers(0, CELLS - 1), _amount),
    st.builds(Withdraw, _who, st.integers(0, NONCES - 1), _amount),
    st.builds(Release, st.integers(0, 50), st.booleans()),
    st.builds(Credit, _who, st.integers(1, 100)),
)
rounds = st.lists(st.lists(ops, min_size=1, max_size=4), min_size=1, max_size=MAX_OPS).map(
    lambda rs: _cap(rs, MAX_OPS)
)
fundings = st.tuples(st.integers(0, 200), st.integers(0, 200))


def _cap(rs: list[list[Op]], most: int) -> list[list[Op]]:
    out: list[list[Op]] = []
    left = most
    for r in rs:
        if left <= 0:
            break
        out.append(r[:left])
        left -= len(out[-1])
    return out


def nonce(i: int) -> str:
    return f"nonce-{i:016d}"


def cell(i: int) -> str:
    return f"BTC-USD:{346458012 + i}:1"


@dataclass
class Reservation:
    who: int
    nonce: int
    cell: int | None
    amount: int


@dataclass
class Model:
    """What the answers so far allow us to know, and the properties to hold."""

    funded: list[int]
    reservations: list[Reservation] = field(default_factory=list)
    remembered: set[tuple[int, int]] = field(default_factory=set)  # admitted, not forgotten

    def reserved(self, who: int) -> int:
        return sum(r.amount for r in self.reservations if r.who == who)

    def admitted(self, who: int, n: int, c: int | None, amount: int) -> None:
        assert (who, n) not in self.remembered, f"nonce {n} of address {who} admitted twice"
        if c is not None:
            held = [r for r in self.reservations if r.who == who and r.cell == c]
            assert not held, f"address {who} holds two bets on cell {c}"
        self.remembered.add((who, n))
        self.reservations.append(Reservation(who, n, c, amount))
        assert self.reserved(who) <= self.funded[who], "reservations exceed the funds"


@dataclass
class Backend:
    kind: str
    config: Config | None = None
    examples: Iterator[int] = field(default_factory=itertools.count)


@pytest.fixture(scope="module", params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield Backend("memory")
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"taptest-props-{uuid.uuid4().hex[:12]}"
    yield Backend("redis", hot_config(url, prefix, rate_per_s=1_000.0, burst=1_000))
    delete_prefix(url, prefix)


async def run_program(hot: HotState, funding: tuple[int, int], program: list[list[Op]]) -> None:
    model = Model(funded=list(funding))
    entry_ids = itertools.count(1)  # each credit's ledger row, in commit order
    for who, amount in enumerate(funding):
        if amount:
            await hot.credit(ADDRESSES[who], amount, entry_id=next(entry_ids))
    await check_balances(hot, model)
    for round_ops in program:
        outstanding = list(model.reservations)
        releases: dict[int, Release] = {}  # one release per reservation per round
        answers: list[tuple[Op, Admit | None]] = []

        async with trio.open_nursery() as nursery:
            for op in round_ops:
                if isinstance(op, Release):
                    if not outstanding or op.pick % len(outstanding) in releases:
                        continue
                    releases[op.pick % len(outstanding)] = op
                nursery.start_soon(perform, hot, op, outstanding, answers, next(entry_ids))

        spendable_before = [model.funded[w] - model.reserved(w) for w in range(len(ADDRESSES))]
        for index, release in releases.items():
            r = outstanding[index]
            model.reservations.remove(r)
            if release.forget_nonce:
                model.remembered.discard((r.who, r.nonce))
        for op, _ in answers:
            if isinstance(op, Credit):
                model.funded[op.who] += op.amount
        for op, answer in answers:
            if isinstance(op, Bet | Withdraw):
                assert answer is not None and answer.reason != "rate_limited"
                c = op.cell if isinstance(op, Bet) else None
                if answer.ok:
                    model.admitted(op.who, op.nonce, c, op.amount)
                elif answer.reason == "insufficient_funds" and len(round_ops) == 1:
                    assert spendable_before[op.who] < op.amount, "refused with enough funds"
        await check_balances(hot, model)


async def perform(
    hot: HotState,
    op: Op,
    outstanding: list[Reservation],
    answers: list[tuple[Op, Admit | None]],
    entry_id: int,
) -> None:
    answer: Admit | None = None
    if isinstance(op, Bet):
        answer = await hot.admit_bet(
            ADDRESSES[op.who], nonce(op.nonce), cell(op.cell), op.amount, T0
        )
    elif isinstance(op, Withdraw):
        answer = await hot.admit_withdrawal(ADDRESSES[op.who], nonce(op.nonce), op.amount, T0)
    elif isinstance(op, Credit):
        await hot.credit(ADDRESSES[op.who], op.amount, entry_id=entry_id)
    else:
        r = outstanding[op.pick % len(outstanding)]
        await hot.release(
            ADDRESSES[r.who],
            r.amount,
            cell_id=None if r.cell is None else cell(r.cell),
            nonce=nonce(r.nonce) if op.forget_nonce else None,
        )
    answers.append((op, answer))


async def check_balances(hot: HotState, model: Model) -> None:
    for who, address in enumerate(ADDRESSES):
        assert await spendable(hot, address) == model.funded[who] - model.reserved(who)


async def spendable(hot: Any, address: str) -> int:
    if isinstance(hot, RedisHotState):
        return await hot.spendable(address) or 0
    value: int = hot.spendable(address)
    return value


@given(funding=fundings, program=rounds)
async def test_no_replay_and_no_double_spend(
    backend: Backend, funding: tuple[int, int], program: list[list[Op]]
) -> None:
    if backend.config is None:
        from tap.hotstate import InMemoryHotState

        await run_program(InMemoryHotState(SKEW_MS, 1_000.0, 1_000), funding, program)
        return
    base = backend.config.redis
    config = hot_config(
        base.url, f"{base.prefix}:{next(backend.examples)}", rate_per_s=1_000.0, burst=1_000
    )
    async with open_redis_hot_state(config) as hot:
        await run_program(hot, funding, program)
