"""The clients against servers that misbehave, played by a stub on a free port: a 503
`overloaded` is retried after its `Retry-After`, a bounded number of times; what must not be
retried is sent once; garbage raises `ProtocolError`; and a server that is down, silent or
trickling raises within the timeout instead of hanging. Every test asserts the exception, the
number of requests the stub read, and the time taken; sync and async both.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Callable, List

import pytest
from conftest import Handler, Stub, answer

from corecast import (
    ApiError,
    AsyncClient,
    Client,
    ProtocolError,
    Published,
    RequestTimeout,
    TransportError,
)

Start = Callable[[Handler], Stub]

OVERLOADED = json.dumps(
    {"error": {"code": "overloaded", "message": "the publish lanes are full"}}
).encode()
PUBLISHED = b'{"channel":"leads.42","offset":7}'


def replies(*responses: bytes) -> Handler:
    """Answers connection n with `responses[n]` (the last one for every later connection)."""

    def handle(conn: socket.socket, number: int) -> None:
        conn.sendall(responses[min(number, len(responses) - 1)])

    return handle


def silent(stub_stopping: List[Stub]) -> Handler:
    """Reads the request and never answers, until the stub stops."""

    def handle(conn: socket.socket, number: int) -> None:
        stub_stopping[0].stopping.wait(30)

    return handle


def trickle(conn: socket.socket, number: int) -> None:
    """Sends a response head one byte every 0.1 s: never a whole answer within a second."""
    for byte in b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-padding: " + b"a" * 200:
        try:
            conn.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(0.1)


def test_503_overloaded_is_retried_after_retry_after(stub: Start) -> None:
    server = stub(replies(answer(503, OVERLOADED, "retry-after: 1\r\n"), answer(200, PUBLISHED)))
    with Client(server.url, backoff_base_s=0.01) as corecast:
        started = time.monotonic()
        assert corecast.publish("leads.42", 1) == Published("leads.42", 7)
        took = time.monotonic() - started
    assert server.requests == 2
    assert 1.0 <= took < 3.0, f"expected to wait Retry-After (1 s) once, took {took:.2f} s"


def test_retries_are_bounded_and_the_last_error_raised(stub: Start) -> None:
    server = stub(replies(answer(503, OVERLOADED, "retry-after: 0\r\n")))
    with Client(server.url, retries=2, backoff_base_s=0.01, backoff_cap_s=0.05) as corecast:
        with pytest.raises(ApiError) as raised:
            corecast.publish("leads.42", 1)
    assert (raised.value.status, raised.value.code, raised.value.attempts) == (503, "overloaded", 3)
    assert raised.value.retry_after_s == 0.0
    assert server.requests == 3


@pytest.mark.parametrize(
    "status,code",
    [(503, "shutting_down"), (504, "outcome_unknown"), (429, "rate_limited"), (400, "bad_request")],
)
def test_other_errors_are_not_retried(stub: Start, status: int, code: str) -> None:
    body = json.dumps({"error": {"code": code, "message": "no"}}).encode()
    server = stub(replies(answer(status, body)))
    with Client(server.url, backoff_base_s=0.01) as corecast:
        with pytest.raises(ApiError) as raised:
            corecast.publish("leads.42", 1)
    assert (raised.value.status, raised.value.code, raised.value.message) == (status, code, "no")
    assert server.requests == 1


@pytest.mark.parametrize(
    "response,what",
    [
        (answer(200, b"<html>hello</html>"), "not JSON"),
        (answer(200, b'{"channel":"leads.42","offset":"7"}'), "`offset`"),
        (answer(200, b"[1,2]"), "not an object"),
        (answer(502, b"Bad Gateway"), "not JSON"),
        (answer(500, b'{"error":"boom"}'), "`error` is not an object"),
    ],
)
def test_garbage_raises_protocol_error(stub: Start, response: bytes, what: str) -> None:
    server = stub(replies(response))
    with Client(server.url) as corecast:
        with pytest.raises(ProtocolError) as raised:
            corecast.publish("leads.42", 1)
    assert what in str(raised.value)
    assert raised.value.status == int(response.split(b" ")[1])
    assert server.requests == 1


def test_an_answer_over_response_bytes_max_is_refused(stub: Start) -> None:
    server = stub(
        replies(answer(200, b'{"channels":[' + b'{"channel":"a","subscribers":1},' * 100 + b"]}"))
    )
    with Client(server.url, response_bytes_max=1024) as corecast:
        with pytest.raises(ProtocolError, match="response_bytes_max=1024"):
            corecast.channels()


def test_a_silent_server_times_out_and_a_publish_is_not_resent(stub: Start) -> None:
    holder: List[Stub] = []
    server = stub(silent(holder))
    holder.append(server)
    with Client(server.url, timeout_s=0.5, retries=3, backoff_base_s=0.01) as corecast:
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as raised:
            corecast.publish("leads.42", 1)
        took = time.monotonic() - started
    assert "timeout_s=0.5" in str(raised.value)
    assert server.requests == 1, "a publish that may have arrived is never sent again"
    assert 0.5 <= took < 1.0, f"expected the timeout at 0.5 s, took {took:.2f} s"


def test_a_silent_server_times_out_and_a_get_is_retried(stub: Start) -> None:
    holder: List[Stub] = []
    server = stub(silent(holder))
    holder.append(server)
    with Client(server.url, timeout_s=0.3, retries=1, backoff_base_s=0.01) as corecast:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            corecast.stats()
        took = time.monotonic() - started
    assert server.requests == 2
    assert 0.6 <= took < 1.2, f"expected two timeouts of 0.3 s, took {took:.2f} s"


def test_a_trickling_server_cannot_stretch_the_timeout(stub: Start) -> None:
    server = stub(trickle)
    with Client(server.url, timeout_s=0.5, retries=0) as corecast:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            corecast.stats()
        took = time.monotonic() - started
    assert 0.5 <= took < 0.9, f"expected the whole call cut at 0.5 s, took {took:.2f} s"


def closed_port() -> str:
    """The URL of a port nothing listens on (bound, then released)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_server_that_is_down_raises_after_the_retries() -> None:
    with Client(closed_port(), retries=2, backoff_base_s=0.01, backoff_cap_s=0.02) as corecast:
        started = time.monotonic()
        with pytest.raises(TransportError) as raised:
            corecast.publish("leads.42", 1)
        took = time.monotonic() - started
    assert raised.value.before_send
    assert "could not connect" in str(raised.value)
    assert took < 1.0


