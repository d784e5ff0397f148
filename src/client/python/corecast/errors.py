"""The exceptions a corecast client raises: every failure is a `CorecastError`.

Three kinds, by who is at fault and what the caller can do:

- `ApiError`: the server answered with its JSON error (`{"error":{"code":..,"message":..}}`);
  it carries the HTTP status, the server's `code` and message. Match on `code`, not on the
  message text, which may change.
- `TransportError` (and its `RequestTimeout`): no answer came: the server is down, the
  connection broke, or the timeout passed first.
- `ProtocolError`: something answered, but not as the corecast API does (not JSON, the wrong
  shape, a body over `response_bytes_max`): usually the wrong address, or a proxy in between.

This module owns only the types; the code that decides which to raise is in `_protocol`.
"""

from __future__ import annotations

from typing import Optional


class CorecastError(Exception):
    """Any failure of a corecast client call."""


class ApiError(CorecastError):
    """The server refused the request with its JSON error body.

    `status` is the HTTP status (400, 401, 403, 404, 405, 408, 413, 429, 503, 504, ...), `code`
    the server's error code (`bad_request`, `invalid_channel`, `unauthorized`, `forbidden`,
    `overloaded`, `rate_limited`, `outcome_unknown`, ...; README, "Errors"), `message` its text,
    `retry_after_s` the `Retry-After` header in seconds when the server sent one, and
    `attempts` how many times the request was sent (more than 1 after retries).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after_s: Optional[float] = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.attempts = attempts


class TransportError(CorecastError):
    """No answer: the server could not be reached or the connection failed mid-request.

    `before_send` is true when the connection itself failed (refused, or no connection
    within the timeout), so nothing reached the server. Otherwise a publish's outcome is
    unknown: look for the message in `history` before publishing it again.
    """

    def __init__(self, message: str, before_send: bool = False) -> None:
        super().__init__(message)
        self.before_send = before_send


class RequestTimeout(TransportError):
    """The request's `timeout_s` passed before the whole answer arrived."""


class ProtocolError(CorecastError):
    """An answer that is not the corecast API's: not JSON, the wrong shape, or too large.

    `status` is the HTTP status it came with and `body` its first 200 bytes, for the log.
    """

    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(f"{message} (HTTP {status}, body starts {body[:200]!r})")
        self.status = status
        self.body = body[:200]
