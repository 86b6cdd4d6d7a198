"""The SIGKILL campaign: kill a real `tap serve` at random moments under mixed load, restart it on
the same database, and prove from the recorded answers that nothing answered was lost or doubled.

    python -m loadgen killloop --kills 50 --seed S [--out summary.json]

One real server process (`python -m tap.runtime.cli serve`) on a real SQLite file in a private
directory, the simulated feed, 1-second columns (bets resolve during the run), mock deposits on,
a breaker that closes on the first fresh tick (`hysteresis_ms = 0`). Several players drive mixed
load against it: deposits, HTTP bets with and without `Prefer: wait`, WebSocket `place_bet`,
withdrawals, replays of old signed bodies (old nonces), and reads. Each *epoch* starts the
server, lets the players run until a seeded number of bet answers has come back, waits a seeded
few ms more (so the kill lands anywhere in a batch's write cycle) and SIGKILLs it; a seeded share
of the epochs are killed during start-up instead (migration, rebuild, first ticks). After every
kill the database is checked (with the server down) and `tap check` runs; after the last kill the
server is restarted once more, left to settle every bet whose window has passed, asked for each
player's balance, and stopped with SIGTERM, which must exit 0.

Every request is recorded *before* it is sent (outcome `unknown`) and its answer when it comes:
a request cut by a kill stays `unknown`, which is the only outcome the checker treats as "may or
may not have happened". `check_ledger` then compares the record with the database, reading it
with plain `sqlite3` (not tap's own readers, so the check does not share the code it checks):

- `lost_confirmed`: a bet answered 201 (or announced by WS `bet_confirmed`) is not in the
  database; `lost_accepted`: one answered 202 or WS `bet_ack` is not (both are losses: a 202 must
  end confirmed or rejected, issue 9). `confirmed_then_rejected`: answered 201 or
  `bet_confirmed`, stored rejected; `wrong_bet_id`: the stored bet of a nonce is not the one
  answered.
  `ws_mismatch`: a `bet_rejected` / `bet_resolved` frame disagrees with the stored bet.
- `refused_took_effect`: a nonce whose every answer was a refusal has a non-rejected bet (a
  rejected one is a writer's refusal, stored to burn the nonce); `unexplained_row`:
  a bet, deposit or withdrawal of one of our players that no request of ours can explain.
- `burned_nonce`: a bet answered 202 and lost to a kill, whose retry after the restart is refused
  as `replayed_nonce` (pointing at a bet that does not exist).
- `double_acceptance`: one nonce accepted twice (a replay that took effect); `double_effect`: a
  withdrawal nonce with two different entries, or a deposit stored twice.
- `double_settlement` / `bad_settlement`: per bet, exactly one stake row unless rejected and
  exactly one settlement row (payout or refund, of the amount its status implies) iff resolved.
- `quote_mismatch`: the stored multiplier is not the one the answer quoted.
- `lost_deposit` / `lost_withdrawal`: a 201 whose entry is missing or different.
- `balance_model`: per player, available and locked differ from deposits − withdrawals − stakes
  + settlements of the recorded items found in the database; `api_balance`: GET /api/balance on
  the restarted server differs from the database.
- `unsettled` (final check only): a bet still `confirmed` well after its window ended.
- `tap_check`: `tap check` failed; `replay_mismatch` (final): `tap replay` re-resolves every
  window of the run from the stored ticks and disagrees with a stored outcome; `server_5xx`: an
  answer 500 or another non-503 5xx; `server_died`: it exited before a kill; `restart_failed`:
  it did not come back on its database; `unclean_shutdown`: SIGTERM did not exit 0.

`tests/test_kill_loop.py` runs a short campaign in `make test` through `campaign()`, and shows
on corrupted copies of its database that each main check fires.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import trio
import trio_websocket
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

from loadgen.generator.h1 import HttpConnection, HttpError, Response
from loadgen.generator.signer import derive_secret
from loadgen.peers.targets import TAP_CLI, free_port, tap_environment, wait_ready
from tap import siwe
from tap.admission import bet_payload, withdrawal_payload

SYMBOL = "BTC-USD"
COLUMN_MS = 1000
COLUMNS_AHEAD = 6

# The server the campaign runs: short columns so bets resolve between kills, a breaker that closes
# on the first fresh tick (a restart is ready in ~1 s instead of 30), no rate limit in the way.
SERVER_OVERRIDES: dict[str, Any] = {
    "markets": [{"column_ms": COLUMN_MS, "columns_ahead": COLUMNS_AHEAD, "lockout_columns": 1}],
    "breaker": {"hysteresis_ms": 0},
    "feed": {"sim_tick_ms": 50},
    "pricing": {"refresh_ms": 100},
    "limits": {"rate_per_s": 100000.0, "burst": 100000},
    "payments": {"mock_deposits": True},
    "server": {"graceful_timeout_s": 2.0, "log_level": "warning"},
}

READY_WITHIN_S = 60.0  # a restart on a busy 2-core machine: interpreter, migration, first ticks
REQUEST_TIMEOUT_S = 10.0  # one request; longer counts as unanswered (`unknown`)
PROGRESS_WITHIN_S = 30.0  # an epoch that cannot reach its kill point by then is killed anyway
SETTLE_SLACK_MS = 3000  # final check: a bet still open this long after its window is `unsettled`


# ── what was sent and what came back ────────────────────────────────────────────────────────


@dataclass
class Send:
    """One request. `outcome`: unknown (no answer: cut by a kill, timed out), accepted (202 /
    bet_ack), confirmed (201), refused (an error answer). `key`: the nonce (bets, withdrawals)
    or str(amount) (deposits, whose amounts are unique per player)."""

    kind: str  # bet | withdrawal | deposit
    user: int
    key: str
    via: str  # http | http-wait | ws | replay-http | replay-http-wait
    epoch: int
    amount: int
    outcome: str = "unknown"
    code: str = ""
    bet_id: str | None = None
    multiplier_bps: int | None = None
    accepted_at: int | None = None  # from the answer: which request the stored bet is
    answered: float | None = None  # trio.current_time() of the answer
    entry_id: int | None = None


@dataclass
class Record:
    addresses: list[str]  # player index → lowercase address
    sends: list[Send] = field(default_factory=list)
    # bet_id → WS account frames about it: (type, status, payout, epoch)
    ws_events: dict[str, list[tuple[str, str, int | None, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    server_errors: list[str] = field(default_factory=list)  # 500s and other non-503 5xx
    read_errors: list[str] = field(default_factory=list)

    def add(self, send: Send) -> Send:
        self.sends.append(send)
        return send


Violation = tuple[str, str]  # (category, one human sentence)


# ── the checker ─────────────────────────────────────────────────────────────────────────────


def open_ro(db_path: Path) -> sqlite3.Connection:
    """Read-only, so checking never checkpoints or rewrites the WAL the next start recovers."""
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)


def expected_settlement(status: str, amount: int, multiplier_bps: int) -> tuple[str, int] | None:
    """The one settlement row (kind, amount) a bet in `status` has (API.md: payout = amount ×
    multiplier // 10000; a loss pays 0; void refunds the stake); None for an open bet."""
    if status == "won":
        return ("payout", amount * multiplier_bps // 10000)
    if status == "lost":
        return ("payout", 0)
    if status == "void":
        return ("refund", amount)
    return None


def check_ledger(
    db_path: Path, record: Record, *, settled_before_ms: int | None = None
) -> list[Violation]:
    """Every disagreement between the recorded answers and the database at `db_path`.

    `settled_before_ms`: also require every bet whose window ended before it to be resolved.
    """
    conn = open_ro(db_path)
    try:
        conn.execute("BEGIN")
        bets = conn.execute(
            "SELECT bet_id, address, nonce, status, amount, multiplier_bps, payout, t_end, "
            "accepted_at FROM bets"
        ).fetchall()
        entries = conn.execute(
            "SELECT entry_id, address, kind, amount, locked_delta, ref FROM ledger"
        ).fetchall()
        accounts = {
            a: (av, lk)
            for a, av, lk in conn.execute("SELECT address, available, locked FROM accounts")
        }
        conn.execute("COMMIT")
    finally:
        conn.close()
    return judge(record, bets, entries, accounts, settled_before_ms=settled_before_ms)


def judge(
    record: Record,
    bets: list[tuple[Any, ...]],
    entries: list[tuple[Any, ...]],
    accounts: dict[str, tuple[int, int]],
    *,
    settled_before_ms: int | None = None,
) -> list[Violation]:
    out: list[Violation] = []
    ours = {a: i for i, a in enumerate(record.addresses)}

    def v(category: str, text: str) -> None:
        out.append((category, text))

    by_nonce = {(b[1], b[2]): b for b in bets if b[1] in ours}
    rows_by_ref: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for e in entries:
        rows_by_ref[e[5]].append(e)

    # ── bets: group every send by (player, nonce) ──
    groups: dict[tuple[int, str], list[Send]] = defaultdict(list)
    for s in record.sends:
        if s.kind == "bet":
            groups[(s.user, s.key)].append(s)
    for (user, nonce), sends in groups.items():
        address = record.addresses[user]
        row = by_nonce.get((address, nonce))
        accepted = [s for s in sends if s.outcome in ("accepted", "confirmed")]
        ids = {s.bet_id for s in accepted if s.bet_id}
        ws = [e for i in ids | ({row[0]} if row else set()) for e in record.ws_events.get(i, [])]
        announced = any(t == "bet_confirmed" for t, *_ in ws)
        # The ledger holds at most one bet per nonce, made by the request whose accepted_at it
        # carries. Every other acceptance either came first and was lost (a replay then took
        # its place after a restart) or came after it: a replay accepted twice.
        stored_at = row[8] if row is not None else None
        kept = [s for s in accepted if s.accepted_at == stored_at]
        for s in accepted:
            if s in kept:
                continue
            if stored_at is None or (s.accepted_at or 0) < stored_at:
                where = (
                    "not in the ledger"
                    if row is None
                    else f"the ledger holds a later request's bet for its nonce (at {stored_at})"
                )
                v(
                    "lost_confirmed" if s.outcome == "confirmed" else "lost_accepted",
                    f"bet {s.bet_id} (nonce {nonce}, player {user}) answered {s.code} via "
                    f"{s.via} in epoch {s.epoch} (at {s.accepted_at}): {where}",
                )
            else:
                v(
                    "double_acceptance",
                    f"nonce {nonce} of player {user}: accepted again ({s.code} via {s.via} in "
                    f"epoch {s.epoch}) after the acceptance the ledger holds",
                )
        if row is None:
            if announced and not any(s.outcome == "confirmed" for s in accepted):
                v("lost_confirmed", f"bet {ids} (nonce {nonce}): bet_confirmed, not in the ledger")
            # A client that lost its 202 to a crash retries with the same nonce; if the server
            # then answers replayed_nonce, it points at a bet that does not exist: limbo.
            last = max((s.epoch for s in sends if s.outcome != "refused"), default=None)
            burned = [
                s
                for s in sends
                if s.code == "replayed_nonce" and last is not None and s.epoch > last
            ]
            if accepted and burned:
                v(
                    "burned_nonce",
                    f"nonce {nonce} of player {user}: accepted in epoch {accepted[0].epoch}, "
                    f"never stored, yet refused as replayed_nonce in epoch {burned[0].epoch}",
                )
            continue
        bet_id, _, _, status, amount, multiplier, payout, _t_end, _at = row
        if ids and ids != {bet_id}:
            v("wrong_bet_id", f"nonce {nonce}: answered bet ids {ids}, the ledger has {bet_id}")
        if status == "rejected" and (any(s.outcome == "confirmed" for s in kept) or announced):
            v("confirmed_then_rejected", f"bet {bet_id} answered confirmed, stored rejected")
        for s in kept:
            if s.multiplier_bps is not None and s.multiplier_bps != multiplier:
                v(
                    "quote_mismatch",
                    f"bet {bet_id}: answered {s.multiplier_bps} bps, stored {multiplier}",
                )
        # Every send was refused: only a writer refusal leaves a row, rejected (every bet
        # request waits for its commit, so the writer's refusal is the answer it gets).
        refused = not accepted and not any(s.outcome == "unknown" for s in sends)
        if refused and status != "rejected":
            v(
                "refused_took_effect",
                f"bet {bet_id} ({status}): every request with nonce "
                f"{nonce} was refused ({[s.code for s in sends]}) yet it is stored",
            )
        for kind, st, pay, epoch in ws:
            if kind == "bet_rejected" and status != "rejected":
                v("ws_mismatch", f"bet {bet_id}: bet_rejected (epoch {epoch}), stored {status}")
            if kind == "bet_resolved" and (st != status or pay != payout):
                v(
                    "ws_mismatch",
                    f"bet {bet_id}: bet_resolved {st} payout {pay} (epoch {epoch}), "
                    f"stored {status} payout {payout}",
                )

    # ── every stored bet of ours: explained, and its money rows exactly right ──
    model: dict[str, list[int]] = {a: [0, 0] for a in record.addresses}  # available, locked
    for bet_id, address, nonce, status, amount, multiplier, payout, t_end, _at in bets:
        if address not in ours:
            continue
        if (ours[address], nonce) not in groups:
            v(
                "unexplained_row",
                f"bet {bet_id} (nonce {nonce}) was never sent by player {ours[address]}",
            )
        rows = rows_by_ref.get(bet_id, [])
        stakes = [r for r in rows if r[2] == "stake"]
        settles = [r for r in rows if r[2] in ("payout", "refund")]
        want_stakes = 0 if status == "rejected" else 1
        want = expected_settlement(status, amount, multiplier)
        if len(settles) > 1:
            v(
                "double_settlement",
                f"bet {bet_id} ({status}): {len(settles)} settlement rows "
                f"{[(r[2], r[3]) for r in settles]}",
            )
        elif want is None and settles:
            v(
                "double_settlement",
                f"bet {bet_id} ({status}): settled by {settles[0][2]} "
                f"{settles[0][3]} but not resolved",
            )
        elif want is not None and (
            not settles or (settles[0][2], settles[0][3], settles[0][4]) != (*want, -amount)
        ):
            v(
                "bad_settlement",
                f"bet {bet_id} ({status}): expected {want} releasing {amount}, "
                f"found {[(r[2], r[3], r[4]) for r in settles]}",
            )
        if len(stakes) != want_stakes or any(r[3:5] != (-amount, amount) for r in stakes):
            v(
                "bad_settlement",
                f"bet {bet_id} ({status}): stake rows "
                f"{[(r[3], r[4]) for r in stakes]}, expected {want_stakes}× (-{amount}, +{amount})",
            )
        if want is not None and payout != want[1]:
            v("bad_settlement", f"bet {bet_id} ({status}): payout field {payout} != {want[1]}")
        if status != "rejected":
            model[address][0] -= amount
            if status == "confirmed":
                model[address][1] += amount
            elif want is not None:
                model[address][0] += want[1]
        if (
            settled_before_ms is not None
            and status == "confirmed"
            and t_end < settled_before_ms - SETTLE_SLACK_MS
        ):
            v(
                "unsettled",
                f"bet {bet_id}: window ended at {t_end}, still confirmed at {settled_before_ms}",
            )

    # ── deposits and withdrawals ──
    deposits: dict[tuple[int, int], list[Send]] = defaultdict(list)
    withdrawals: dict[tuple[int, str], list[Send]] = defaultdict(list)
    for s in record.sends:
        if s.kind == "deposit":
            deposits[(s.user, s.amount)].append(s)
        elif s.kind == "withdrawal":
            withdrawals[(s.user, s.key)].append(s)
    dep_rows: dict[tuple[int, int], list[tuple[Any, ...]]] = defaultdict(list)
    wd_rows: dict[tuple[int, str], list[tuple[Any, ...]]] = defaultdict(list)
    for e in entries:
        entry_id, address, kind, amount, _locked, ref = e
        if address not in ours:
            continue
        user = ours[address]
        if kind == "deposit":
            dep_rows[(user, amount)].append(e)
            model[address][0] += amount
        elif kind == "withdrawal":
            nonce = ref.removeprefix(f"wd-{address}-")
            wd_rows[(user, nonce)].append(e)
            model[address][0] += amount
        elif kind not in ("stake", "payout", "refund"):
            v("unexplained_row", f"entry {entry_id}: a {kind} on player {user}")
    for dkey, rows in dep_rows.items():
        sends = deposits.get(dkey, [])
        if len(rows) > 1:
            v("double_effect", f"deposit of {dkey[1]} by player {dkey[0]} stored {len(rows)}×")
        if not sends:
            v("unexplained_row", f"deposit entry {rows[0][0]} of {dkey[1]}: never sent")
        elif all(s.outcome == "refused" for s in sends):
            v("refused_took_effect", f"deposit of {dkey[1]} refused {sends[0].code}, yet stored")
        for s in sends:
            if s.outcome == "confirmed" and s.entry_id not in {r[0] for r in rows}:
                v(
                    "lost_deposit",
                    f"deposit entry {s.entry_id} ({dkey[1]}) answered 201, "
                    f"ledger has {[r[0] for r in rows]}",
                )
    for dkey, sends in deposits.items():
        if dkey not in dep_rows and any(s.outcome == "confirmed" for s in sends):
            v("lost_deposit", f"deposit of {dkey[1]} by player {dkey[0]} answered 201, not stored")
    for key, rows in wd_rows.items():
        sends = withdrawals.get(key, [])
        if not sends:
            v("unexplained_row", f"withdrawal entry {rows[0][0]} (nonce {key[1]}): never sent")
            continue
        if all(s.outcome == "refused" for s in sends):
            v(
                "refused_took_effect",
                f"withdrawal {key[1]} refused {[s.code for s in sends]}, yet stored",
            )
        if rows[0][3] != -sends[0].amount:
            v(
                "lost_withdrawal",
                f"withdrawal {key[1]}: stored {rows[0][3]}, sent {sends[0].amount}",
            )
    for key, sends in withdrawals.items():
        answered = {s.entry_id for s in sends if s.outcome == "confirmed"}
        if len(answered) > 1:
            v("double_effect", f"withdrawal nonce {key[1]} answered with entries {answered}")
        stored = {r[0] for r in wd_rows.get(key, [])}
        if answered and not answered <= stored:
            v(
                "lost_withdrawal",
                f"withdrawal {key[1]} answered entry {answered}, ledger has {stored or 'nothing'}",
            )

    # ── balances: the model of the recorded items found in the database ──
    for address, (available, locked) in model.items():
        account = accounts.get(address)
        if account is None:
            if available or locked:
                v(
                    "balance_model",
                    f"player {ours[address]}: no account, model {available}/{locked}",
                )
            continue
        if (available, locked) != account:
            v(
                "balance_model",
                f"player {ours[address]}: stored available/locked {account}, "
                f"model {available}/{locked}",
            )

    for text in record.server_errors:
        v("server_5xx", text)
    for text in record.read_errors:
        v("read_mismatch", text)
    return out


# ── one player ──────────────────────────────────────────────────────────────────────────────


class Player:
    """A wallet and its Ed25519 session key, fixed by the run seed; logs in again each epoch
    (sessions may not outlive a process) and keeps its signed bodies for replays."""

    def __init__(self, index: int, seed: bytes, *, poor: bool) -> None:
        self.index = index
        self.wallet = Account.from_key(derive_secret(seed, b"killloop-wallet", index))
        self.address = self.wallet.address.lower()
        self.key = SigningKey(derive_secret(seed, b"killloop-session", index))
        self.poor = poor  # funds run short: insufficient_funds at admission and at the writer
        self.token = ""
        self.chain_id = 0
        self.deposits = 0
        self.bet_bodies: list[dict[str, Any]] = []
        self.withdrawal_bodies: list[dict[str, Any]] = []
        self.confirmed_bets: list[str] = []  # bet ids answered 201, for reads
        self.cells_used: set[str] = set()

    @property
    def auth(self) -> bytes:
        return f"Authorization: Bearer {self.token}\r\n".encode()

    def sign_bet(self, cell_id: str, amount: int, nonce: str) -> dict[str, Any]:
        ts = int(time.time() * 1000)
        payload = bet_payload(self.chain_id, self.address, cell_id, amount, nonce, ts, 0)
        return {
            "cell_id": cell_id,
            "amount": amount,
            "nonce": nonce,
            "timestamp": ts,
            "chain_id": self.chain_id,
            "min_multiplier_bps": 0,
            "signature": self.key.sign(payload).signature.hex(),
        }

    def sign_withdrawal(self, amount: int, nonce: str) -> dict[str, Any]:
        ts = int(time.time() * 1000)
        payload = withdrawal_payload(self.chain_id, self.address, amount, nonce, ts)
        return {
            "amount": amount,
            "nonce": nonce,
            "timestamp": ts,
            "chain_id": self.chain_id,
            "signature": self.key.sign(payload).signature.hex(),
        }


def _json(resp: Response) -> Any:
    try:
        return json.loads(resp.body)
    except ValueError:
        return {}


def _error_code(resp: Response) -> str:
    body = _json(resp)
    err = body.get("error") if isinstance(body, dict) else None
    return str(err.get("code")) if isinstance(err, dict) else str(resp.status)


WS_GONE = (
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
)


@dataclass
class WsLink:
    ws: trio_websocket.WebSocketConnection | None = None
    waiters: dict[str, tuple[Send, trio.Event]] = field(default_factory=dict)


# ── one epoch: a server's life from start to SIGKILL ────────────────────────────────────────


@dataclass
class Options:
    kills: int = 50
    seed: str = "killloop"
    players: int = 4
    workers_per_player: int = 2
    data_dir: Path | None = None
    kill_after: tuple[int, int] = (5, 60)  # answered bets before a kill, per epoch
    kill_jitter_s: float = 0.05  # …plus up to this much
    early_kill_share: float = 0.1  # share of epochs killed during start-up instead
    # Share of epochs that run this many seconds (uniform) before the kill instead: long
    # enough for bets placed in them to resolve live, so kills also land amid settlements.
    long_epochs: tuple[float, float, float] = (0.4, 2.0, 8.0)
    tap_check_each: bool = True  # `tap check` after every kill, not only at the end
    redis_url: str | None = None  # admission's hot state in Redis (else in memory)
    progress: Callable[[str], None] | None = None


class Campaign:
    def __init__(self, opts: Options, data_dir: Path) -> None:
        self.opts = opts
        self.data_dir = data_dir
        self.db = data_dir.resolve() / "tap.db"  # where tap_environment points the server
        seed = opts.seed.encode()
        self.rng = random.Random(opts.seed)
        self.players = [Player(i, seed, poor=(i == 0)) for i in range(opts.players)]
        self.record = Record([p.address for p in self.players])
        self.violations: list[tuple[int, str, str]] = []  # (epoch, category, text)
        self._seen: set[tuple[str, str]] = set()  # each finding once, not at every later check
        self.survived = 0  # kills after which the server came back ready
        self.ready_s: list[float] = []  # spawn → /healthz pass (bets taken), per start
        self.epoch = 0
        self.kills = 0
        self.early_kills = 0
        self.tap_checks = 0
        self.stalled_epochs = 0
        self.answered_bets = 0  # in the current epoch
        self.stopping = False  # set just before a kill: nothing new is sent
        self.cells: list[str] = []
        self.log = data_dir / "tap.log"
        self.overrides = dict(SERVER_OVERRIDES)
        self.redis_prefix = f"killloop-{os.getpid()}-{secrets.token_hex(4)}"
        if opts.redis_url is not None:
            self.overrides["redis"] = {"url": opts.redis_url, "prefix": self.redis_prefix}
        self.spawned_at = 0.0
        self.replayed: list[str] = []  # `tap replay`'s last line
        self.killed_at: dict[int, float] = {}  # epoch → trio.current_time() of its SIGKILL

    # ── the server ──

    def env(self, port: int) -> dict[str, str]:
        return {**os.environ, **tap_environment(port, self.data_dir, self.overrides)}

    def drop_redis_keys(self) -> None:
        """The run's keys on the shared Redis (its own prefix): nothing is left behind."""
        if self.opts.redis_url is None:
            return
        client = redis.Redis.from_url(self.opts.redis_url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{self.redis_prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
        finally:
            client.close()

    def tap_check(self) -> None:
        self.tap_checks += 1
        r = subprocess.run(
            [sys.executable, "-m", TAP_CLI, "check"],
            env=self.env(0),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if r.returncode != 0:
            self.violate("tap_check", (r.stdout + r.stderr).strip()[-2000:])

    def violate(self, category: str, text: str) -> None:
        if (category, text) not in self._seen:
            self._seen.add((category, text))
            self.violations.append((self.epoch, category, text))

    def say(self, text: str) -> None:
        if self.opts.progress is not None:
            self.opts.progress(text)

    async def spawn(self, port: int) -> trio.Process:
        self.spawned_at = time.monotonic()
        with self.log.open("ab") as out:
            return await trio.lowlevel.open_process(
                [sys.executable, "-m", TAP_CLI, "serve"],
                env=self.env(port),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )

    async def check_after_kill(self) -> None:
        for category, text in check_ledger(self.db, self.record):
            self.violate(category, text)
        self.record.server_errors.clear()  # reported once, by the check that saw them
        self.record.read_errors.clear()
        if self.opts.tap_check_each:
            self.tap_check()

    async def run(self) -> None:
        subprocess.run(  # noqa: ASYNC221 - once, before anything else runs
            [sys.executable, "-m", TAP_CLI, "migrate"],
            env=self.env(0),
            check=True,
            capture_output=True,
        )
        for _ in range(self.opts.kills):
            early = self.epoch > 0 and self.rng.random() < self.opts.early_kill_share
            ok = await self.one_epoch(early=early)
            await self.check_after_kill()
            self.say(f"kill {self.kills}/{self.opts.kills}: {len(self.violations)} violations")
            self.epoch += 1
            if not ok:
                return
        await self.final_epoch()

    async def wait_ready(self, port: int, proc: trio.Process) -> None:
        """Until the server takes bets (`/healthz` passes: breaker closed), not only serves."""
        await wait_ready(
            "127.0.0.1",
            port,
            proc,
            self.log,
            path="/healthz",
            within=READY_WITHIN_S,
            want_status="pass",
        )

    async def one_epoch(self, *, early: bool) -> bool:
        """Start, load, SIGKILL. False when the server did not come back (campaign over)."""
        port = free_port()
        proc = await self.spawn(port)
        try:
            if early:
                await trio.sleep(self.rng.uniform(0.0, 1.5))
                self.early_kills += 1
                return await self.kill(proc)
            try:
                await self.wait_ready(port, proc)
            except Exception as e:
                self.violate("restart_failed", f"epoch {self.epoch}: {e}")
                return False
            self.survived = self.kills
            self.ready_s.append(time.monotonic() - self.spawned_at)
            self.answered_bets = 0
            self.stopping = False
            kill_after = self.rng.randint(*self.opts.kill_after)
            share, lo_s, hi_s = self.opts.long_epochs
            run_for = self.rng.uniform(lo_s, hi_s) if self.rng.random() < share else 0.0
            jitter = self.rng.uniform(0.0, self.opts.kill_jitter_s)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.load, port)
                with trio.move_on_after(PROGRESS_WITHIN_S) as scope:
                    while self.answered_bets < kill_after:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                if scope.cancelled_caught:
                    self.stalled_epochs += 1
                await trio.sleep(run_for)
                await trio.sleep(jitter)
                self.stopping = True
                ok = await self.kill(proc)
                nursery.cancel_scope.cancel()
            return ok
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()

    async def kill(self, proc: trio.Process) -> bool:
        if proc.returncode is not None:  # it died on its own: a crash, whatever the load was
            self.violate(
                "server_died", f"epoch {self.epoch}: exited {proc.returncode} before the kill"
            )
        else:
            proc.send_signal(signal.SIGKILL)
            self.killed_at[self.epoch] = trio.current_time()
        with trio.fail_after(30):
            await proc.wait()
        self.kills += 1
        return True

    # ── the load ──

    async def load(self, port: int) -> None:
        async with trio.open_nursery() as nursery:
            conn = HttpConnection("127.0.0.1", port)
            await self.refresh_cells(conn)
            nursery.start_soon(self.grid_watcher, port)
            for player in self.players:
                nursery.start_soon(self.player_session, player, port)

    async def grid_watcher(self, port: int) -> None:
        conn = HttpConnection("127.0.0.1", port)
        while True:
            await trio.sleep(0.25)
            await self.refresh_cells(conn)

    async def refresh_cells(self, conn: HttpConnection) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                resp = await conn.request("GET", f"/api/grid/{SYMBOL}")
        except (OSError, HttpError, trio.TooSlowError, trio.BrokenResourceError):
            conn.close()
            return
        if resp.status != 200:
            return
        grid = _json(resp)
        # A column of margin: the lockout moves on while a bet is in flight.
        cutoff = grid.get("as_of", 0) + COLUMN_MS
        self.cells = [
            c["cell_id"]
            for c in grid.get("cells", [])
            if c.get("placeable") and c.get("t_start", 0) >= cutoff
        ] or self.cells

    async def request(
        self,
        conn: HttpConnection,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: bytes = b"",
    ) -> Response | None:
        data = json.dumps(body).encode() if body is not None else b""
        if body is not None:
            headers += b"Content-Type: application/json\r\n"
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                resp = await conn.request(method, path, data, headers)
        except (OSError, HttpError, trio.TooSlowError, trio.BrokenResourceError):
            conn.close()
            return None
        if resp.status >= 500 and resp.status != 503:
            self.record.server_errors.append(
                f"epoch {self.epoch}: {method} {path} → {resp.status} {resp.body[:200]!r}"
            )
        return resp

    async def login(self, player: Player, conn: HttpConnection) -> bool:
        resp = await self.request(
            conn, "POST", "/api/auth/challenge", {"address": player.wallet.address}
        )
        if resp is None or resp.status != 200:
            return False
        ch = _json(resp)
        player.chain_id = ch["chain_id"]
        text = siwe.login_message(
            domain=ch["domain"],
            address=player.wallet.address,
            uri=ch["uri"],
            chain_id=ch["chain_id"],
            nonce=ch["nonce"],
            issued_at_ms=siwe.iso_to_ms(ch["issued_at"]),
            expiration_ms=siwe.iso_to_ms(ch["expiration_time"]),
            session_key_hex=bytes(player.key.verify_key).hex(),
        )
        sig = "0x" + bytes(player.wallet.sign_message(encode_defunct(text=text)).signature).hex()
        resp = await self.request(
            conn, "POST", "/api/auth/login", {"message": text, "signature": sig}
        )
        if resp is None or resp.status != 200:
            return False
        player.token = _json(resp)["token"]
        return True

    async def player_session(self, player: Player, port: int) -> None:
        conn = HttpConnection("127.0.0.1", port)
        if not await self.login(player, conn):
            return
        if player.deposits == 0:
            await self.deposit(player, conn, 5_000_000 if player.poor else 500_000_000)
        link = WsLink()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.ws_link, player, port, link)
            for w in range(self.opts.workers_per_player):
                rng = random.Random(f"{self.opts.seed}|{self.epoch}|{player.index}|{w}")
                nursery.start_soon(self.worker, player, port, link, rng)

    async def ws_link(self, player: Player, port: int, link: WsLink) -> None:
        """The player's WebSocket: `place_bet` answers and the account frames. When it dies
        (the kill), bets still waiting for an answer stay `unknown` and the workers go on over
        HTTP until the epoch is cancelled."""
        try:
            async with trio_websocket.open_websocket_url(
                f"ws://127.0.0.1:{port}/ws", connect_timeout=5, disconnect_timeout=1
            ) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": player.token}))
                await ws.send_message(json.dumps({"type": "subscribe", "channels": ["account"]}))
                link.ws = ws
                while True:
                    self.on_frame(json.loads(await ws.get_message()), link)
        except WS_GONE:
            pass
        finally:
            link.ws = None
            for _send, done in link.waiters.values():
                done.set()
            link.waiters.clear()

    def on_frame(self, frame: dict[str, Any], link: WsLink) -> None:
        kind = frame.get("type")
        if kind in ("bet_ack", "error") and frame.get("req_id") in link.waiters:
            send, done = link.waiters.pop(frame["req_id"])
            if kind == "bet_ack":
                self.bet_answered(send, "accepted", "bet_ack", frame["bet"])
            else:
                self.bet_answered(send, "refused", frame["error"]["code"], None)
            done.set()
        elif kind in ("bet_confirmed", "bet_rejected", "bet_resolved"):
            bet = frame["bet"]
            self.record.ws_events[bet["bet_id"]].append(
                (kind, bet["status"], bet.get("payout"), self.epoch)
            )

    def bet_answered(self, send: Send, outcome: str, code: str, bet: dict[str, Any] | None) -> None:
        send.outcome, send.code = outcome, code
        send.answered = trio.current_time()
        if bet is not None:
            send.bet_id = bet.get("bet_id")
            send.multiplier_bps = bet.get("multiplier_bps")
            send.accepted_at = bet.get("accepted_at")
        self.answered_bets += 1

    def nonce(self, rng: random.Random, player: Player) -> str:
        return f"k{self.epoch:03d}p{player.index}{rng.getrandbits(64):016x}"

    async def worker(self, player: Player, port: int, link: WsLink, rng: random.Random) -> None:
        conn = HttpConnection("127.0.0.1", port)
        ops: list[tuple[str, int]] = [
            ("bet", 30),
            ("bet-wait", 15),
            ("bet-ws", 20),
            ("deposit", 5),
            ("withdraw", 6),
            ("replay-bet", 8),
            ("replay-withdraw", 3),
            ("read", 13),
        ]
        names, weights = zip(*ops, strict=True)
        while not self.stopping:
            op = rng.choices(names, weights)[0]
            if op in ("bet", "bet-wait", "bet-ws") and self.cells:
                # Mostly a cell this player has not bet on (one bet per cell: the rest would all
                # be duplicate_cell_bet refusals), sometimes any (the duplicate path is exercised).
                fresh = [c for c in self.cells if c not in player.cells_used]
                cell = rng.choice(fresh if fresh and rng.random() < 0.9 else self.cells)
                player.cells_used.add(cell)
                body = player.sign_bet(cell, rng.randint(100, 2000) * 1000, self.nonce(rng, player))
                player.bet_bodies.append(body)
                del player.bet_bodies[:-300]
                if op == "bet-ws" and link.ws is not None:
                    await self.bet_ws(player, link, body)
                else:
                    await self.bet_http(player, conn, body, wait=op == "bet-wait", replay=False)
            elif op == "replay-bet" and player.bet_bodies:
                await self.bet_http(
                    player,
                    conn,
                    rng.choice(player.bet_bodies),
                    wait=rng.random() < 0.5,
                    replay=True,
                )
            elif op == "deposit":
                await self.deposit(player, conn, rng.randint(2, 20) * 1_000_000)
            elif op == "withdraw":
                body = player.sign_withdrawal(rng.randint(1, 50) * 100_000, self.nonce(rng, player))
                player.withdrawal_bodies.append(body)
                await self.withdraw(player, conn, body)
            elif op == "replay-withdraw" and player.withdrawal_bodies:
                await self.withdraw(player, conn, rng.choice(player.withdrawal_bodies))
            elif op == "read":
                await self.read(player, conn, rng)
            else:
                await trio.sleep(0.01)  # nothing to bet on or replay yet

    async def bet_http(
        self,
        player: Player,
        conn: HttpConnection,
        body: dict[str, Any],
        *,
        wait: bool,
        replay: bool,
    ) -> None:
        via = ("replay-" if replay else "") + ("http-wait" if wait else "http")
        send = self.record.add(
            Send("bet", player.index, body["nonce"], via, self.epoch, body["amount"])
        )
        headers = player.auth + (b"Prefer: wait=2\r\n" if wait else b"")
        resp = await self.request(conn, "POST", "/api/bets", body, headers)
        if resp is None:
            return
        if resp.status == 202:
            self.bet_answered(send, "accepted", "202", _json(resp))
        elif resp.status == 201:
            bet = _json(resp)
            self.bet_answered(send, "confirmed", "201", bet)
            player.confirmed_bets.append(bet["bet_id"])
        elif resp.status < 500 or resp.status == 503:
            self.bet_answered(send, "refused", _error_code(resp), None)

    async def bet_ws(self, player: Player, link: WsLink, body: dict[str, Any]) -> None:
        assert link.ws is not None
        send = self.record.add(
            Send("bet", player.index, body["nonce"], "ws", self.epoch, body["amount"])
        )
        req_id = body["nonce"][-16:]
        done = trio.Event()
        link.waiters[req_id] = (send, done)
        try:
            await link.ws.send_message(json.dumps({"type": "place_bet", "req_id": req_id, **body}))
        except WS_GONE:
            link.waiters.pop(req_id, None)
            return
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            await done.wait()
        link.waiters.pop(req_id, None)

    async def deposit(self, player: Player, conn: HttpConnection, base: int) -> None:
        player.deposits += 1
        amount = base + player.deposits  # unique per player: the ledger row names its request
        send = self.record.add(
            Send("deposit", player.index, str(amount), "http", self.epoch, amount)
        )
        resp = await self.request(conn, "POST", "/api/deposits", {"amount": amount}, player.auth)
        if resp is None:
            return
        if resp.status == 201:
            send.outcome, send.code = "confirmed", "201"
            send.entry_id = _json(resp)["entry"]["entry_id"]
        elif resp.status < 500 or _error_code(resp) == "overloaded":
            send.outcome, send.code = "refused", _error_code(resp)
        # other 5xx (dependency_unavailable: "may still land") stay unknown

    async def withdraw(self, player: Player, conn: HttpConnection, body: dict[str, Any]) -> None:
        send = self.record.add(
            Send("withdrawal", player.index, body["nonce"], "http", self.epoch, body["amount"])
        )
        resp = await self.request(conn, "POST", "/api/withdrawals", body, player.auth)
        if resp is None:
            return
        if resp.status == 201:
            send.outcome, send.code = "confirmed", "201"
            send.entry_id = _json(resp)["entry"]["entry_id"]
        elif resp.status < 500 or _error_code(resp) == "overloaded":
            send.outcome, send.code = "refused", _error_code(resp)

    async def read(self, player: Player, conn: HttpConnection, rng: random.Random) -> None:
        which = rng.randrange(4)
        if which == 0 and player.confirmed_bets:
            bet_id = rng.choice(player.confirmed_bets)
            resp = await self.request(conn, "GET", f"/api/bets/{bet_id}", headers=player.auth)
            if resp is not None and resp.status in (200, 404):
                status = _json(resp).get("status") if resp.status == 200 else "404"
                if status not in ("confirmed", "won", "lost", "void"):
                    self.record.read_errors.append(
                        f"epoch {self.epoch}: GET bet {bet_id} (answered 201) → {status}"
                    )
        elif which == 1:
            await self.request(conn, "GET", "/api/balance", headers=player.auth)
        elif which == 2:
            await self.request(conn, "GET", "/api/ledger?limit=20", headers=player.auth)
        else:
            await self.request(conn, "GET", "/api/bets?limit=20", headers=player.auth)

    # ── the end: one more start, settle, compare balances, SIGTERM ──

    async def final_epoch(self) -> None:
        port = free_port()
        proc = await self.spawn(port)
        try:
            try:
                await self.wait_ready(port, proc)
            except Exception as e:
                self.violate("restart_failed", f"final start: {e}")
                return
            self.survived = self.kills
            self.ready_s.append(time.monotonic() - self.spawned_at)
            await self.wait_settled()
            conn = HttpConnection("127.0.0.1", port)
            accounts = self.read_accounts()
            for player in self.players:
                if not await self.login(player, conn):
                    self.violate("api_balance", f"player {player.index}: login failed")
                    continue
                resp = await self.request(conn, "GET", "/api/balance", headers=player.auth)
                got = _json(resp) if resp is not None and resp.status == 200 else {}
                want = accounts.get(player.address, (0, 0))
                if (got.get("available"), got.get("locked")) != want:
                    self.violate(
                        "api_balance",
                        f"player {player.index}: GET /api/balance "
                        f"{got or (resp and resp.status)}, database {want}",
                    )
            conn.close()
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await proc.wait()
            if proc.returncode != 0:
                self.violate("unclean_shutdown", f"SIGTERM → exit {proc.returncode}")
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        for category, text in check_ledger(
            self.db, self.record, settled_before_ms=self.settle_deadline
        ):
            self.violate(category, text)
        self.tap_check()
        self.tap_replay()

    def tap_replay(self, db: Path | None = None) -> bool:
        """`tap replay` over every window of the run: each stored outcome follows from the
        stored ticks, whichever process (before or after which kill) decided it. `db`: another
        file than the campaign's (a test's corrupted copy). False on a mismatch."""
        db = db or self.db
        conn = open_ro(db)
        try:
            start, end = conn.execute("SELECT min(t_start), max(t_end) FROM bets").fetchone()
        finally:
            conn.close()
        if start is None:
            return True
        r = subprocess.run(
            [sys.executable, "-m", TAP_CLI, "replay", "--from", str(start), "--to", str(end)],
            env={**self.env(0), "TAP__SERVER__DB_PATH": json.dumps(str(db))},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.replayed = r.stdout.strip().splitlines()[-1:] or [r.stderr.strip()[-300:]]
        if r.returncode != 0:
            self.violate("replay_mismatch", (r.stdout + r.stderr).strip()[-2000:])
        return r.returncode == 0

    def read_accounts(self) -> dict[str, tuple[int, int]]:
        conn = open_ro(self.db)
        try:
            return {
                a: (av, lk)
                for a, av, lk in conn.execute("SELECT address, available, locked FROM accounts")
            }
        finally:
            conn.close()

    settle_deadline: int | None = None

    async def wait_settled(self) -> None:
        """Until every bet is resolved: each was placed before this start, so each window ends
        within `COLUMNS_AHEAD` columns. Bounded: a resolver that never settles a bet shows
        up as `unsettled` in the final check, not as a hang."""
        latest = time.time() + (COLUMNS_AHEAD + 2) * COLUMN_MS / 1000
        with trio.move_on_after(latest - time.time() + 15):
            while True:
                conn = open_ro(self.db)
                try:
                    open_bets = conn.execute(
                        "SELECT count(*) FROM bets WHERE status = 'confirmed'"
                    ).fetchone()[0]
                finally:
                    conn.close()
                if open_bets == 0:  # no load now: nothing new can open
                    break
                await trio.sleep(0.25)
        self.settle_deadline = int(time.time() * 1000)

    # ── the report ──

    def lost_answer_ages_ms(self) -> list[float]:
        conn = open_ro(self.db)
        try:
            stored = set(conn.execute("SELECT address, nonce, accepted_at FROM bets"))
        finally:
            conn.close()
        return [
            (self.killed_at[s.epoch] - s.answered) * 1000
            for s in self.record.sends
            if s.kind == "bet"
            and s.outcome == "accepted"
            and s.answered is not None
            and s.epoch in self.killed_at
            and (self.record.addresses[s.user], s.key, s.accepted_at) not in stored
        ]

    def summary(self, duration_s: float) -> dict[str, Any]:
        outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        for s in self.record.sends:
            outcomes[s.kind][s.outcome] += 1
            outcomes[s.kind + "_via"][s.via] += 1
            if s.outcome == "refused":
                outcomes[s.kind + "_refused"][s.code] += 1
        conn = open_ro(self.db)
        try:
            statuses = dict(conn.execute("SELECT status, count(*) FROM bets GROUP BY status"))
        finally:
            conn.close()
        kinds: Counter[str] = Counter()
        lost_ms = self.lost_answer_ages_ms()
        answered = sum(
            1
            for s in self.record.sends
            if s.kind == "bet" and s.outcome in ("accepted", "confirmed")
        )
        return {
            "seed": self.opts.seed,
            "hot_state": "redis" if self.opts.redis_url else "memory",
            "kills": self.kills,
            "early_kills": self.early_kills,
            "kills_survived": self.survived,
            "duration_s": round(duration_s, 1),
            "bets_answered_202_or_201": answered,
            "answers_checked": sum(
                1 for s in self.record.sends if s.outcome in ("accepted", "confirmed")
            ),
            "requests": {k: dict(v) for k, v in sorted(outcomes.items())},
            "ws_account_frames": sum(len(v) for v in self.record.ws_events.values()),
            "bets_in_ledger": statuses,
            "tap_check_runs": self.tap_checks,
            "tap_replay": self.replayed[0] if self.replayed else None,
            # How long before its epoch's SIGKILL each lost 202 / bet_ack had been answered.
            "lost_202_answered_ms_before_kill": {
                "count": len(lost_ms),
                "median": round(statistics.median(lost_ms), 1) if lost_ms else None,
                "max": round(max(lost_ms), 1) if lost_ms else None,
            },
            "restart_to_ready_s": {
                "median": round(statistics.median(self.ready_s), 2) if self.ready_s else None,
                "max": round(max(self.ready_s), 2) if self.ready_s else None,
            },
            "stalled_epochs": self.stalled_epochs,
            "violation_counts": dict(Counter(c for _, c, _ in self.violations)),
            # Up to 20 of each kind: one plentiful kind must not hide a rare one.
            "violations": [
                {"epoch": e, "category": c, "detail": t}
                for e, c, t in self.violations
                if kinds.update([c]) or kinds[c] <= 20
            ],
            "data_dir": str(self.data_dir),
            "ok": not self.violations,
        }


async def campaign(opts: Options) -> tuple[dict[str, Any], Campaign]:
    """Run the whole campaign; return its JSON summary and the campaign (record, database)."""
    data_dir = opts.data_dir
    if data_dir is None:
        root = Path("data") / "killloop"  # the project's disk: fsync costs must be real ones
        root.mkdir(parents=True, exist_ok=True)
        data_dir = root / time.strftime("%Y%m%d-%H%M%S")
    data_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"tap.db{suffix}").unlink(missing_ok=True)
    run = Campaign(opts, data_dir)
    started = time.monotonic()
    try:
        await run.run()
    finally:
        await trio.to_thread.run_sync(run.drop_redis_keys)
    return run.summary(time.monotonic() - started), run
