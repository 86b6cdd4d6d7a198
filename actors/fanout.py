"""The fan-out of committed events: every consumer of what the writer committed follows it here.

`CommittedFanout` is what the supervisor passes to the writer (`actors.batcher`) as `committed`:
every consumer (hub, resolver, ledger-sync, the bus) gets its own bounded subscription, and a
per-request `Waiter` answers `Prefer: wait`. Publishing never blocks the writer: a subscriber that
falls `capacity` events behind is dropped and told so (`Lagged`) once it has read what was queued;
it must resync from the database and subscribe again — `follow` is the one loop that does that.
A subscription receives a committed batch as one item and hands its events out one by one without
a checkpoint in between: a consumer that yielded to the scheduler once per event could follow at
most one event per scheduling round, and under load the confirmations fell seconds behind the
commits (issue 12).

What the caller decides: what each consumer does with an event and how it resyncs after a lag
(`follow`'s `on_event` / `on_lag`), how far behind it may fall (`capacity`), how long a waiter
waits (`trio.move_on_after`), and when the fan-out closes (after the writer has returned).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import trio

from tap.messages import BetConfirmed, BetRejected, Committed, EntryPosted

log = logging.getLogger("tap.fanout")


class Lagged(Exception):
    """This subscription fell `capacity` events behind and was dropped. Events after the last
    one it received are lost to it: resync from the database, then subscribe again."""


class Subscription:
    """One consumer's bounded queue of committed events (iterate it, or `receive`).

    Ends with `trio.EndOfChannel` (plain end of iteration) when the fan-out is closed, and with
    `Lagged` when this consumer was too slow.
    """

    def __init__(
        self, receive: trio.MemoryReceiveChannel[Sequence[Committed]], name: str, capacity: int
    ) -> None:
        self._receive = receive
        self._batch: deque[Committed] = deque()  # the rest of the batch being handed out
        self.name = name
        self.capacity = capacity
        self.queued = 0  # events published to this subscription and not yet received
        self.lagged = False

    async def receive(self) -> Committed:
        """The next committed event. Only the first event of a batch waits (and checkpoints);
        the rest of that batch follows at once (module text)."""
        if not self._batch:
            try:
                self._batch.extend(await self._receive.receive())
            except trio.EndOfChannel:
                if self.lagged:
                    raise Lagged(f"subscription {self.name!r} overflowed and was dropped") from None
                raise
        self.queued -= 1
        return self._batch.popleft()

    async def receive_batch(self, most: int) -> list[Committed]:
        """The next event and up to `most - 1` more already queued (`[]` once the fan-out is
        closed); raises `Lagged` like `receive`."""
        try:
            batch = [await self.receive()]
        except trio.EndOfChannel:
            return []
        while len(batch) < most:
            if not self._batch:
                try:
                    self._batch.extend(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self.queued -= 1
            batch.append(self._batch.popleft())
        return batch

    def __aiter__(self) -> AsyncIterator[Committed]:
        return self

    async def __anext__(self) -> Committed:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop receiving; the fan-out forgets this subscription on its next publish."""
        self._receive.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Waiter:
    """The commit outcome of one request: `BetConfirmed` / `BetRejected` for a bet,
    `EntryPosted` for a deposit, withdrawal or credit. The first answer wins."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._answer: Committed | None = None

    @property
    def answer(self) -> Committed | None:
        return self._answer

    def _resolve(self, event: Committed) -> None:
        if self._answer is None:
            self._answer = event
            self._done.set()

    async def wait(self) -> Committed:
        """Wait for the answer; bound it with `trio.move_on_after` (Prefer: wait=N)."""
        await self._done.wait()
        assert self._answer is not None
        return self._answer


class CommittedFanout:
    """Fans each committed batch out to subscribers and waiters, without ever blocking."""

    def __init__(self) -> None:
        self._subscribers: list[
            tuple[trio.MemorySendChannel[Sequence[Committed]], Subscription]
        ] = []
        self._bet_waiters: dict[str, list[Waiter]] = {}
        self._ref_waiters: dict[str, list[Waiter]] = {}
        self.dropped = 0  # subscriptions dropped for lagging, since start
        self._closed = False

    def subscribe(self, capacity: int, name: str = "") -> Subscription:
        """A new subscription that sees every batch committed from now on.

        `capacity`: how many events it may fall behind before it is dropped. Size it for a burst
        (a column end resolves every open bet of a column in one batch, plus one balance per
        address), not for a consumer that is stuck.
        """
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        # Batches, each at least one event: `capacity` of them can never fill the channel
        # before the event count (`Subscription.queued`) reaches `capacity`.
        send, receive = trio.open_memory_channel[Sequence[Committed]](capacity)
        sub = Subscription(receive, name, capacity)
        if self._closed:
            send.close()
        else:
            self._subscribers.append((send, sub))
        return sub

    @contextmanager
    def expect_bet(self, bet_id: str) -> Iterator[Waiter]:
        """Register *before* handing the bet to the writer, so the answer cannot slip past."""
        with self._registered(self._bet_waiters, bet_id) as waiter:
            yield waiter

    @contextmanager
    def expect_entry(self, ref: str) -> Iterator[Waiter]:
        """Like `expect_bet`, for a deposit / withdrawal / credit's `ref`."""
        with self._registered(self._ref_waiters, ref) as waiter:
            yield waiter

    @contextmanager
    def _registered(self, table: dict[str, list[Waiter]], key: str) -> Iterator[Waiter]:
        waiter = Waiter()
        table.setdefault(key, []).append(waiter)
        try:
            yield waiter
        finally:
            waiters = table[key]
            waiters.remove(waiter)
            if not waiters:
                del table[key]

    def publish(self, events: Sequence[Committed]) -> None:
        """Deliver one committed batch, in order. Called from trio context; never blocks."""
        for event in events:
            match event:
                case BetConfirmed() | BetRejected():
                    for waiter in self._bet_waiters.get(event.bet.bet_id, ()):
                        waiter._resolve(event)
                case EntryPosted():
                    for waiter in self._ref_waiters.get(event.ref, ()):
                        waiter._resolve(event)
                case _:
                    pass
        if not events:
            return
        batch = tuple(events)
        keep = []
        for send, sub in self._subscribers:
            try:
                if sub.queued + len(batch) > sub.capacity:
                    raise trio.WouldBlock
                send.send_nowait(batch)
                sub.queued += len(batch)
            except trio.WouldBlock:
                sub.lagged = True
                send.close()
                self.dropped += 1
                log.warning("committed-event subscriber %r lagged and was dropped", sub.name)
            except trio.BrokenResourceError:
                send.close()  # the consumer closed its end: nobody to tell
            else:
                keep.append((send, sub))
        self._subscribers = keep

    def close(self) -> None:
        """No more batches (the writer has stopped): every subscription ends after its queue."""
        self._closed = True
        for send, _ in self._subscribers:
            send.close()
        self._subscribers = []