async def test_async_retries_503_overloaded(stub: Start) -> None:
    server = stub(replies(answer(503, OVERLOADED, "retry-after: 1\r\n"), answer(200, PUBLISHED)))
    async with AsyncClient(server.url, backoff_base_s=0.01) as corecast:
        started = time.monotonic()
        assert await corecast.publish("leads.42", 1) == Published("leads.42", 7)
        took = time.monotonic() - started
    assert server.requests == 2
    assert 1.0 <= took < 3.0


async def test_async_bounded_retries_and_garbage(stub: Start) -> None:
    overloaded = stub(replies(answer(503, OVERLOADED)))
    async with AsyncClient(overloaded.url, retries=1, backoff_base_s=0.01) as corecast:
        with pytest.raises(ApiError) as raised:
            await corecast.publish("leads.42", 1)
    assert (raised.value.code, raised.value.attempts, overloaded.requests) == ("overloaded", 2, 2)

    garbage = stub(replies(answer(200, b"not json")))
    async with AsyncClient(garbage.url) as corecast:
        with pytest.raises(ProtocolError, match="not JSON"):
            await corecast.history("leads.42")


async def test_async_silent_and_trickling_servers_time_out(stub: Start) -> None:
    holder: List[Stub] = []
    silent_server = stub(silent(holder))
    holder.append(silent_server)
    trickling = stub(trickle)
    for url in (silent_server.url, trickling.url):
        async with AsyncClient(url, timeout_s=0.5, retries=0) as corecast:
            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                await corecast.stats()
            took = time.monotonic() - started
        assert 0.5 <= took < 0.9, f"{url}: expected the timeout at 0.5 s, took {took:.2f} s"


async def test_async_server_down() -> None:
    async with AsyncClient(closed_port(), retries=1, backoff_base_s=0.01) as corecast:
        with pytest.raises(TransportError) as raised:
            await corecast.publish("leads.42", 1)
    assert raised.value.before_send
