"""`tap.runtime.hypercorn_guard`'s two savings on Hypercorn's per-request path: the connection's
writes (`GuardedTCPServer.protocol_send`) and its keep-alive timer (`_SingleTask`). Both must keep
Hypercorn's behaviour — what is written, in what order, under which cancellation — with fewer task
steps. The real server runs them in every end-to-end test (keep-alive reuse and idle close:
tests/test_e2e_hostile_http.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.events import Closed, RawData, Updated

from tap.runtime.hypercorn_guard import GuardedTCPServer, _SingleTask


class FakeStream:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.gate: trio.Event | None = None
        self.broken = False

    async def send_all(self, data: bytes) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.broken:
            raise trio.BrokenResourceError
        self.written.append(data)


class FakeProtocol:
    def __init__(self) -> None:
        self.handled: list[Any] = []

    async def handle(self, event: Any) -> None:
        self.handled.append(event)


class _Steps(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


@contextmanager
def no_yield() -> Iterator[None]:
    """The block never gives up the event loop (a checkpoint that does not yield is fine: the
    sender still honours cancellation, it just does not reschedule itself)."""
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        yield
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.steps == 0, f"yielded {steps.steps} times"


def server() -> tuple[GuardedTCPServer, FakeStream, FakeProtocol]:
    srv = GuardedTCPServer.__new__(GuardedTCPServer)
    stream, protocol = FakeStream(), FakeProtocol()
    srv.stream = stream  # type: ignore[assignment]
    srv.protocol = protocol  # type: ignore[assignment]
    srv.send_lock = trio.Lock()
    return srv, stream, protocol


async def test_an_uncontended_write_goes_out_without_a_checkpoint() -> None:
    srv, stream, _ = server()
    with no_yield():
        await srv.protocol_send(RawData(data=b"HTTP/1.1 202 Accepted\r\n\r\n"))
        await srv.protocol_send(RawData(data=b"{}"))
    assert stream.written == [b"HTTP/1.1 202 Accepted\r\n\r\n", b"{}"]
    assert not srv.send_lock.locked()


async def test_an_empty_write_writes_nothing() -> None:
    srv, stream, _ = server()
    stream.gate = trio.Event()  # would block if it were written
    with no_yield():
        await srv.protocol_send(RawData(data=b""))
    assert stream.written == []


async def test_concurrent_writes_go_out_whole_and_in_turn() -> None:
    srv, stream, _ = server()
    stream.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(srv.protocol_send, RawData(data=b"first"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(srv.protocol_send, RawData(data=b"second"))
        await trio.testing.wait_all_tasks_blocked()
        assert srv.send_lock.statistics().tasks_waiting == 1  # the second waits for the lock
        stream.gate.set()
    assert stream.written == [b"first", b"second"]
    assert not srv.send_lock.locked()


async def test_a_write_to_a_broken_stream_reports_closed_and_releases_the_lock() -> None:
    srv, stream, protocol = server()
    stream.broken = True
    await srv.protocol_send(RawData(data=b"x"))
    assert len(protocol.handled) == 1 and isinstance(protocol.handled[0], Closed)
    assert not srv.send_lock.locked()


async def test_a_cancelled_sender_writes_nothing() -> None:
    srv, stream, _ = server()
    with trio.CancelScope() as scope:
        scope.cancel()
        await srv.protocol_send(RawData(data=b"x"))
    assert scope.cancelled_caught
    assert stream.written == []
    assert not srv.send_lock.locked()


async def test_a_write_in_progress_is_not_cut_by_cancellation() -> None:
    srv, stream, _ = server()
    stream.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(srv.protocol_send, RawData(data=b"whole"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # shielded, as in Hypercorn: the write completes
        stream.gate.set()
    assert stream.written == [b"whole"]


async def test_other_events_are_hypercorn_s(monkeypatch: pytest.MonkeyPatch) -> None:
    srv, _, _ = server()
    seen: list[Any] = []

    async def parent(self: Any, event: Any) -> None:
        seen.append(event)

    monkeypatch.setattr("hypercorn.trio.tcp_server.TCPServer.protocol_send", parent)
    await srv.protocol_send(Updated(idle=True))
    assert seen == [Updated(idle=True)]


class Group:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery


async def test_the_timer_runs_once_restart_replaces_it_and_stop_cancels_it() -> None:
    started: list[int] = []
    finished: list[int] = []
    gate = trio.Event()

    def action(n: int) -> Any:
        async def run() -> None:
            started.append(n)
            await gate.wait()
            finished.append(n)

        return run

    timer = _SingleTask()
    async with trio.open_nursery() as nursery:
        group = Group(nursery)
        with no_yield():
            await timer.restart(group, action(1))
        await trio.testing.wait_all_tasks_blocked()
        await timer.restart(group, action(2))  # cancels 1
        await trio.testing.wait_all_tasks_blocked()
        await timer.stop()  # cancels 2
        await timer.restart(group, action(3))
        await timer.stop()  # before 3 has even started: it ends at its first checkpoint
        await timer.restart(group, action(4))
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert sorted(started) == [1, 2, 3, 4]  # 3 and 4 start in one round, in either order
    assert finished == [4]
