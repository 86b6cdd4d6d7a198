"""Hypercorn hardening: an error inside one connection's protocol handling ends that connection,
never the server.

Hypercorn's trio TCP server (`hypercorn/trio/tcp_server.py`, `TCPServer.run`) catches only
`OSError` around a connection; anything else propagates through `trio.serve_listeners` into
`worker_serve` and ends `serve()` — the whole process. One client can trigger that: a binary
message over `websocket_max_message_size` followed by a text frame (Hypercorn 0.18 closes 1009
but keeps feeding the next frame into the stale binary buffer: `TypeError` in
`WebsocketBuffer.extend`). `install()` puts a subclass in the module's place whose `run` turns
such an error into one log line and a closed socket (the 1009 close frame has already gone out).
Cancellation still propagates untouched (`except*` re-raises what it does not match).
"""

from __future__ import annotations

import json
import logging

import hypercorn.trio.run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)


class GuardedTCPServer(TCPServer):
    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as group:
            first = group.exceptions[0]
            log.warning(
                '{"msg": "connection dropped after a protocol error", "error": %s}',
                json.dumps(f"{type(first).__name__}: {first}"[:200]),
            )


def install() -> None:
    """Make `hypercorn.trio.serve` use `GuardedTCPServer` (idempotent)."""
    hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[attr-defined,misc]
