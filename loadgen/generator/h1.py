"""A minimal HTTP/1.1 keep-alive client over one trio TCP stream, for the generator's hot path.

It decides only what a load generator needs: write one request (pre-encoded headers, a body with
Content-Length), read one response (status, headers, a Content-Length or chunked body), keep the
connection for the next request, and reconnect when the server closed it. No redirects, cookies,
proxies, TLS, pipelining or HTTP/2. It leaves timeouts to the caller (wrap a call in
`trio.fail_after`; a call interrupted half-way drops the connection, since its state is unknown).

Why not httpx: on this path httpx (via anyio, httpcore and h11) costs several times the CPU per
request of this client — measured by `python -m loadgen bench client` — and the generator must
not become the thing being measured.

A request on a reused connection that dies before any response byte arrives is sent once more on
a fresh connection: the server closed an idle keep-alive connection under us, so it never read
the request (the ordinary HTTP client behaviour; bets also carry an idempotency nonce).
"""

from __future__ import annotations

import trio


class HttpError(Exception):
    """The server's bytes were not an HTTP/1.1 response we understand, or it hung up."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: bytes, body: bytes) -> None:
        self.status = status
        self.headers = headers  # raw header block, lowercased
        self.body = body


_CRLF2 = b"\r\n\r\n"


class HttpConnection:
    """One keep-alive connection to `host:port`; one request at a time."""

    def __init__(self, host: str, port: int, *, idle_limit: float = 4.0) -> None:
        self.host = host
        self.port = port
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        # Hypercorn closes keep-alive connections idle for 5 s by default; reconnect before that
        # rather than race the server's close.
        self.idle_limit = idle_limit
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()
        self._last_used = 0.0
        self.connects = 0

    async def _connect(self) -> trio.SocketStream:
        self._drop()
        stream = await trio.open_tcp_stream(self.host, self.port)
        self._stream = stream
        self.connects += 1
        return stream

    async def warm(self) -> None:
        """Open the connection now if it is closed or about to be considered stale, so a burst
        of requests does not turn into a burst of TCP handshakes (the server's listen backlog
        is finite: Hypercorn's default is 100, and a dropped SYN costs a 1 s retransmit)."""
        if self._stream is None or trio.current_time() - self._last_used > self.idle_limit / 2:
            await self._connect()
            self._last_used = trio.current_time()

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.socket.close()
            self._stream = None
        self._buf.clear()

    def close(self) -> None:
        self._drop()

    def head(self, method: str, path: str, headers: bytes = b"") -> bytes:
        """The request line and headers up to (not including) Content-Length, to reuse."""
        return f"{method} {path} HTTP/1.1\r\n".encode() + self._host_header + headers

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: bytes = b""
    ) -> Response:
        return await self.send(self.head(method, path, headers), body)

    async def send(self, head: bytes, body: bytes = b"") -> Response:
        """Send `head` (from `head()`) with `body`; return the response."""
        data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        now = trio.current_time()
        stream = self._stream
        reused = stream is not None and now - self._last_used < self.idle_limit
        if not reused:
            stream = await self._connect()
        assert stream is not None
        try:
            try:
                await stream.send_all(data)
                response = await self._read_response(stream)
            except (HttpError, trio.BrokenResourceError, OSError) as e:
                if not reused or self._buf or (isinstance(e, HttpError) and e.args[0] != "closed"):
                    raise
                stream = await self._connect()
                await stream.send_all(data)
                response = await self._read_response(stream)
        except BaseException:
            self._drop()
            raise
        self._last_used = trio.current_time()
        if b"\r\nconnection: close" in response.headers:
            self._drop()
        return response

    async def _fill(self, stream: trio.SocketStream) -> None:
        data = await stream.receive_some(65536)
        if not data:
            raise HttpError("closed")
        self._buf += data

    async def _read_response(self, stream: trio.SocketStream) -> Response:
        buf = self._buf
        while True:
            end = buf.find(_CRLF2)
            if end >= 0:
                break
            await self._fill(stream)
            if len(buf) > 65536:
                raise HttpError("response header block too large")
        head = bytes(buf[:end]).lower()
        del buf[: end + 4]
        if not head.startswith(b"http/1."):
            raise HttpError(f"not an HTTP/1.x response: {head[:40]!r}")
        try:
            status = int(head[9:12])
        except ValueError as e:
            raise HttpError(f"bad status line: {head[:40]!r}") from e
        if 100 <= status < 200:  # an interim response: the real one follows
            return await self._read_response(stream)
        if status in (204, 304):
            return Response(status, head, b"")
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 17)
            length = int(head[i + 17 : j if j >= 0 else len(head)])
            while len(buf) < length:
                await self._fill(stream)
            body = bytes(buf[:length])
            del buf[:length]
            return Response(status, head, body)
        if b"\r\ntransfer-encoding: chunked" in head:
            return Response(status, head, await self._read_chunked(stream))
        raise HttpError("response without Content-Length or chunked encoding")

    async def _read_chunked(self, stream: trio.SocketStream) -> bytes:
        buf = self._buf
        out = bytearray()
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                await self._fill(stream)
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            del buf[: eol + 2]
            if size == 0:
                while (end := buf.find(b"\r\n")) != 0:  # trailers end with an empty line
                    if end < 0:
                        await self._fill(stream)
                    else:
                        del buf[: end + 2]
                del buf[:2]
                return bytes(out)
            while len(buf) < size + 2:
                await self._fill(stream)
            out += buf[:size]
            del buf[: size + 2]
