"""The virtual users' keys, and the worker process that signs with them off the hot loop.

It decides the identities (an eth-account wallet and an Ed25519 session key per virtual user,
derived from a run seed so a run can be repeated) and where signing happens: in one worker
process, in batches. A login signature (EIP-191 over an EIP-4361 message) costs about 3 ms of CPU
and a bet signature about 20 µs; at thousands of bets a second that is a visible share of the
generator's one core, so the main process only builds payloads and ships them over in batches.
It leaves to `loadgen.presign` which bets to sign and when.

The worker is a `ProcessPoolExecutor` of one process started with `spawn` (forking a process
that runs trio and threads is not safe). Calls wait in a trio worker thread, so the event loop
keeps dispatching while a batch is signed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
import trio

T = TypeVar("T")


class Identity(msgspec.Struct, frozen=True):
    index: int
    address: str  # EIP-55 checksummed, as SIWE wants it
    session_key: str  # 64 hex: the Ed25519 public key the SIWE resource line registers


class Challenge(msgspec.Struct, frozen=True):
    """The fields of `POST /api/auth/challenge`'s answer, for one user."""

    index: int
    domain: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: str
    expiration_time: str | None


def derive_secret(seed: bytes, purpose: bytes, index: int) -> bytes:
    return hashlib.sha256(seed + b"|" + purpose + b"|" + index.to_bytes(8, "big")).digest()


# ── worker side: module state lives in the worker process only ──────────────────────────────

_wallets: list[Any] = []
_sessions: list[Any] = []


def _init_worker(seed: bytes, count: int) -> None:
    from eth_account import Account
    from nacl.signing import SigningKey

    _wallets[:] = [Account.from_key(derive_secret(seed, b"wallet", i)) for i in range(count)]
    _sessions[:] = [SigningKey(derive_secret(seed, b"session", i)) for i in range(count)]


def _identities() -> list[Identity]:
    return [
        Identity(i, w.address, bytes(s.verify_key).hex())
        for i, (w, s) in enumerate(zip(_wallets, _sessions, strict=True))
    ]


def _sign_logins(challenges: list[Challenge]) -> list[tuple[str, str]]:
    """(EIP-4361 message, 0x-hex EIP-191 signature) per challenge."""
    from eth_account.messages import encode_defunct

    from tap.siwe import iso_to_ms, login_message

    out = []
    for ch in challenges:
        wallet = _wallets[ch.index]
        text = login_message(
            domain=ch.domain,
            address=wallet.address,
            uri=ch.uri,
            chain_id=ch.chain_id,
            nonce=ch.nonce,
            issued_at_ms=iso_to_ms(ch.issued_at),
            expiration_ms=None if ch.expiration_time is None else iso_to_ms(ch.expiration_time),
            session_key_hex=bytes(_sessions[ch.index].verify_key).hex(),
        )
        signed = wallet.sign_message(encode_defunct(text=text))
        out.append((text, "0x" + bytes(signed.signature).hex()))
    return out


def _sign_payloads(items: list[tuple[int, bytes]]) -> list[str]:
    """128-hex Ed25519 signatures of (user index, payload) pairs, in order."""
    sessions = _sessions
    return [sessions[i].sign(payload).signature.hex() for i, payload in items]


# ── main-process side ───────────────────────────────────────────────────────────────────────


class Signer:
    """Handle on the signing worker: `async with Signer(n, seed) as s: await s.identities()`."""

    def __init__(self, count: int, seed: bytes) -> None:
        self.count = count
        self.seed = seed
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.signed_bets = 0

    async def __aenter__(self) -> Signer:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.seed, self.count),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def pid(self) -> int | None:
        """The worker's pid once it runs (for CPU accounting)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return next(iter(procs), None)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._pool is not None, "use `async with Signer(...)`"
        future = self._pool.submit(fn, *args)
        try:
            return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        finally:
            future.cancel()

    async def identities(self) -> list[Identity]:
        return await self._call(_identities)

    async def sign_logins(self, challenges: Sequence[Challenge]) -> list[tuple[str, str]]:
        return await self._call(_sign_logins, list(challenges))

    async def sign_payloads(self, items: Sequence[tuple[int, bytes]]) -> list[str]:
        out = await self._call(_sign_payloads, list(items))
        self.signed_bets += len(out)
        return out
