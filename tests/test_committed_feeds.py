"""The hops a committed batch takes to the hub and the resolver: a whole batch in one round.

Each hop used to yield to the scheduler once per event, which capped it at one event per
scheduling round; under load the rounds are long and `bet_confirmed` fell seconds behind the
commit (issue 12). These pin that a queued burst crosses each hop without a yield per event.
"""

from __future__ import annotations

import trio
import trio.testing

from actors import hub as hub_actor
from tap.messages import BalanceChanged, Committed
from tap.runtime.supervisor import _forward

ALICE = "0x" + "a1" * 20


def balance(n: int) -> BalanceChanged:
    return BalanceChanged(address=ALICE, available=n, locked=0, at=1_732_287_600_000)


class CountingHub(hub_actor.Hub):
    def __init__(self) -> None:
        super().__init__(1_000_000)
        self.published: list[Committed] = []

    def publish_committed(self, event: Committed) -> None:
        self.published.append(event)


class _HubSteps(trio.abc.Instrument):
    """How many events the hub had published after each of its task steps."""

    def __init__(self, hub: CountingHub) -> None:
        self.hub = hub
        self.after: list[int] = []

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("_forward_committed"):
            self.after.append(len(self.hub.published))


async def test_the_hub_publishes_a_queued_burst_in_rounds_of_a_bounded_size() -> None:
    """A burst (a column's settlements) goes out `EVENTS_PER_ROUND` per task step, in order: not
    a step per event (the hub lagged), not all in one step (every client's writer woke at once
    and the loop read no request for 40–100 ms)."""
    hub = CountingHub()
    per_round = hub_actor.EVENTS_PER_ROUND
    send, receive = trio.open_memory_channel[Committed](1000)
    burst = [balance(n) for n in range(4 * per_round + 5)]
    for event in burst:
        send.send_nowait(event)
    steps = _HubSteps(hub)
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub_actor._forward_committed, hub, receive)
            await trio.testing.wait_all_tasks_blocked()
            assert hub.published == burst
            send.close()
    finally:
        trio.lowlevel.remove_instrument(steps)
    per_step = [b - a for a, b in zip([0, *steps.after], steps.after, strict=False)]
    assert [n for n in per_step if n] == [per_round] * 4 + [5]


async def test_a_feed_hop_passes_events_on_without_yielding_while_there_is_room() -> None:
    send, receive = trio.open_memory_channel[int](10)
    with trio.testing.assert_no_checkpoints():
        for n in range(10):
            await _forward(send, n)
    assert [receive.receive_nowait() for _ in range(10)] == list(range(10))


async def test_a_feed_hop_waits_for_room_when_its_consumer_is_behind() -> None:
    send, receive = trio.open_memory_channel[int](1)
    await _forward(send, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_forward, send, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert receive.receive_nowait() == 1  # the second was waiting, not dropped
        await trio.testing.wait_all_tasks_blocked()
        assert receive.receive_nowait() == 2
