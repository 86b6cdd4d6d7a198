"""`hypercorn_config(cfg, reuse_port=True)`: several processes' listeners share one port.

The edges of `tap serve --edges N` all bind the public port; the kernel spreads connections over
them (SO_REUSEPORT). Without the flag a second listener on a taken port fails, as it always did.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import msgspec
import pytest

from tap.config import load_config
from tap.runtime.supervisor import hypercorn_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _listen(port: int, *, reuse_port: bool, into: list[socket.socket]) -> None:
    cfg = load_config(environ={})
    cfg = msgspec.structs.replace(
        cfg, server=msgspec.structs.replace(cfg.server, host="127.0.0.1", port=port)
    )
    sockets = hypercorn_config(cfg, reuse_port=reuse_port).create_sockets()
    into.extend(sockets.insecure_sockets)
    for sock in sockets.insecure_sockets:
        sock.listen()


def test_two_reuse_port_listeners_share_one_port(listeners: list[socket.socket]) -> None:
    port = _free_port()
    _listen(port, reuse_port=True, into=listeners)
    _listen(port, reuse_port=True, into=listeners)
    assert [s.getsockname()[1] for s in listeners] == [port, port]
    assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in listeners)


def test_without_reuse_port_a_taken_port_is_refused(listeners: list[socket.socket]) -> None:
    port = _free_port()
    _listen(port, reuse_port=False, into=listeners)
    with pytest.raises(OSError):
        _listen(port, reuse_port=False, into=listeners)
