"""`AsyncClient`: the asyncio client, for FastAPI, aiohttp or any asyncio (or trio) program.

The same calls, arguments, results, errors and retries as `Client` (one `_protocol` serves
both); only sending and sleeping differ. Each attempt runs under `anyio.fail_after(timeout_s)`,
which cancels it wherever it waits, so no server can hold a call past its timeout. Create it
inside the event loop that uses it, and close it there (`async with`, or `aclose`).
"""

from __future__ import annotations

import random
from types import TracebackType
from typing import Any, Iterable, List, Optional, Type, TypeVar

import anyio
import httpx

from . import _protocol, _wire
from .client import DEFAULT_URL
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


class AsyncClient:
    """An asyncio client of corecast's control-plane API; `Client` documents every argument."""

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
        self._http = httpx.AsyncClient(
            base_url=self._settings.base_url,
            headers=self._settings.headers(),
            timeout=timeout_s,
            transport=httpx.AsyncHTTPTransport(
                verify=_wire.ssl_context(verify),
                limits=httpx.Limits(max_connections=connections_max, keepalive_expiry=keepalive_s),
            ),
        )

    async def publish(
        self,
        channel: Optional[str] = None,
        data: Any = _protocol.NO_DATA,
        *,
        user: Optional[str] = None,
        priority: Optional[Priority] = None,
        tenant: Optional[str] = None,
    ) -> Published:
        """`Client.publish`."""
        return await self._call(_protocol.publish(channel, data, priority, tenant, user))

    async def publish_batch(self, messages: Iterable[PublishMessage]) -> List[Published]:
        """`Client.publish_batch`."""
        return await self._call(_protocol.publish_batch(list(messages)))

    async def history(
        self,
        channel: str,
        *,
        since: int = 0,
        limit: Optional[int] = None,
        tenant: Optional[str] = None,
    ) -> HistoryPage:
        """`Client.history`."""
        return await self._call(_protocol.history(channel, since, limit, tenant))

    async def disconnect_user(self, user: str, reason: Optional[str] = None) -> None:
        """`Client.disconnect_user`."""
        await self._call(_protocol.disconnect_user(user, reason))

    async def subscribe_user(self, user: str, channel: str) -> None:
        """`Client.subscribe_user`."""
        await self._call(_protocol.subscribe_user(user, channel))

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        """`Client.unsubscribe_user`."""
        await self._call(_protocol.unsubscribe_user(user, channel))

    async def presence(self, channel: str, *, members: bool = True) -> Presence:
        """`Client.presence`."""
        return await self._call(_protocol.presence(channel, members))

    async def stats(self) -> Stats:
        """`Client.stats`."""
        return await self._call(_protocol.stats())

    async def channels(self) -> List[ChannelInfo]:
        """`Client.channels`."""
        return await self._call(_protocol.channels())

    async def health(self) -> str:
        """`Client.health`."""
        return await self._call(_protocol.health())

    async def aclose(self) -> None:
        """Closes the pooled connections; the client cannot be used after."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def _call(self, operation: _protocol.Operation[T]) -> T:
        attempt = 1
        while True:
            try:
                return _protocol.decode(operation, await self._send(operation), attempt)
            except CorecastError as error:
                wait_s = _protocol.retry_delay_s(
                    self._settings, operation, error, attempt, self._rng
                )
                if wait_s is None:
                    raise
            await anyio.sleep(wait_s)
            attempt += 1

    async def _send(self, operation: _protocol.Operation[Any]) -> _protocol.Reply:
        url = self._settings.base_url + operation.path
        timeout_s = self._settings.timeout_s
        try:
            with anyio.fail_after(timeout_s):
                async with self._http.stream(
                    operation.method,
                    operation.path,
                    params=operation.params,
                    content=operation.body,
                    headers=_protocol.body_headers(operation),
                ) as response:
                    body = _wire.Body(response.status_code, self._settings.response_bytes_max)
                    async for chunk in response.aiter_bytes():
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
