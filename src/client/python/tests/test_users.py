"""Users and presence against the real `corecast serve` (PROTOCOL.md, "Users", "Presence"):
a publish to a user reaches that user's WebSocket as a `$user` message with the offset the
client returned, in a batch too; `disconnect_user` closes it with 4010 and the reason;
`subscribe_user` and `unsubscribe_user` reach it as `server: true` frames; a publish names
exactly one of channel and user. `presence` is checked against a stub answering PROTOCOL.md's
shape (the request line, the parsed members, a malformed answer), sync and async. The
WebSocket side is a minimal reader over a plain socket (the package has no WebSocket client),
checking every frame it gets.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import uuid
from typing import Any, Callable, Dict, Tuple

import pytest
from conftest import Handler, Server, Stub, answer

from corecast import (
    ApiError,
    AsyncClient,
    Client,
    Member,
    Presence,
    ProtocolError,
    Published,
    PublishMessage,
)


def fresh_user() -> str:
    """A user no other test publishes to."""
    return f"user-{uuid.uuid4().hex[:12]}"


class Socket:
    """A WebSocket connection of `user`, read frame by frame; it never sends after the upgrade
    (the server needs nothing from it within a test)."""

    def __init__(self, server: Server, user: str) -> None:
        host, port = server.ws.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws?user={user} HTTP/1.1\r\nHost: {server.ws}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.connected = self.text()
        assert self.connected["type"] == "connected", self.connected

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        assert chunk, "expected more from the server, got end of stream"
        return chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.buffer += self._recv()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def frame(self) -> Tuple[int, bytes]:
        """The next frame's opcode and payload (the server never masks nor fragments)."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(length)

    def text(self) -> Dict[str, Any]:
        """The next text frame as JSON, skipping the server's pings."""
        while True:
            opcode, payload = self.frame()
            if opcode == 0x9:
                continue
            assert opcode == 0x1, f"expected a text frame, got opcode {opcode}: {payload!r}"
            value = json.loads(payload)
            assert isinstance(value, dict)
            return value

    def close_frame(self) -> Tuple[int, str]:
        """The server's close code and reason, skipping anything before it."""
        while True:
            opcode, payload = self.frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()

    def close(self) -> None:
        self.sock.close()


def assert_user_message(frame: Dict[str, Any], offset: int, data: Any) -> None:
    assert (frame["type"], frame["channel"], frame["offset"], frame["data"]) == (
        "message",
        "$user",
        offset,
        data,
    ), frame


def test_a_publish_to_a_user_reaches_its_connection(server: Server) -> None:
    user = fresh_user()
    ada = Socket(server, user)
    try:
        assert ada.connected["user"] == user
        with Client(server.api) as corecast:
            first = corecast.publish(user=user, data={"note": 1})
            assert first == Published(channel="$user", offset=1, user=user)
            assert_user_message(ada.text(), 1, {"note": 1})
            batch = corecast.publish_batch(
                [
                    PublishMessage.to_user(user, 2),
                    PublishMessage("plain.channel", 3),
                    PublishMessage(None, 4, user=user),
                ]
            )
            assert [(p.channel, p.offset, p.user) for p in batch] == [
                ("$user", 2, user),
                ("plain.channel", batch[1].offset, None),
                ("$user", 3, user),
            ]
            assert_user_message(ada.text(), 2, 2)
            assert_user_message(ada.text(), 3, 4)
    finally:
        ada.close()


def test_server_side_subscriptions_and_a_disconnect_reach_the_user(server: Server) -> None:
    user = fresh_user()
    ada = Socket(server, user)
    pattern = f"quotes{uuid.uuid4().hex[:8]}.*"
    try:
        with Client(server.api) as corecast:
            corecast.subscribe_user(user, pattern)
            subscribed = ada.text()
            assert (subscribed["type"], subscribed["channel"], subscribed["server"]) == (
                "subscribed",
                pattern,
                True,
            ), subscribed
            corecast.unsubscribe_user(user, pattern)
            assert ada.text() == {"type": "unsubscribed", "channel": pattern, "server": True}
            corecast.disconnect_user(user, reason="signed out")
            assert ada.close_frame() == (4010, "signed out")
            # A user without a connection is no error.
            corecast.disconnect_user(fresh_user())
    finally:
        ada.close()


