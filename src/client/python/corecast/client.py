"""`Client`: the blocking client, for a Celery task, a Django view or a script.

It sends each `_protocol.Operation` over one pooled httpx client and sleeps between retries;
every route, shape, error and retry rule is `_protocol`'s, shared with `AsyncClient`. One
`Client` is safe to share between threads (httpx's pool is) and should be: it keeps
connections open between calls. It never retries outside `_protocol.retry_delay_s`'s rules.
"""

from __future__ import annotations

import random
import time
from types import TracebackType
from typing import Any, Iterable, List, Optional, Type, TypeVar

import httpx

from . import _deadline, _protocol, _wire
from .errors import CorecastError
from .models import (
    ChannelInfo,
    HistoryPage,
    Presence,
    Priority,
    Published,
    PublishMessage,
    Stats,
)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8081"
"""The control plane's default address (`--api`)."""


class Client:
    """A blocking client of corecast's control-plane API (`--api`, port 8081 by default).

    - `base_url`: `http://host:port` or `https://host:port` (a path prefix is kept).
    - `api_key`: sent as `Authorization: Bearer <key>`, for a server with `[[api_keys]]`;
      a tenant's key publishes into its tenant and reads its history only (README, "Tenants").
    - `timeout_s`: the most one attempt takes, from connecting to the last byte of the
      answer (default 5 s). A call takes at most `(retries + 1) * timeout_s` plus the waits.
    - `retries`: how many times a call is sent again (0 to 10, default 3) after a 503
      `overloaded`, `too_many_connections` or `cluster_unavailable`, a refused connection, or
      (GETs only) a timeout or a broken connection. Waits are full jitter from
      `backoff_base_s` (0.1 s) doubling to `backoff_cap_s` (5 s), and at least the server's
      `Retry-After` (held to the cap). More retries ride out longer overloads but hold the
      caller longer; 0 leaves retrying to the caller.
    - `response_bytes_max`: the largest answer read (default 64 MiB: a `history` page of
      `recovery_messages_max` large messages fits); more raises `ProtocolError`.
    - `verify`: the certificate check for `https://` (see `corecast._wire.Verify`).
    - `connections_max` (10) and `keepalive_s` (15 s, below the server's 30 s
      `api_idle_timeout_ms`): the pool's size and how long an idle connection is kept.

    Every failure raises a `corecast.CorecastError`: `ApiError` (the server's status, `code`
    and message), `TransportError`/`RequestTimeout`, or `ProtocolError` (not a corecast answer).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: Optional[str] = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        response_bytes_max: int = 64 << 20,
        verify: _wire.Verify = True,
        connections_max: int = 10,
        keepalive_s: float = 15.0,
    ) -> None:
        self._settings = _protocol.Settings(
            base_url=_protocol.check_url(base_url),
            api_key=api_key,
            timeout_s=timeout_s,
            retries=retries,
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            response_bytes_max=response_bytes_max,
        )
        self._rng = random.Random()
        self._http = httpx.Client(
            base_url=self._settings.base_url,
            headers=self._settings.headers(),
            timeout=timeout_s,
            transport=_deadline.Transport(
                _wire.ssl_context(verify), keepalive_s=keepalive_s, connections_max=connections_max
            ),
        )

    def publish(
        self,
        channel: Optional[str] = None,
        data: Any = _protocol.NO_DATA,
        *,
        user: Optional[str] = None,
        priority: Optional[Priority] = None,
        tenant: Optional[str] = None,
    ) -> Published:
        """Publishes `data` (any JSON value) to `channel`, or with `user` instead to every
        connection of that user (their `$user` stream, on every shard and node); returns the
        offset it was given (in the channel, or in the user's stream).

        `priority` is `"critical"`, `"high"` or `"normal"` (the server's default); `tenant`
        publishes in that tenant (an operator's key; a tenant's key implies its own).
        """
        return self._call(_protocol.publish(channel, data, priority, tenant, user))

    def publish_batch(self, messages: Iterable[PublishMessage]) -> List[Published]:
        """Publishes every message or none (a refusal raises, and none was published), in
        order, one right after the other; returns their offsets in the same order."""
        return self._call(_protocol.publish_batch(list(messages)))

    def history(
        self,
        channel: str,
        *,
        since: int = 0,
        limit: Optional[int] = None,
        tenant: Optional[str] = None,
    ) -> HistoryPage:
        """The stored messages of `channel` after offset `since`, oldest first, at most `limit`
        (the server's default 100, and at most its `recovery_messages_max`)."""
        return self._call(_protocol.history(channel, since, limit, tenant))

    def disconnect_user(self, user: str, reason: Optional[str] = None) -> None:
        """Closes every connection of `user` on every node with close code 4010 and `reason`
        (the server's default: "disconnected by the server"). A user with no connection is
        no error."""
        self._call(_protocol.disconnect_user(user, reason))

    def subscribe_user(self, user: str, channel: str) -> None:
        """Subscribes every live connection of `user` to `channel` (a channel or pattern);
        each receives a `subscribed` frame with `"server": true`. Later connections are not
        subscribed by this."""
        self._call(_protocol.subscribe_user(user, channel))

    def unsubscribe_user(self, user: str, channel: str) -> None:
        """Ends the subscription of every live connection of `user` to `channel`."""
        self._call(_protocol.unsubscribe_user(user, channel))

    def presence(self, channel: str, *, members: bool = True) -> Presence:
        """Who is subscribed to `channel` (an exact name, in a namespace with `presence`);
        `members=False` asks for the counts alone. A namespace without presence raises
        `ApiError` 400 `presence_disabled`."""
        return self._call(_protocol.presence(channel, members))

    def stats(self) -> Stats:
        """The server's counters (`GET /v1/stats`; an operator's key)."""
        return self._call(_protocol.stats())

    def channels(self) -> List[ChannelInfo]:
        """Every subscribed pattern and its subscribers (`GET /v1/channels`; an operator's key)."""
        return self._call(_protocol.channels())

    def health(self) -> str:
        """`"ok"` while the server serves; a stopping one raises `ApiError` (503)."""
        return self._call(_protocol.health())

    def close(self) -> None:
        """Closes the pooled connections; the client cannot be used after."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def _call(self, operation: _protocol.Operation[T]) -> T:
        attempt = 1
        while True:
            try:
                return _protocol.decode(operation, self._send(operation), attempt)
            except CorecastError as error:
                wait_s = _protocol.retry_delay_s(
                    self._settings, operation, error, attempt, self._rng
                )
                if wait_s is None:
                    raise
            time.sleep(wait_s)
            attempt += 1

    def _send(self, operation: _protocol.Operation[Any]) -> _protocol.Reply:
        url = self._settings.base_url + operation.path
        timeout_s = self._settings.timeout_s
        token = _deadline.deadline.set(time.monotonic() + timeout_s)
        try:
            with self._http.stream(
                operation.method,
                operation.path,
                params=operation.params,
                content=operation.body,
                headers=_protocol.body_headers(operation),
            ) as response:
                body = _wire.Body(response.status_code, self._settings.response_bytes_max)
                for chunk in response.iter_bytes():
                    body.add(chunk)
                return _protocol.Reply(
                    response.status_code, response.headers.get("retry-after"), bytes(body.data)
                )
        except CorecastError:
            raise
        except Exception as error:
            mapped = _wire.transport_error(error, url, timeout_s)
            if mapped is None:
                raise
            raise mapped from error
        finally:
            _deadline.deadline.reset(token)
