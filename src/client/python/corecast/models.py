"""What the clients send and return: plain frozen dataclasses, one per shape of the API.

Each answer type is built only by `_protocol`, after it checked the JSON's shape, so a field
typed `int` is an `int`. This module does no I/O and knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

Priority = Literal["critical", "high", "normal"]
"""A publish's lane (README, "Delivery guarantees"); the server's default is `normal`."""


USER_CHANNEL = "$user"
"""The channel on which every connection of a user receives what is published to that user
(PROTOCOL.md, "Users"): `Published.channel` of a publish to a user."""


@dataclass(frozen=True)
class PublishMessage:
    """One message of `publish_batch`: the same fields as `publish`'s arguments. Exactly one
    of `channel` and `user` is set; `PublishMessage.to_user` makes one for a user."""

    channel: Optional[str]
    data: Any
    priority: Optional[Priority] = None
    tenant: Optional[str] = None
    user: Optional[str] = None

    @classmethod
    def to_user(
        cls,
        user: str,
        data: Any,
        priority: Optional[Priority] = None,
        tenant: Optional[str] = None,
    ) -> "PublishMessage":
        """A message to every connection of `user` (its `$user` stream)."""
        return cls(None, data, priority, tenant, user)


@dataclass(frozen=True)
class Published:
    """The server's answer to a publish: the channel and the offset it gave the message.

    `tenant` is the tenant it was published in, or `None` outside any tenant. A publish to a
    user has `user` set, `channel` `"$user"` (where its connections receive it) and an offset
    in that user's stream.
    """

    channel: str
    offset: int
    tenant: Optional[str] = None
    user: Optional[str] = None


@dataclass(frozen=True)
class HistoryMessage:
    """One stored message of a channel, as subscribers got it: its offset in the channel, its
    `seq` (the server's order over every channel), the server's timestamp in milliseconds
    since the Unix epoch, and the published `data`."""

    channel: str
    offset: int
    seq: int
    ts_ms: int
    data: Any


@dataclass(frozen=True)
class HistoryPage:
    """One page of `GET /v1/history`: the messages after the `since` asked, oldest first.

    `offset` is the channel's latest offset (0 for a channel the server does not hold),
    `complete` is false when some message after `since` was trimmed, and `epoch` names the
    server's run (a new one after a restart: offsets start again).
    """

    channel: str
    epoch: str
    offset: int
    complete: bool
    messages: List[HistoryMessage]
    tenant: Optional[str] = None


@dataclass(frozen=True)
class ChannelInfo:
    """A subscribed pattern of `GET /v1/channels` and its subscriber count over every shard."""

    channel: str
    subscribers: int
    tenant: Optional[str] = None


@dataclass(frozen=True)
class Member:
    """One subscribed connection of a presence answer: its user (`None` when anonymous), its
    connection id, and its token's `info` claim (`None` without one)."""

    conn_id: str
    user: Optional[str] = None
    info: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class Presence:
    """`GET /v1/presence`: who is subscribed to `channel` over every shard and node.

    `connections` and `users` count them (anonymous connections count no user); `members`
    lists at most the server's `presence_members_max` (`truncated` past it), and is empty when
    asked with `members=False`.
    """

    channel: str
    connections: int
    users: int
    members: List[Member]
    truncated: bool = False


@dataclass(frozen=True)
class Stats:
    """`GET /v1/stats`: the totals most callers want, and the whole answer in `raw`.

    `connections` counts WebSocket connections over the shards that answered
    (`shards_answered`), `epoch` names the server's run; `raw` holds every figure the server
    sent (per shard, per namespace, `ingest`, `api`, `acks`, `tenants`; README, "Protocol tour"),
    whose set grows with the server.
    """

    connections: int
    shards_answered: int
    epoch: str
    raw: Dict[str, Any] = field(repr=False)