PRESENCE = json.dumps(
    {
        "channel": "room.1",
        "connections": 3,
        "users": 2,
        "members": [
            {"user": "ada", "conn_id": "0-1", "info": {"name": "Ada"}},
            {"user": "ada", "conn_id": "1-4"},
            {"user": None, "conn_id": "1-7"},
        ],
        "truncated": True,
    }
).encode()

EXPECTED_PRESENCE = Presence(
    channel="room.1",
    connections=3,
    users=2,
    members=[
        Member(conn_id="0-1", user="ada", info={"name": "Ada"}),
        Member(conn_id="1-4", user="ada"),
        Member(conn_id="1-7"),
    ],
    truncated=True,
)


def answering(*bodies: bytes) -> Handler:
    """Answers connection n with 200 and `bodies[n]`."""

    def handle(conn: socket.socket, number: int) -> None:
        conn.sendall(answer(200, bodies[min(number, len(bodies) - 1)]))

    return handle


def test_presence_reads_the_contracts_answer(stub: Callable[[Handler], Stub]) -> None:
    counts = b'{"channel":"room.1","connections":0,"users":0}'
    running = stub(answering(PRESENCE, counts, b'{"channel":"room.1","users":0}'))
    with Client(running.url, retries=0) as corecast:
        assert corecast.presence("room.1") == EXPECTED_PRESENCE
        assert corecast.presence("room.1", members=False) == Presence("room.1", 0, 0, [])
        with pytest.raises(ProtocolError, match="`connections` is not a non-negative integer"):
            corecast.presence("room.1")
    lines = [head.split(b"\r\n")[0] for head in running.heads]
    assert lines == [
        b"GET /v1/presence?channel=room.1 HTTP/1.1",
        b"GET /v1/presence?channel=room.1&members=false HTTP/1.1",
        b"GET /v1/presence?channel=room.1 HTTP/1.1",
    ]


async def test_async_presence(stub: Callable[[Handler], Stub]) -> None:
    running = stub(answering(PRESENCE))
    async with AsyncClient(running.url, retries=0) as corecast:
        assert await corecast.presence("room.1") == EXPECTED_PRESENCE


def test_a_publish_names_exactly_one_of_channel_and_user(server: Server) -> None:
    with Client(server.api) as corecast:
        with pytest.raises(ValueError, match="exactly one of channel and user"):
            corecast.publish("a.b", 1, user="ada")
        with pytest.raises(ValueError, match="exactly one of channel and user"):
            corecast.publish(data=1)
        with pytest.raises(TypeError, match="publish needs data"):
            corecast.publish(user="ada")
        with pytest.raises(ValueError, match="exactly one of channel and user"):
            corecast.publish_batch([PublishMessage(None, 1)])
        with pytest.raises(ApiError) as bad_user:
            corecast.publish(user="", data=1)
        assert (bad_user.value.status, bad_user.value.code) == (400, "invalid_user")


async def test_async_users(server: Server) -> None:
    user = fresh_user()
    ada = Socket(server, user)
    try:
        async with AsyncClient(server.api) as corecast:
            published = await corecast.publish(user=user, data="hi")
            assert published == Published(channel="$user", offset=1, user=user)
            assert_user_message(ada.text(), 1, "hi")
            await corecast.subscribe_user(user, "news")
            assert ada.text()["server"] is True
            await corecast.unsubscribe_user(user, "news")
            assert ada.text()["type"] == "unsubscribed"
            await corecast.disconnect_user(user)
            assert ada.close_frame() == (4010, "disconnected by the server")
    finally:
        ada.close()
