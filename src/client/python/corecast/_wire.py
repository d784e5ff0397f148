"""What both clients do around httpx the same way: the TLS context, turning httpx's and
httpcore's exceptions into corecast's, and reading a body under `response_bytes_max`.

It holds no state and makes no decision about retrying (that is `_protocol.retry_delay_s`).
"""

from __future__ import annotations

import ssl
from typing import Optional, Union

import certifi
import httpcore
import httpx

from .errors import CorecastError, ProtocolError, RequestTimeout, TransportError

Verify = Union[bool, ssl.SSLContext]
"""How an `https://` server's certificate is checked: `True`, against the public CAs
(certifi's); a context of your own (a private CA: `ssl.create_default_context(cafile=..)`);
`False`, not at all (never outside a test)."""


def ssl_context(verify: Verify) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify:
        return ssl.create_default_context(cafile=certifi.where())
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_BEFORE_SEND = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpcore.ConnectError,
    httpcore.ConnectTimeout,
    httpcore.PoolTimeout,
)
_TIMEOUTS = (httpx.TimeoutException, httpcore.TimeoutException, TimeoutError)
_BROKEN = (httpx.TransportError, httpcore.NetworkError, httpcore.ProtocolError, OSError)


def transport_error(error: BaseException, url: str, timeout_s: float) -> Optional[CorecastError]:
    """corecast's exception for what httpx or httpcore raised, or `None` if it is neither's."""
    before_send = isinstance(error, _BEFORE_SEND)
    if isinstance(error, _TIMEOUTS):
        return RequestTimeout(
            f"no whole answer from {url} within timeout_s={timeout_s}"
            + (" (no connection)" if before_send else ""),
            before_send=before_send,
        )
    if isinstance(error, _BROKEN):
        what = "could not connect to" if before_send else "the connection failed with"
        return TransportError(f"{what} {url}: {type(error).__name__}: {error}", before_send)
    return None


class Body:
    """A response body gathered chunk by chunk, refused past `bytes_max`."""

    def __init__(self, status: int, bytes_max: int) -> None:
        self.status = status
        self.bytes_max = bytes_max
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.bytes_max:
            raise ProtocolError(
                f"the answer is over response_bytes_max={self.bytes_max}",
                self.status,
                bytes(self.data),
            )
