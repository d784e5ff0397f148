"""The synchronous client's transport: httpcore's connection pool under one deadline per call.

httpx's timeouts bound each wait on its own (connecting, each read, each write), so a server
that trickles a byte now and then keeps a blocking call alive for as long as it likes. This
wraps httpcore's socket backend so that every wait is cut to what is left of the attempt's
deadline (`deadline`, set by `Client` around each attempt), which bounds the whole attempt by
`timeout_s`. It owns no policy: what to do on a timeout is the client's. The asyncio client
does not need it: `anyio.fail_after` cancels the whole attempt.
"""

from __future__ import annotations

import contextvars
import ssl
import time
import typing
from typing import Any, Iterable, Iterator, Optional

import httpcore
import httpx

deadline: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar(
    "corecast_deadline", default=None
)
"""`time.monotonic()` by which the current attempt must be done, or `None` for no deadline."""


def _left_s(timeout: Optional[float], error: type) -> Optional[float]:
    """`timeout` cut to what is left before the deadline; raises `error` once it passed."""
    end = deadline.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the call's timeout passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._inner.read(max_bytes, _left_s(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._inner.write(buffer, _left_s(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _left_s(timeout, httpcore.ConnectTimeout)
        )
        return _Stream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.connect_tcp(
            host, port, _left_s(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _Stream(inner)

    def connect_unix_socket(
        self,
        path: str,
        timeout: Optional[float] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.connect_unix_socket(
            path, _left_s(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _Stream(inner)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Body(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class Transport(httpx.BaseTransport):
    """An httpx transport over httpcore's pool with the deadline backend.

    httpcore's own exceptions come out of it unmapped (`httpcore.ConnectError`, `ReadTimeout`,
    ...); `Client` turns them into corecast's. `keepalive_s` is how long an idle pooled
    connection is kept: below the server's `api_idle_timeout_ms` (30 s), so the pool does not
    send on a connection the server is closing.
    """

    def __init__(
        self, ssl_context: ssl.SSLContext, keepalive_s: float, connections_max: int
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=connections_max,
            keepalive_expiry=keepalive_s,
            network_backend=_Backend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._pool.handle_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=typing.cast(Iterable[bytes], request.stream),
                extensions=request.extensions,
            )
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(typing.cast(Iterable[bytes], response.stream)),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
