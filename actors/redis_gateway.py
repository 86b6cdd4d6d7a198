"""The one actor that talks to Redis: it batches every waiting request into one pipeline per round
trip, runs it in a worker thread, and answers each caller within its deadline or not at all.

It decides how Redis is reached: one connection at a time, explicit timeouts, which failures are
retried, when a connection is given up, and when Redis counts as "back". It leaves to its callers
what the commands mean (`tap/store/redis_hot.py` holds the keys and the Lua scripts) and what a
recovery should trigger (the `on_recovered` hook: the owner rebuilds the balance cache).

Why this shape (DESIGN rule 7). redis-py's async client is asyncio-only, and a blocking call on
the trio thread would stall every task in the process. So each round trip is one
`trio.to_thread.run_sync` call, and it carries as many requests as are waiting: under load the
round trips per request fall far below one, with no timer and no extra latency when idle (the
pipeline goes as soon as the previous one is back).

Deadlines. Every caller waits at most `redis.request_timeout_ms` and then raises
`HotStateUnavailable`; a request whose caller has given up before its pipeline leaves is never
sent, so a late pipeline cannot admit a bet the edge already answered 503. A pipeline that
outlives its own deadline (a blackholed server) is *abandoned*: its thread keeps the connection it
was using, finishes within the socket timeout, undoes whatever it admitted for callers who are
gone (each request may carry an `undo`), and closes that connection. The next round trip opens a
fresh one, so an abandoned thread never shares a socket with a later call. What cannot be undone
is a pipeline whose *outcome* is unknown: one that hit the socket timeout (a stopped server reads
it when it resumes) or lost its connection mid-reply. Its callers heard 503; whatever of it runs
later holds stakes that the recovery rebuild returns, and burns nonces that the client must then
replace (the ledger's UNIQUE nonce is unaffected: nothing reached the writer).

Retry policy. redis-py retries a `ConnectionError` once, at once, with no backoff: that is the
stale socket of a restarted server or an idle-closed connection, where nothing was executed (and
after a restart of a server that keeps nothing on disk, re-executing is right even if it was).
A `TimeoutError` is never retried: the script may have run and still be running, and the
caller's deadline is the bound anyway. The rare reset between execution and reply turns a retried
admission into a refusal (`replayed_nonce`) with its stake held until the next rebuild: the safe
direction. `health_check_interval` PINGs a connection idle for longer than two seconds before
using it, so a stale socket is found by an idempotent PING rather than by an admission.

Recovery. A round trip that succeeds after one that failed fires `on_recovered("reconnected")`.
A heartbeat (one `SET <sentinel> NX` per second, merged into whatever pipeline is going) also
notices a server that came back empty or was flushed without the connection dropping: the
sentinel was missing, so `on_recovered("data_lost")`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import trio
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.retry import Retry

from tap.config import Config, RedisConfig
from tap.hotstate import HotStateUnavailable
from tap.runtime import metrics
from tap.store.redis_hot import SCRIPTS, BalanceSource, RedisHotState, sentinel_key
from tap.store.redis_link import MAX_PIPELINE, RecoveryHook, RedisCommand, Undo

log = logging.getLogger(__name__)

# Requests waiting for the gateway. A caller never waits for room (a full queue answers 503 at
# once, DESIGN rule 4). 1024 is two full pipelines: at the few thousand admissions per second one
# process sustains (loadgen/benches/bench_redis.py) that is a fraction of the request deadline,
# and a longer queue would only hold requests that then miss it.
QUEUE_SIZE = 1024
HEARTBEAT_MS = 1000  # sentinel check and recovery probe while idle or down
HEALTH_CHECK_INTERVAL_S = 2  # redis-py PINGs a connection idle longer than this before use
# Server answers that mean "not now" rather than "your command is wrong".
_UNAVAILABLE_REPLIES = (BusyLoadingError, ReadOnlyError, OutOfMemoryError)
_UNAVAILABLE_PREFIXES = ("BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK")


@dataclass(eq=False, slots=True)
class _Request:
    commands: tuple[RedisCommand, ...]
    deadline: float  # trio time after which nobody waits for the answer
    undo: Undo | None = None
    done: trio.Event = field(default_factory=trio.Event)
    replies: list[Any] | None = None
    error: BaseException | None = None
    abandoned: bool = False  # the caller stopped waiting before an answer arrived

    def answer(self, replies: list[Any] | None, error: BaseException | None) -> None:
        self.replies, self.error = replies, error
        self.done.set()


def _is_unavailable(reply: object) -> bool:
    if isinstance(reply, _UNAVAILABLE_REPLIES):
        return True
    return isinstance(reply, ResponseError) and str(reply).startswith(_UNAVAILABLE_PREFIXES)


class _Link:
    """One connection's worth of client, used by one thread at a time.

    It is retired when the trio side stops waiting for the thread that is using it; that thread
    then finishes its pipeline (bounded by the socket timeout), undoes what it admitted for the
    callers who left, and closes the connection. A retired link is never used again.
    """

    def __init__(self, settings: RedisConfig, scripts: Mapping[str, str]) -> None:
        self._settings = settings
        self._client_made: redis.Redis | None = None  # made by the first thread that uses it
        self._scripts = dict(scripts)
        self._shas = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in scripts.items()}
        self._lock = threading.Lock()
        self._retired = False
        self._finished: list[Any] | None = None  # replies of the last pipeline, until collected

    # ── worker thread ──────────────────────────────────────────────────────────────────────

    @property
    def _client(self) -> redis.Redis:
        if self._client_made is None:
            self._client_made = redis.Redis.from_url(
                self._settings.url,
                decode_responses=True,
                socket_timeout=self._settings.socket_timeout_ms / 1000,
                socket_connect_timeout=self._settings.connect_timeout_ms / 1000,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                health_check_interval=HEALTH_CHECK_INTERVAL_S,
                client_name="tap-gateway",
            )
        return self._client_made

    def execute(self, commands: Sequence[RedisCommand], undo: Undo | None) -> list[Any]:
        with self._lock:
            self._finished = None
        try:
            replies = self._pipeline(commands)
        except BaseException:
            if self._is_retired():
                self.close()
            raise
        with self._lock:
            if not self._retired:
                self._finished = replies
                return replies
        # Abandoned while we ran: the callers got 503, so take back what was admitted for them.
        if undo is not None:
            try:
                taken_back = undo(replies)
                if taken_back:
                    self._pipeline(taken_back)
            except redis.RedisError:
                log.warning("could not undo an abandoned pipeline; held until the next rebuild")
        self.close()
        return replies

    def _pipeline(self, commands: Sequence[RedisCommand]) -> list[Any]:
        metrics.REDIS_ROUND_TRIPS.inc()
        replies = self._send(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # The server lost its script cache (restart, SCRIPT FLUSH): an EVALSHA it did not
            # know ran nothing, so load the library and send exactly those again.
            metrics.REDIS_ROUND_TRIPS.inc()
            self._load_scripts()
            again = self._send([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _send(self, commands: Sequence[RedisCommand]) -> list[Any]:
        pipe = cast(Any, self._client.pipeline(transaction=False))  # redis-py: untyped here
        for c in commands:
            if c.script is None:
                pipe.execute_command(*c.args)
            else:
                pipe.execute_command("EVALSHA", self._shas[c.script], c.numkeys, *c.args)
        return list(pipe.execute(raise_on_error=False))

    def _load_scripts(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        for source in self._scripts.values():
            pipe.script_load(source)
        for name, sha in zip(self._scripts, pipe.execute(), strict=True):
            if sha != self._shas[name]:
                raise RuntimeError(f"script {name!r}: server sha {sha} != {self._shas[name]}")

    def close(self) -> None:
        if self._client_made is not None:
            self._client_made.close()

    # ── trio side (no redis-py calls) ──────────────────────────────────────────────────────

    def _is_retired(self) -> bool:
        with self._lock:
            return self._retired

    def retire(self) -> list[Any] | None:
        """Stop using this link. Returns the replies if the pipeline had finished just before
        (they are the trio side's to deliver); otherwise its thread undoes and closes."""
        with self._lock:
            self._retired = True
            finished, self._finished = self._finished, None
        return finished


class RedisGateway:
    """The handle callers hold: `call`/`call_many` queue a request and await its replies."""

    def __init__(self, send: trio.MemorySendChannel[_Request], request_timeout_ms: int) -> None:
        self._send = send
        self._timeout_s = request_timeout_ms / 1000
        self.healthy = False  # the last round trip succeeded

    async def call(self, command: RedisCommand, *, undo: Undo | None = None) -> Any:
        """One command's reply. Raises `HotStateUnavailable` when Redis does not answer within
        the request timeout (or the queue is full); a script error (a bug) raises as itself."""
        return (await self.call_many((command,), undo=undo))[0]

    async def call_many(
        self, commands: Sequence[RedisCommand], *, undo: Undo | None = None
    ) -> list[Any]:
        """Several commands sent together, in order, in one pipeline (not a transaction)."""
        await trio.lowlevel.checkpoint_if_cancelled()  # a caller already gone sends nothing
        request = _Request(tuple(commands), trio.current_time() + self._timeout_s, undo)
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            raise HotStateUnavailable("the Redis request queue is full") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise HotStateUnavailable("the Redis gateway has stopped") from None
        try:
            with trio.move_on_at(request.deadline):
                await request.done.wait()
        except BaseException:
            self._give_up(request)
            raise
        if not request.done.is_set():
            self._give_up(request)
            raise HotStateUnavailable("Redis did not answer in time")
        if request.error is not None:
            raise request.error
        assert request.replies is not None
        for reply in request.replies:
            if isinstance(reply, Exception):
                raise reply
        return request.replies

    async def ping(self) -> bool:
        """True when Redis answers a PING within the request timeout (readiness)."""
        try:
            return bool(await self.call(RedisCommand(("PING",))))
        except HotStateUnavailable:
            return False

    def _give_up(self, request: _Request) -> None:
        if not request.done.is_set():
            request.abandoned = True  # never sent if still queued; undone if answered later
        elif request.replies is not None:
            # Answered, but the caller was cancelled before it could act on the answer.
            self.take_back(request, request.replies)

    def take_back(self, request: _Request, replies: Sequence[Any]) -> None:
        """Queue the undo of what `replies` did for a caller who is gone. Best effort: with the
        queue full, a reservation stays held until the next rebuild (the safe direction)."""
        if request.undo is None:
            return
        commands = tuple(request.undo(replies))
        if not commands:
            return
        try:
            self._send.send_nowait(_Request(commands, trio.current_time() + self._timeout_s))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.warning("undo of an abandoned request dropped; held until the next rebuild")


class _Gateway:
    """The actor's private state: the current link and the health it last saw."""

    def __init__(
        self,
        settings: RedisConfig,
        scripts: Mapping[str, str],
        handle: RedisGateway,
        on_recovered: RecoveryHook | None,
    ) -> None:
        self.settings = settings
        self.scripts = scripts
        self.handle = handle
        self.on_recovered = on_recovered
        self.link: _Link | None = None
        self.failed = False  # the last round trip failed: the next success is a recovery
        self.round_trip_s = settings.request_timeout_ms / 1000

    async def serve(self, receive: trio.MemoryReceiveChannel[_Request]) -> None:
        async for first in receive:
            batch = [first]
            size = len(first.commands)
            while size < MAX_PIPELINE:
                try:
                    more = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(more)
                size += len(more.commands)
            now = trio.current_time()
            live = []
            for request in batch:
                if request.abandoned or request.deadline <= now:
                    request.answer(None, HotStateUnavailable("deadline passed while queued"))
                else:
                    live.append(request)
            if live:
                await self.round_trip(live)

    async def round_trip(self, batch: list[_Request]) -> None:
        if self.link is None:
            self.link = _Link(self.settings, self.scripts)
        link = self.link
        commands = [c for r in batch for c in r.commands]
        metrics.REDIS_REQUESTS.inc(len(batch))
        undo = _undo_all(batch)
        try:
            with trio.fail_after(self.round_trip_s):
                replies = await trio.to_thread.run_sync(
                    link.execute, commands, undo, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            self.link = None
            finished = link.retire()
            if finished is not None:
                self.deliver(batch, finished)
                return
            self.fail(batch, "Redis did not answer within the round-trip deadline")
            return
        except redis.RedisError as e:
            self.fail(batch, f"Redis round trip failed: {e}")
            return
        except BaseException:
            # Cancelled (shutdown): the thread keeps the link, undoes and closes it.
            self.link = None
            finished = link.retire()
            if finished is not None:
                self.deliver(batch, finished)
            else:
                for request in batch:
                    request.answer(None, HotStateUnavailable("the Redis gateway is stopping"))
            raise
        self.deliver(batch, replies)

    def deliver(self, batch: list[_Request], replies: list[Any]) -> None:
        """Hand each caller its slice. A request with a "not now" reply (LOADING, READONLY, OOM,
        BUSY…) gets `HotStateUnavailable`, and whatever of it did run is taken back."""
        refused = False
        i = 0
        for request in batch:
            mine = replies[i : i + len(request.commands)]
            i += len(request.commands)
            if any(_is_unavailable(r) for r in mine):
                refused = True
                self.handle.take_back(request, mine)
                request.answer(None, HotStateUnavailable("Redis cannot serve requests now"))
                continue
            request.answer(mine, None)
            if request.abandoned:
                self.handle.take_back(request, mine)
        if refused:
            self.fail([], "Redis answered that it cannot serve now")
        else:
            self.succeeded()

    def fail(self, batch: list[_Request], why: str) -> None:
        metrics.REDIS_ERRORS.inc()
        if not self.failed:
            log.warning("hot state unavailable: %s", why)
        self.failed = True
        self.handle.healthy = False
        for request in batch:
            request.answer(None, HotStateUnavailable(why))

    def succeeded(self) -> None:
        self.handle.healthy = True
        if self.failed:
            self.failed = False
            log.info("hot state reachable again")
            self.recovered("reconnected")

    def recovered(self, why: str) -> None:
        if self.on_recovered is not None:
            self.on_recovered(why)  # the owner's hook: must neither block nor raise

    async def heartbeat(self, sentinel_key: str | None, interval_ms: int) -> None:
        """Probe once per interval. Setting the sentinel succeeding means it was missing: the
        server came back empty or was flushed. The first probe only arms it (the owner rebuilds
        at startup anyway)."""
        armed = False
        command = (
            RedisCommand(("SET", sentinel_key, "1", "NX"))
            if sentinel_key is not None
            else RedisCommand(("PING",))
        )
        while True:
            try:
                reply = await self.handle.call(command)
            except HotStateUnavailable:
                pass
            else:
                if sentinel_key is not None and reply and armed:
                    log.warning("hot state lost its data (restart or flush)")
                    self.recovered("data_lost")
                armed = True
            await trio.sleep(interval_ms / 1000)

    async def close(self) -> None:
        link, self.link = self.link, None
        if link is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.round_trip_s):
            await trio.to_thread.run_sync(link.close, abandon_on_cancel=True)


def _undo_all(batch: list[_Request]) -> Undo | None:
    """The undo for a whole pipeline (its callers all hear 503 if it is abandoned)."""
    parts = [(len(r.commands), r.undo) for r in batch]
    if all(u is None for _, u in parts):
        return None

    def undo(replies: Sequence[Any]) -> list[RedisCommand]:
        commands: list[RedisCommand] = []
        i = 0
        for n, one in parts:
            if one is not None:
                commands.extend(one(replies[i : i + n]))
            i += n
        return commands

    return undo


async def run(
    settings: RedisConfig,
    scripts: Mapping[str, str],
    *,
    sentinel_key: str | None = None,
    on_recovered: RecoveryHook | None = None,
    heartbeat_ms: int = HEARTBEAT_MS,
    task_status: trio.TaskStatus[RedisGateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own the Redis connection until cancelled; `task_status.started` hands back the
    `RedisGateway` callers use. `scripts` (name → Lua source) may be called by name.

    It is ready at once, whether or not Redis is up: an edge must start (and say "not ready")
    while Redis is down, and answer 503 until it returns. `sentinel_key` (a key the gateway
    alone writes) enables the data-loss probe; `on_recovered` hears "reconnected" and
    "data_lost" and must not block (e.g. `send_nowait` on a channel of size 1).
    """
    send, receive = trio.open_memory_channel[_Request](QUEUE_SIZE)
    handle = RedisGateway(send, settings.request_timeout_ms)
    gateway = _Gateway(settings, scripts, handle, on_recovered)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.serve, receive)
            nursery.start_soon(gateway.heartbeat, sentinel_key, heartbeat_ms)
            task_status.started(handle)
    finally:
        await gateway.close()


@asynccontextmanager
async def open_redis_hot_state(
    cfg: Config,
    *,
    balance_source: BalanceSource | None = None,
    on_recovered: RecoveryHook | None = None,
) -> AsyncIterator[RedisHotState]:
    """Start a gateway for `cfg.redis` and yield a `RedisHotState` on it; the gateway stops on
    exit (tests and tools; the supervisors start `run` in their own nursery with `SCRIPTS` and
    `sentinel_key(prefix)` and build `RedisHotState.from_config` on the handle)."""
    async with trio.open_nursery() as nursery:
        gateway: RedisGateway = await nursery.start(
            _run_gateway, cfg, on_recovered, name="redis-gateway"
        )
        try:
            yield RedisHotState.from_config(gateway, cfg, balance_source=balance_source)
        finally:
            nursery.cancel_scope.cancel()


async def _run_gateway(
    cfg: Config,
    on_recovered: RecoveryHook | None,
    *,
    task_status: trio.TaskStatus[RedisGateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    await run(
        cfg.redis,
        SCRIPTS,
        sentinel_key=sentinel_key(cfg.redis.prefix),
        on_recovered=on_recovered,
        task_status=task_status,
    )
