"""The breaker override shared by every edge: an admin's `open | closed | auto` published on Redis
pub/sub and delivered to this process's breaker actor.

It decides how an override travels: `publish_override` stores the mode in `<prefix>:breaker:
override` and publishes it on the channel of the same name; `run` subscribes (in a worker
thread: redis-py's pub/sub is blocking), delivers every mode it hears to the breaker's override
input, and after each (re)subscription delivers the stored mode too, so an edge that starts
late, or that was cut off while an admin acted, still ends up in the mode last chosen. Pub/sub
alone is fire-and-forget; the stored key is what makes it converge. It leaves to the breaker what
a mode means (DESIGN: the breaker state machine in the core).

Reconnects: a lost connection is retried with exponential backoff from 0.1 s to 2 s, so the
subscriber is back within a couple of seconds of Redis. A blackholed (stopped) server keeps the
TCP connection, and delivery resumes when it answers again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, cast

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from tap.config import RedisConfig
from tap.messages import BreakerMode
from tap.store.redis_hot import MODES, override_channel

log = logging.getLogger(__name__)

OverrideInput = trio.MemorySendChannel[BreakerMode]  # a breaker actor's override input
POLL_S = 0.2  # how often the listening thread looks up to see whether it should stop
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 2.0


class _Listener:
    """The blocking side: one thread, its own connections, reconnecting until told to stop."""

    def __init__(self, settings: RedisConfig, overrides: Sequence[OverrideInput]) -> None:
        self._settings = settings
        self._overrides = tuple(overrides)
        self._name = override_channel(settings.prefix)
        self.stop = threading.Event()
        self.subscribed = threading.Event()  # set while a subscription is live (tests, health)

    def listen(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while not self.stop.is_set():
            client = redis.Redis.from_url(
                self._settings.url,
                decode_responses=True,
                socket_timeout=self._settings.socket_timeout_ms / 1000,
                socket_connect_timeout=self._settings.connect_timeout_ms / 1000,
                retry=Retry(NoBackoff(), 0),  # this loop is the retry policy
                client_name="tap-breaker-override",
            )
            pubsub = cast(Any, client).pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._name)
                current = client.get(self._name)
                self.subscribed.set()
                backoff = BACKOFF_INITIAL_S
                if isinstance(current, str) and not self._deliver(current):
                    return
                while not self.stop.is_set():
                    message = pubsub.get_message(timeout=POLL_S)
                    heard = message is not None and message["type"] == "message"
                    if heard and not self._deliver(message["data"]):
                        return
            except redis.RedisError as e:
                if self.subscribed.is_set():
                    log.warning("breaker override subscription lost: %s", e)
            finally:
                self.subscribed.clear()
                pubsub.close()
                client.close()
            self.stop.wait(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _deliver(self, payload: object) -> bool:
        """Hand a mode to every breaker (waiting for room); False once the run is ending."""
        if payload not in MODES:
            log.warning("ignoring breaker override %r: expected open, closed or auto", payload)
            return True
        mode = cast(BreakerMode, payload)
        for overrides in self._overrides:
            try:
                trio.from_thread.run(overrides.send, mode)
            except (trio.RunFinishedError, trio.Cancelled):
                return False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # that breaker has gone; the others still listen
        return True


async def run(
    settings: RedisConfig,
    overrides: OverrideInput | Sequence[OverrideInput],
    *,
    task_status: trio.TaskStatus[threading.Event] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver every override published on Redis to `overrides` (one breaker's input, or one
    per market's breaker) until cancelled. Ready at once (Redis may be down); `started` hands
    back an event that is set while subscribed."""
    inputs = (overrides,) if isinstance(overrides, trio.MemorySendChannel) else overrides
    listener = _Listener(settings, inputs)
    task_status.started(listener.subscribed)
    try:
        await trio.to_thread.run_sync(listener.listen, abandon_on_cancel=True)
    finally:
        listener.stop.set()  # the abandoned thread notices within POLL_S and closes its sockets