# Events one subscriber may fall behind: a column end settles every open bet of a column in one
# batch (plus one balance event per address); 64k covers several full columns at peak rate.
FOLLOW_CAPACITY = 65_536
# A resync after a lag that fails is retried after 1 s, doubling up to 30 s.
RESYNC_BACKOFF_S = (1.0, 30.0)


async def follow(
    fanout: CommittedFanout,
    name: str,
    on_event: Callable[[Committed], Awaitable[None]],
    on_lag: Callable[[], Awaitable[None]],
    *,
    capacity: int = FOLLOW_CAPACITY,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hand every committed event to `on_event`, in order, until the fan-out closes.

    The one way a consumer follows the fan-out. If it lags (`capacity` events behind), it
    subscribes again *first* and then calls `on_lag` to resync from the ledger, so an event
    committed in between is in one or the other. A resync that raises (Redis down, a ledger read
    failing) drops that subscription and is tried again after 1 s, doubling up to 30 s: a
    follower never dies of its resync. `on_event` owns its own errors."""
    sub = fanout.subscribe(capacity, name)
    task_status.started()
    while True:
        try:
            async for event in sub:
                await on_event(event)
            return
        except Lagged:
            log.error("committed-event follower %r lagged; resyncing from the ledger", name)
            sub = await _resubscribe(fanout, name, capacity, on_lag)


async def _resubscribe(
    fanout: CommittedFanout, name: str, capacity: int, on_lag: Callable[[], Awaitable[None]]
) -> Subscription:
    delay, longest = RESYNC_BACKOFF_S
    while True:
        sub = fanout.subscribe(capacity, name)
        try:
            await on_lag()
            return sub
        except Exception as e:
            sub.close()
            log.warning("%s: resync failed (%r); retrying in %.0f s", name, e, delay)
            await trio.sleep(delay)
            delay = min(2 * delay, longest)
