"""A `Stage`: an actor the supervisor stops on its own, at its place in the shutdown order.

A nursery cancels all its children at once; a drain needs some stopped before others (the feed
before the resolver, the resolver before the writer's input closes, Hypercorn before the
forwarder). A stage gives one actor its own cancel scope and a `done` event, so the supervisor
writes the order as plain lines (`await ingesting.stop()`, `await resolving.finished(5)`)
instead of one closure per actor whose only job is to set an event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


class Stage:
    def __init__(self, name: str) -> None:
        self.name = name
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(
        self,
        actor: Callable[..., Awaitable[Any]],
        *args: Any,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
        **kwargs: Any,
    ) -> None:
        """`await nursery.start(stage.run, actor, *args)`: runs `actor(*args, task_status=…)`
        in this stage's scope; `done` is set however it ends."""
        try:
            with self.scope:
                await actor(*args, task_status=task_status, **kwargs)
        finally:
            self.done.set()

    async def stop(self) -> None:
        """Cancel the actor and wait until it has returned."""
        self.scope.cancel()
        await self.done.wait()

    async def finished(self, within_s: float) -> bool:
        """Wait for the actor to return by itself, at most `within_s`; True if it did."""
        with trio.move_on_after(within_s):
            await self.done.wait()
        return self.done.is_set()
