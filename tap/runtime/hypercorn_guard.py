"""Hypercorn hardening: an error inside one connection's protocol handling ends that connection,
never the server; an oversized or invalid WebSocket frame closes its connection properly.

Hypercorn's trio TCP server (`hypercorn/trio/tcp_server.py`, `TCPServer.run`) catches only
`OSError` around a connection; anything else propagates through `trio.serve_listeners` into
`worker_serve` and ends `serve()` — the whole process. One client can trigger that: a binary
message over `websocket_max_message_size` followed by a text frame (Hypercorn 0.18 closes 1009
but keeps feeding the next frame into the stale binary buffer: `TypeError` in
`WebsocketBuffer.extend`). `install()` puts a subclass in the module's place whose `run` turns
such an error into one log line and a closed socket (the 1009 close frame has already gone out).
Cancellation still propagates untouched (`except*` re-raises what it does not match).

The same install replaces `WSStream._handle_events` (Hypercorn 0.17–0.18, pinned in
pyproject) with a copy that fixes two things a hostile client reaches:

- After a message over the size limit Hypercorn sends close 1009 and then `break`s out of the
  event loop, leaving the frames behind it — the client's close reply included — unprocessed: the
  socket and its app task stay open until something else closes them, and the next message lands
  in the stale buffer (the `TypeError` above). Here the rest of the connection's messages are
  dropped, and the close handshake completes.
- A frame wsproto cannot parse (invalid UTF-8 in a text frame, a bad opcode…) comes out as a
  `CloseConnection` with the RFC 6455 code (1007, 1002) while the connection is still OPEN;
  Hypercorn then drops the socket without sending it, so the client sees 1006. Here the close
  frame with that code is sent first.

And two costs per request on the bet path (issue 12: a bet over HTTP was ≈ 32 task steps, most of
them Hypercorn's), changed without changing what goes on the wire or when:

- `protocol_send` writes nothing for an empty chunk (Hypercorn sends the `b""` that h11 makes of
  a Content-Length response's end, and Quart ends every body with an empty chunk), and takes the
  connection's send lock without a checkpoint when nobody holds it — two task steps per write
  became one, and two writes per response are gone.
- The keep-alive timer (`TCPServer.idle_task`) is restarted after every response and stopped at
  every request. Hypercorn's `TrioSingleTask` takes a lock and waits for the new timer task to
  start, three more task steps per request. `_SingleTask` does the same synchronously: cancel the
  old timer, start the new one in a scope made here (no await, so no lock is needed).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio.run as hypercorn_run
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

log = logging.getLogger(__name__)


class _SingleTask:
    """Hypercorn's `TrioSingleTask` contract — at most one instance of an action runs; `restart`
    cancels the running one and starts it anew, `stop` cancels it — with no await: the new
    task's cancel scope is made here, so `stop` right after `restart` cancels a task that has not
    started yet (its action ends at its first checkpoint)."""

    def __init__(self) -> None:
        self._scope: trio.CancelScope | None = None

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        if self._scope is not None:
            self._scope.cancel()
        scope = self._scope = trio.CancelScope()
        task_group._nursery.start_soon(_run_in_scope, scope, action)

    async def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None


async def _run_in_scope(scope: trio.CancelScope, action: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await action()


class GuardedTCPServer(TCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_task = _SingleTask()  # type: ignore[assignment]

    async def protocol_send(self, event: Event) -> None:
        """`TCPServer.protocol_send` with the two savings the module names; other events as
        Hypercorn handles them."""
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        if not event.data:
            return  # nothing to write (and never a write that alone closes anything)
        await trio.lowlevel.checkpoint_if_cancelled()  # as `Lock.acquire` would, minus a yield
        lock = self.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            try:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
        finally:
            lock.release()

    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as group:
            first = group.exceptions[0]
            log.warning(
                "connection dropped after a protocol error",
                extra={"error": f"{type(first).__name__}: {first}"[:200]},
            )


async def _handle_ws_events(self: WSStream) -> None:
    """`WSStream._handle_events` of Hypercorn 0.18, with the two fixes the module names."""
    for event in self.connection.events():
        if isinstance(event, Message):
            if getattr(self, "_tap_too_big", False):
                continue  # we are closing 1009: nothing more reaches the app
            try:
                self.buffer.extend(event)
            except FrameTooLargeError:
                self._tap_too_big = True  # type: ignore[attr-defined]
                self.buffer.clear()
                await self._send_wsproto_event(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                continue
            if event.message_finished:
                await self.app_put(self.buffer.to_message())  # type: ignore[misc]
                self.buffer.clear()
        elif isinstance(event, Ping):
            await self._send_wsproto_event(event.response())
        elif isinstance(event, CloseConnection):
            if self.connection.state == ConnectionState.REMOTE_CLOSING:
                await self._send_wsproto_event(event.response())
            elif self.connection.state == ConnectionState.OPEN:
                # wsproto failed the connection (ParseFailed): tell the client why.
                await self._send_wsproto_event(CloseConnection(code=event.code))
            await self.send(StreamClosed(stream_id=self.stream_id))


def install() -> None:
    """Make `hypercorn.trio.serve` use `GuardedTCPServer` and the fixed WebSocket event
    handling (idempotent)."""
    hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[attr-defined,misc]
    WSStream._handle_events = _handle_ws_events  # type: ignore[method-assign]
