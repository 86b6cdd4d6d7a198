"""One WebSocket client: a reader loop (auth, subscribe, place_bet, ping) and a writer task.

The hub owns the client's outbound queue; this module only moves frames between it and the
socket. The writer is the only task that awaits the socket, so a client that stops reading stalls
nobody but itself (DESIGN rule 4). Garbage gets an `error` frame; more than
`server.ws_max_bad_frames` of it closes the connection with 1003 (binary) or 1007 (bad JSON /
bad shape). Server shutdown closes every client with 1001.

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
    WsAuth,
    WsBetAck,
    WsError,
    WsPing,
    WsPlaceBet,
    WsPong,
    WsSubscribe,
    WsUnsubscribe,
)
from tap.runtime import metrics
from tap.sessions import Session

if TYPE_CHECKING:
    from tap.edge.services import EdgeServices

_decoder = msgspec.json.Decoder(ClientFrame)
_encoder = msgspec.json.Encoder()

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


def _error_frame(req_id: str | None, code: str, message: str) -> str:
    return _encoder.encode(
        WsError(req_id=req_id, error=ErrorBody(code=code, message=message))
    ).decode()


async def serve_websocket(svc: EdgeServices, websocket: Any) -> None:
    await websocket.accept()
    sub = svc.hub.connect()
    session: Session | None = None
    bad_frames = 0
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
        while True:
            raw = await websocket.receive()
            if isinstance(raw, bytes):
                bad_frames += 1
                await reply(_error_frame(None, "invalid_request", "binary frames are not accepted"))
                if bad_frames > svc.cfg.server.ws_max_bad_frames:
                    close_code = CLOSE_UNSUPPORTED
                    return
                continue
            try:
                frame = _decoder.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                bad_frames += 1
                await reply(_error_frame(_req_id_of(raw), "invalid_request", str(e)))
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
                case WsSubscribe(channels=channels):
                    refused = svc.check_channels(channels, authed=session is not None)
                    if refused:
                        await reply(_error_frame(None, refused[0], refused[1]))
                        continue
                    sub.subscribe(channels)
                    svc.send_snapshots(sub, channels, session)
                case WsUnsubscribe(channels=channels):
                    sub.unsubscribe(channels)
                case WsPlaceBet() as bet:
                    if session is None:
                        await reply(_error_frame(bet.req_id, "unauthorized", "send auth first"))
                        continue
                    req = BetRequest(
                        cell_id=bet.cell_id,
                        amount=bet.amount,
                        nonce=bet.nonce,
                        timestamp=bet.timestamp,
                        chain_id=bet.chain_id,
                        signature=bet.signature,
                        min_multiplier_bps=bet.min_multiplier_bps,
                    )
                    try:
                        placed = await svc.desk.place(session, req)
                    except ApiError as err:
                        metrics.BETS.labels(f"refused:{err.code}").inc()
                        await reply(
                            _encoder.encode(
                                WsError(
                                    req_id=bet.req_id,
                                    error=ErrorBody(code=err.code, message=err.message),
                                )
                            ).decode()
                        )
                        continue
                    await reply(_encoder.encode(WsBetAck(req_id=bet.req_id, bet=placed)).decode())

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

            nursery.start_soon(run_reader)
            nursery.start_soon(run_writer)
            nursery.start_soon(watch_shutdown)
    finally:
        svc.hub.disconnect(sub)
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await websocket.close(close_code)
        except Exception:
            pass


def _req_id_of(raw: str) -> str | None:
    """Best effort: echo req_id from a frame that failed validation."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if isinstance(value, dict):
        rid = value.get("req_id")
        return rid if isinstance(rid, str) else None
    return None
