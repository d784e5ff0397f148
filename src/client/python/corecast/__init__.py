"""Publish to a corecast server from Python.

`Client` (blocking) and `AsyncClient` (asyncio) call the control-plane HTTP API: `publish`
(to a channel, or to a user), `publish_batch`, `history`, `stats`, `channels`, `health`, the
acts on a user's connections (`disconnect_user`, `subscribe_user`, `unsubscribe_user`) and
`presence`, with API keys, timeouts and retries with backoff on 503 `overloaded`. Every
failure raises a `CorecastError`; `ApiError` carries the server's HTTP status, `code` and
message.

    from corecast import Client
    with Client("http://127.0.0.1:8081", api_key="...") as corecast:
        corecast.publish("leads.42", {"score": 97})
"""

from .aio import AsyncClient
from .client import Client
from .errors import ApiError, CorecastError, ProtocolError, RequestTimeout, TransportError
from .models import (
    USER_CHANNEL,
    ChannelInfo,
    HistoryMessage,
    HistoryPage,
    Member,
    Presence,
    Priority,
    Published,
    PublishMessage,
    Stats,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "ChannelInfo",
    "Client",
    "CorecastError",
    "HistoryMessage",
    "HistoryPage",
    "Member",
    "Presence",
    "Priority",
    "ProtocolError",
    "PublishMessage",
    "Published",
    "RequestTimeout",
    "Stats",
    "TransportError",
    "USER_CHANNEL",
]
