"""One WebSocket client: a reader loop (auth, subscribe, place_bet, ping) and a writer task.

The hub owns the client's outbound queue; this module only moves frames between it and the
socket. The writer is the only task that awaits the socket, so a client that stops reading stalls
nobody but itself (DESIGN rule 4). Garbage gets an `error` frame; more than
`server.ws_max_bad_frames` of it closes the connection with 1003 (binary) or 1007 (bad JSON /
bad shape). Server shutdown closes every client with 1001.

Hostile input (API.md "Limits", issue 9): a frame is decoded only by `tap.wire` into the typed,
bounded `ClientFrame` — never untyped, not even to find a `req_id` to echo. Frames over
`MAX_FRAME_BYTES` close with 1009 (Hypercorn's `websocket_max_message_size` counts characters,
so a frame of multi-byte characters can get past it and is caught here by its UTF-8 size).
`subscribe` work is bounded by its distinct channels (≤ 16), and a connection that has neither
authenticated nor subscribed after `server.ws_hello_timeout_s` is closed with 1008.

Frames are answered strictly in order through the one outbound queue, so a `ping` sent after
`auth`/`subscribe` is a barrier: its `pong` means both took effect (they have no ack of their own;
a refused one answers `error`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import trio

from tap.errors import ApiError
from tap.messages import (
    BetRequest,
    ClientFrame,
    ErrorBody,
    ReqId,
    WsAuth,
    WsError,
    WsPing,
    WsPlaceBet,
    WsPong,
    WsSubscribe,
    WsUnsubscribe,
    project,
)
from tap.runtime import metrics
from tap.sessions import Session
from tap.wire import TOO_LARGE, WireError, decode_untrusted

if TYPE_CHECKING:
    from tap.edge.services import EdgeServices

_encoder = msgspec.json.Encoder()

MAX_FRAME_BYTES = 16 * 1024  # API.md: a frame is at most 16 KiB (the supervisor tells Hypercorn)
MAX_CHANNELS = 16  # API.md: distinct channels one `subscribe` may name

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013


class _EchoReqId(msgspec.Struct):
    """What a refused frame may still tell us: its `req_id`, if it is a short string. Unknown
    fields are skipped (msgspec skips without recursing), so any JSON object decodes."""

    req_id: ReqId | None = None


def _error_frame(req_id: str | None, code: str, message: str) -> str:
    return _encoder.encode(
        WsError(req_id=req_id, error=ErrorBody(code=code, message=message))
    ).decode()


async def serve_websocket(svc: EdgeServices, websocket: Any) -> None:
    """Serve one client until it leaves, misbehaves past its limits, or the server stops: the
    reader loop below answers frames in order through the hub's queue for this client, and the
    writer task is the only one that awaits the socket (module text). The close code says why
    it ended; the hub forgets the client on every way out."""
    await websocket.accept()
    sub = svc.hub.connect()
    session: Session | None = None
    bad_frames = 0
    greeted = trio.Event()  # set by the first accepted auth or subscribe
    close_code = CLOSE_GOING_AWAY

    async def reply(frame: str) -> None:
        # Replies to this client's own requests go through the hub's account queue so they are
        # ordered with bet_confirmed & co and never bypass the writer task.
        sub.send_direct(frame)

    async def writer() -> None:
        nonlocal close_code
        while True:
            frames, code = await sub.next_frames()
            for frame in frames:
                await websocket.send(frame)
            if code is not None:
                close_code = code
                return

    async def reader() -> None:
        nonlocal session, bad_frames, close_code
        while sub.close_code is None:  # closed (1013): the writer is closing; stop working
            raw = await websocket.receive()
            if not isinstance(raw, str):
                # Binary. (Quart hands an empty binary frame over as None: `bytes or text`.)
                if raw is not None and len(raw) > MAX_FRAME_BYTES:
                    close_code = CLOSE_TOO_BIG
                    return
                bad_frames += 1
                await reply(_error_frame(None, "invalid_request", "binary frames are not accepted"))
                if bad_frames > svc.cfg.server.ws_max_bad_frames:
                    close_code = CLOSE_UNSUPPORTED
                    return
                continue
            try:
                frame: ClientFrame = decode_untrusted(raw, ClientFrame, max_bytes=MAX_FRAME_BYTES)
            except WireError as e:
                if e.code == TOO_LARGE:
                    close_code = CLOSE_TOO_BIG
                    return
                bad_frames += 1
                await reply(_error_frame(_req_id_of(raw), "invalid_request", e.message))
                if bad_frames > svc.cfg.server.ws_max_bad_frames:
                    close_code = CLOSE_INVALID
                    return
                continue
            match frame:
                case WsPing(req_id=req_id):
                    await reply(_encoder.encode(WsPong(req_id=req_id)).decode())
                case WsAuth(token=token):
                    found = svc.sessions.lookup(token, svc.clock.now_ms())
                    if found is None:
                        await reply(_error_frame(None, "unauthorized", "unknown or expired token"))
                        continue
                    session = found
                    sub.set_address(found.address)
                    greeted.set()
                case WsSubscribe(channels=named):
                    channels = list(dict.fromkeys(named))  # duplicates count once (API.md)
                    if len(channels) > MAX_CHANNELS:
                        await reply(
                            _error_frame(
                                None,
                                "invalid_request",
                                f"subscribe names {len(channels)} distinct channels; "
                                f"at most {MAX_CHANNELS}",
                            )
                        )
                        continue
                    refused = svc.check_channels(channels, authed=session is not None)
                    if refused:
                        await reply(_error_frame(None, refused[0], refused[1]))
                        continue
                    fresh = [ch for ch in channels if ch not in sub.channels]
                    sub.subscribe(fresh)
                    svc.send_snapshots(sub, fresh, session)
                    greeted.set()
                case WsUnsubscribe(channels=channels):
                    sub.unsubscribe(channels)
                case WsPlaceBet() as bet:
                    if session is None:
                        await reply(_error_frame(bet.req_id, "unauthorized", "send auth first"))
                        continue
                    if not sub.can_await_commit():
                        await reply(
                            _error_frame(
                                bet.req_id,
                                "overloaded",
                                "too many bets on this connection await their commit",
                            )
                        )
                        continue
                    req = project(BetRequest, bet)
                    try:
                        placed = await svc.desk.place(session, req)
                    except ApiError as err:
                        metrics.child(metrics.BETS, "refused", err.code).inc()
                        await reply(
                            _encoder.encode(
                                WsError(
                                    req_id=bet.req_id,
                                    error=ErrorBody(code=err.code, message=err.message),
                                )
                            ).decode()
                        )
                        continue
                    # No checkpoint since the desk queued it: the commit cannot slip past.
                    # The answer (bet_ack, or the commit frame) follows the durable commit.
                    sub.await_commit(placed, bet.req_id, ack=bet.ack)

    try:
        async with trio.open_nursery() as nursery:

            async def run_reader() -> None:
                try:
                    await reader()
                finally:
                    nursery.cancel_scope.cancel()

            async def run_writer() -> None:
                try:
                    await writer()
                finally:
                    nursery.cancel_scope.cancel()

            async def watch_shutdown() -> None:
                nonlocal close_code
                await svc.stopping.wait()
                close_code = CLOSE_GOING_AWAY
                nursery.cancel_scope.cancel()

            async def close_if_silent() -> None:
                # A socket that neither authenticates nor subscribes only holds a descriptor
                # and a connection task: API.md lets it go after 10 s (1008).
                nonlocal close_code
                with trio.move_on_after(svc.cfg.server.ws_hello_timeout_s):
                    await greeted.wait()
                    return
                close_code = CLOSE_POLICY
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_reader)
            nursery.start_soon(run_writer)
            nursery.start_soon(watch_shutdown)
            nursery.start_soon(close_if_silent)
    finally:
        svc.hub.disconnect(sub)
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await websocket.close(close_code)
        except Exception:
            pass


def _req_id_of(raw: str) -> str | None:
    """The `req_id` of a refused frame, to echo in its `error` — only if it is a string of at
    most 64 characters (API.md), read by a typed decode of a frame `tap.wire` already sized and
    depth-checked (anything else: None)."""
    try:
        return decode_untrusted(raw, _EchoReqId, max_bytes=MAX_FRAME_BYTES).req_id
    except WireError:
        return None
