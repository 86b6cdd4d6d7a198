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
"""

from __future__ import annotations

import logging

import hypercorn.trio.run as hypercorn_run
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

log = logging.getLogger(__name__)


class GuardedTCPServer(TCPServer):
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
