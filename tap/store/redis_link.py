"""What a caller of Redis sees: a command, how to undo one, and the gateway it is sent through.

The gateway itself is an actor (`actors/redis_gateway.py`: one connection, pipelining, deadlines,
recovery). The hot state, the session claims and the bus only need to *describe* commands and
*send* them; this module is that vocabulary, so they depend on it and not on the actor
(DESIGN: the supervisors are the only importers of `actors/`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Commands per pipeline: bounds one round trip's thread time and reply size; a burst larger than
# this simply takes two round trips.
MAX_PIPELINE = 512

RecoveryHook = Callable[[str], None]  # "reconnected" | "data_lost"; runs on the trio thread


@dataclass(frozen=True, slots=True)
class RedisCommand:
    """One command of a pipeline: a plain command (`args` starts with its name), or a Lua script
    of the gateway's library called by name via EVALSHA (`args` = its keys, then its arguments)."""

    args: tuple[str | int, ...]
    script: str | None = None
    numkeys: int = 0


# Given the replies of a request whose caller has gone, the commands that undo what it did
# (a reservation nobody will hand to the writer). Pure: it may run in a worker thread.
Undo = Callable[[Sequence[Any]], Sequence[RedisCommand]]


class Gateway(Protocol):
    """The handle of `actors.redis_gateway.run`: queue commands, await their replies within the
    request timeout, else `HotStateUnavailable`."""

    healthy: bool

    async def call(self, command: RedisCommand, *, undo: Undo | None = None) -> Any: ...

    async def call_many(
        self, commands: Sequence[RedisCommand], *, undo: Undo | None = None
    ) -> list[Any]: ...

    async def ping(self) -> bool: ...
