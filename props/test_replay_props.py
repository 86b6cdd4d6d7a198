"""The signed-request admission decision, explored: fresh requests, replays, reused nonces,
timestamps on both sides of the window, other chains, tampering with every field, other keys,
other sessions, releases, and time moving on.

The model is API.md read literally, kept independently of the code: a request is refused
`invalid_request` for a malformed nonce, then `wrong_chain`, then `stale_timestamp` outside
`|now - timestamp| <= max_skew_ms`, then `bad_signature` unless the session's own key signed
exactly these fields for this address, then `replayed_nonce` while its (address, nonce) was
admitted within the last 2 × max_skew_ms ("remembered at least 2 × max_skew_ms"). After
2 × max_skew_ms + one bucket the guard must have forgotten; in between either answer is allowed.

What admission alone cannot promise, and the test therefore does not claim: that two *different*
signed requests sharing a nonce, with timestamps further apart than the window, are never both
admitted. That "forever" is the ledger's `UNIQUE(address, nonce)`. What admission does promise
(and the invariants check) is that the *same* signed request is admitted at most once, ever,
although the guard forgets: the window refuses it first.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

import hypothesis.strategies as st
import msgspec
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
from nacl.signing import SigningKey

from tap.admission import AdmissionRules, SessionKey, bet_payload
from tap.messages import BetRequest

CHAIN = 31337
OTHER_CHAIN = 1
SKEW = 30_000
T0 = 1_700_000_000_000
SIGNERS = {
    "0x" + "a1" * 20: SigningKey(bytes([1]) * 32),
    "0x" + "b2" * 20: SigningKey(bytes([2]) * 32),
}
STRANGER = SigningKey(bytes([3]) * 32)  # a key no session registered
SESSIONS = {a: SessionKey(bytes(k.verify_key).hex()) for a, k in SIGNERS.items()}
ADDRESSES = sorted(SIGNERS)
NONCE_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,64}")  # API.md, "Bets"
NONCE_ALPHABET = "abcXYZ019_-"

nonces = st.one_of(
    st.text(NONCE_ALPHABET, min_size=16, max_size=20),
    st.sampled_from(["short-nonce", "x" * 65, "a" * 15 + "|", "a" * 15 + ".", "a" * 64]),
)
offsets = st.one_of(
    st.sampled_from([-SKEW - 1, -SKEW, 0, SKEW, SKEW + 1]), st.integers(-3 * SKEW, 3 * SKEW)
)
steps = st.one_of(st.sampled_from([0, 1, SKEW, 2 * SKEW, 2 * SKEW + 1]), st.integers(0, 3 * SKEW))


@dataclass(frozen=True)
class Sent:
    """A request as a client would send it, and what the model knows of how it was signed."""

    session: str  # the address whose session submits it
    bet: BetRequest
    signer: str  # address whose key signed, or "stranger"
    signed: tuple[int, str, str, int, str, int, int]  # the fields the signer covered
    intact: bool  # the signature bytes are as the signer made them

    @property
    def pair(self) -> tuple[str, str]:
        return (self.session, self.bet.nonce)

    @property
    def wire(self) -> tuple[str, str, bytes]:
        """What identifies the request on the wire: session, nonce and the exact body."""
        return (self.session, self.bet.nonce, msgspec.json.encode(self.bet))


def sign(
    session: str,
    signer: str,
    *,
    cell_id: str,
    amount: int,
    nonce: str,
    ts: int,
    chain: int,
    mm: int,
) -> Sent:
    key = STRANGER if signer == "stranger" else SIGNERS[signer]
    payload = bet_payload(chain, session, cell_id, amount, nonce, ts, mm)
    bet = BetRequest(
        cell_id=cell_id,
        amount=amount,
        nonce=nonce,
        timestamp=ts,
        chain_id=chain,
        min_multiplier_bps=mm,
        signature=key.sign(payload).signature.hex(),
    )
    return Sent(session, bet, signer, (chain, session, cell_id, amount, nonce, ts, mm), True)


class AdmissionMachine(RuleBasedStateMachine):
    sent = Bundle("sent")

    @initialize()
    def start(self) -> None:
        self.now = T0
        self.rules = AdmissionRules(chain_id=CHAIN, max_skew_ms=SKEW)
        self.first_seen: dict[tuple[str, str], int] = {}  # model: pair → time admitted
        self.admissions: Counter[tuple[str, str, bytes]] = Counter()
        self.replays_caught = 0

    # ── the model ─────────────────────────────────────────────────────────────────────────────

    def expected(self, s: Sent) -> set[str | None]:
        b = s.bet
        if NONCE_SHAPE.fullmatch(b.nonce) is None:
            return {"invalid_request"}
        if b.chain_id != CHAIN:
            return {"wrong_chain"}
        if abs(self.now - b.timestamp) > SKEW:
            return {"stale_timestamp"}
        fields = (
            b.chain_id,
            s.session,
            b.cell_id,
            b.amount,
            b.nonce,
            b.timestamp,
            b.min_multiplier_bps,
        )
        if not (s.intact and s.signer == s.session and s.signed == fields):
            return {"bad_signature"}
        seen = self.first_seen.get(s.pair)
        if seen is None:
            return {None}
        age = self.now - seen
        if age <= 2 * SKEW:
            return {"replayed_nonce"}
        if age > 2 * SKEW + self.rules.replay.bucket_ms:
            return {None}
        return {None, "replayed_nonce"}

    def submit(self, s: Sent) -> None:
        allowed = self.expected(s)
        got = self.rules.check_bet(self.now, SESSIONS[s.session], s.session, s.bet)
        assert got in allowed, (got, allowed, s)
        if got is None:
            self.first_seen[s.pair] = self.now
            self.admissions[s.wire] += 1
        elif got == "replayed_nonce":
            self.replays_caught += 1

    # ── rules ─────────────────────────────────────────────────────────────────────────────────

    @rule(
        target=sent,
        session=st.sampled_from(ADDRESSES),
        nonce=nonces,
        offset=offsets,
        chain=st.sampled_from([CHAIN, CHAIN, CHAIN, OTHER_CHAIN]),
        cell_id=st.sampled_from(["BTC-USD:1:1", "BTC-USD:1:2", "ETH-USD:7:-3"]),
        amount=st.sampled_from([1, 100, 1_000_000]),
        mm=st.sampled_from([0, 10_500]),
    )
    def fresh(
        self, session: str, nonce: str, offset: int, chain: int, cell_id: str, amount: int, mm: int
    ) -> Sent:
        s = sign(
            session,
            session,
            cell_id=cell_id,
            amount=amount,
            nonce=nonce,
            ts=self.now + offset,
            chain=chain,
            mm=mm,
        )
        self.submit(s)
        return s

    @rule(s=sent)
    def replay_exactly(self, s: Sent) -> None:
        self.submit(s)

    @rule(target=sent, s=sent, offset=offsets, cell_id=st.sampled_from(["BTC-USD:9:9", "X:0:0"]))
    def reuse_nonce(self, s: Sent, offset: int, cell_id: str) -> Sent:
        """A new, properly signed request that reuses an earlier nonce."""
        again = sign(
            s.session,
            s.session,
            cell_id=cell_id,
            amount=s.bet.amount,
            nonce=s.bet.nonce,
            ts=self.now + offset,
            chain=CHAIN,
            mm=s.bet.min_multiplier_bps,
        )
        self.submit(again)
        return again

    @rule(
        s=sent,
        field=st.sampled_from(
            [
                "cell_id",
                "amount",
                "nonce",
                "timestamp",
                "chain_id",
                "min_multiplier_bps",
                "signature",
            ]
        ),
    )
    def tamper(self, s: Sent, field: str) -> None:
        b = s.bet
        if field == "signature":
            raw = bytearray(bytes.fromhex(b.signature))
            raw[len(raw) // 2] ^= 0x01
            self.submit(replace(s, bet=replace_bet(b, signature=raw.hex()), intact=False))
            return
        changed: dict[str, object] = {
            "cell_id": b.cell_id + "0",
            "amount": b.amount + 1,
            "nonce": b.nonce[:-1] + ("a" if b.nonce[-1:] != "a" else "b"),
            "timestamp": b.timestamp + 1,
            "chain_id": CHAIN if b.chain_id != CHAIN else OTHER_CHAIN,
            "min_multiplier_bps": b.min_multiplier_bps + 1,
        }
        tampered = replace(s, bet=replace_bet(b, **{field: changed[field]}))
        assert self.rules.check_bet(self.now, SESSIONS[s.session], s.session, tampered.bet) in (
            self.expected(tampered) - {None}
        ), "a tampered payload verified"

    @rule(s=sent, session=st.sampled_from(ADDRESSES))
    def other_session(self, s: Sent, session: str) -> None:
        """The same bytes submitted under another session (a stolen request)."""
        self.submit(replace(s, session=session))

    @rule(s=sent, signer=st.sampled_from([*ADDRESSES, "stranger"]))
    def signed_by_another_key(self, s: Sent, signer: str) -> None:
        b = s.bet
        self.submit(
            sign(
                s.session,
                signer,
                cell_id=b.cell_id,
                amount=b.amount,
                nonce=b.nonce,
                ts=b.timestamp,
                chain=b.chain_id,
                mm=b.min_multiplier_bps,
            )
        )

    @rule(s=sent)
    def release(self, s: Sent) -> None:
        """The writer never saw it (503 overloaded): the nonce may be used again."""
        self.rules.release(s.session, s.bet.nonce)
        self.first_seen.pop(s.pair, None)
        for wire in [w for w in self.admissions if w[:2] == s.pair]:
            del self.admissions[wire]

    @rule(dt=steps)
    def time_passes(self, dt: int) -> None:
        self.now += dt

    # ── invariants ────────────────────────────────────────────────────────────────────────────

    @invariant()
    def the_same_signed_request_is_admitted_at_most_once(self) -> None:
        assert all(n == 1 for n in self.admissions.values())

    @invariant()
    def the_guard_never_outgrows_what_was_admitted(self) -> None:
        assert len(self.rules.replay) <= len(self.first_seen)


def replace_bet(b: BetRequest, **change: object) -> BetRequest:
    fields = {f: getattr(b, f) for f in b.__struct_fields__}
    return BetRequest(**{**fields, **change})  # type: ignore[arg-type]


TestAdmission = AdmissionMachine.TestCase
