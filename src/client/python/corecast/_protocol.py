"""The one implementation of the control-plane API that both clients share, without any I/O.

It owns what a call sends (`Operation`: method, path, query, body, and the parser of its
answer), how an answer becomes a result or an exception (`decode`), and when to send again
(`retry_delay_s`). `Client` and `AsyncClient` only move bytes and sleep, so the two can never
disagree about a route, a shape or an error. It must never open a socket or sleep itself.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Sequence, TypeVar

from .errors import ApiError, CorecastError, ProtocolError, TransportError
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

T = TypeVar("T")

PRIORITIES = ("critical", "high", "normal")

RETRY_CODES = frozenset({"overloaded", "too_many_connections", "cluster_unavailable"})
"""503 codes that mean "certainly not done, try again": the lanes or the fan-out backlog are
full (`overloaded`), the control plane is at `api_connections_max` (`too_many_connections`), or
Redis is unreachable in cluster mode (`cluster_unavailable`). Not `shutting_down` (a batch may
be half published) nor any other status: 504 `outcome_unknown` may have been published."""


@dataclass(frozen=True)
class Settings:
    """What both clients are configured with; `Client`'s docstring documents each field."""

    base_url: str
    api_key: Optional[str]
    timeout_s: float
    retries: int
    backoff_base_s: float
    backoff_cap_s: float
    response_bytes_max: int

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be above 0, got {self.timeout_s!r}")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries must be from 0 to 10, got {self.retries!r}")
        if not 0 <= self.backoff_base_s <= self.backoff_cap_s:
            raise ValueError(
                f"backoff_base_s ({self.backoff_base_s!r}) must be from 0 to backoff_cap_s "
                f"({self.backoff_cap_s!r})"
            )
        if self.response_bytes_max < 1024:
            raise ValueError(
                f"response_bytes_max must be at least 1024, got {self.response_bytes_max!r}"
            )

    def headers(self) -> Dict[str, str]:
        """The headers of every request: the key as `Authorization: Bearer` when there is one."""
        headers = {"accept": "application/json", "user-agent": "corecast-python/0.1.0"}
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True)
class Operation(Generic[T]):
    """One API call: what to send, and how to read a 200's JSON into the result.

    `idempotent` calls (the GETs) are sent again after a broken connection or a timeout; a
    publish is not, as it may have been published.
    """

    method: str
    path: str
    params: Mapping[str, str]
    body: Optional[bytes]
    parse: Callable[["_Shape", Any], T]
    idempotent: bool


@dataclass(frozen=True)
class Reply:
    """An answer as it came off the wire: status, `Retry-After` (raw) and the whole body."""

    status: int
    retry_after: Optional[str]
    body: bytes


def check_url(base_url: str) -> str:
    """`base_url` without its trailing `/`, once it is an `http://` or `https://` URL."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    return base_url.rstrip("/")


def body_headers(operation: Operation[Any]) -> Dict[str, str]:
    """The headers of `operation`'s body, if it has one."""
    return {} if operation.body is None else {"content-type": "application/json"}


def _encode(value: Any) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON, and the server refuses them.
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


NO_DATA: Any = object()
"""`publish`'s default for `data`, which it must be given: `channel` may be left out for
`user`, and a positional `data` cannot follow a defaulted `channel` otherwise."""


def _message(
    channel: Optional[str],
    data: Any,
    priority: Optional[Priority],
    tenant: Optional[str],
    user: Optional[str],
) -> Dict[str, Any]:
    if data is NO_DATA:
        raise TypeError("publish needs data (any JSON value)")
    if (channel is None) == (user is None):
        raise ValueError(
            f"give exactly one of channel and user, got channel={channel!r} and user={user!r}"
        )
    target, name = ("channel", channel) if user is None else ("user", user)
    if not isinstance(name, str):
        raise TypeError(f"{target} must be a str, got {type(name).__name__}")
    if priority is not None and priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    body: Dict[str, Any] = {target: name, "data": data}
    if priority is not None:
        body["priority"] = priority
    if tenant is not None:
        body["tenant"] = tenant
    return body


class _Shape:
    """Reads one JSON answer, raising `ProtocolError` at the first field of the wrong type."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"not a corecast answer: {what}", self.reply.status, self.reply.body)

    def obj(self, value: Any, what: str) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{what} is not an object")
        return value

    def array(self, value: Any, what: str) -> List[Any]:
        if not isinstance(value, list):
            raise self.fail(f"{what} is not an array")
        return value

    def text(self, obj: Dict[str, Any], key: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str):
            raise self.fail(f"`{key}` is not a string")
        return value

    def opt_text(self, obj: Dict[str, Any], key: str) -> Optional[str]:
        return None if obj.get(key) is None else self.text(obj, key)

    def count(self, obj: Dict[str, Any], key: str) -> int:
        value = obj.get(key)
        # bool is an int in Python; JSON's true is not a number.
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(f"`{key}` is not a non-negative integer")
        return value

    def flag(self, obj: Dict[str, Any], key: str) -> bool:
        value = obj.get(key)
        if not isinstance(value, bool):
            raise self.fail(f"`{key}` is not a boolean")
        return value


def _published(shape: _Shape, value: Any) -> Published:
    obj = shape.obj(value, "the publish answer")
    user = shape.opt_text(obj, "user")
    return Published(
        channel=USER_CHANNEL if user is not None else shape.text(obj, "channel"),
        offset=shape.count(obj, "offset"),
        tenant=shape.opt_text(obj, "tenant"),
        user=user,
    )


def publish(
    channel: Optional[str],
    data: Any,
    priority: Optional[Priority],
    tenant: Optional[str],
    user: Optional[str] = None,
) -> Operation[Published]:
    """`POST /v1/publish`, to a channel or (`user`) to every connection of a user."""
    body = _encode(_message(channel, data, priority, tenant, user))
    return Operation("POST", "/v1/publish", {}, body, _published, False)


def publish_batch(messages: Sequence[PublishMessage]) -> Operation[List[Published]]:
    """`POST /v1/publish/batch`: all or nothing, answered in order."""
    bodies = [_message(m.channel, m.data, m.priority, m.tenant, m.user) for m in messages]
    count = len(bodies)

    def parse(shape: _Shape, value: Any) -> List[Published]:
        results = shape.array(shape.obj(value, "the batch answer").get("results"), "`results`")
        if len(results) != count:
            raise shape.fail(f"{len(results)} results for a batch of {count}")
        return [_published(shape, result) for result in results]

    return Operation("POST", "/v1/publish/batch", {}, _encode({"messages": bodies}), parse, False)


def _user_act(path: str, body: Dict[str, Any]) -> Operation[None]:
    """`POST path` with `body`, answered `{"user":..}` (and the channel, for a subscribe)."""
    user = body["user"]
    if not isinstance(user, str):
        raise TypeError(f"user must be a str, got {type(user).__name__}")

    def parse(shape: _Shape, value: Any) -> None:
        if shape.text(shape.obj(value, "the answer"), "user") != user:
            raise shape.fail(f"the answer names another user than {user!r}")

    # Not sent again after a broken connection: a repeat would disconnect the user's
    # connections made in between.
    return Operation("POST", path, {}, _encode(body), parse, False)


def disconnect_user(user: str, reason: Optional[str]) -> Operation[None]:
    """`POST /v1/users/disconnect`: close every connection of `user` with 4010."""
    body: Dict[str, Any] = {"user": user}
    if reason is not None:
        body["reason"] = reason
    return _user_act("/v1/users/disconnect", body)


def subscribe_user(user: str, channel: str) -> Operation[None]:
    """`POST /v1/users/subscribe`: subscribe every live connection of `user` to `channel`."""
    return _user_act("/v1/users/subscribe", {"user": user, "channel": channel})


def unsubscribe_user(user: str, channel: str) -> Operation[None]:
    """`POST /v1/users/unsubscribe`: the reverse of `subscribe_user`."""
    return _user_act("/v1/users/unsubscribe", {"user": user, "channel": channel})


def _presence(shape: _Shape, value: Any) -> Presence:
    obj = shape.obj(value, "the presence answer")
    members = []
    for item in shape.array(obj.get("members", []), "`members`"):
        member = shape.obj(item, "a member")
        info = member.get("info")
        members.append(
            Member(
                conn_id=shape.text(member, "conn_id"),
                user=shape.opt_text(member, "user"),
                info=None if info is None else shape.obj(info, "a member's `info`"),
            )
        )
    truncated = obj.get("truncated", False)
    if not isinstance(truncated, bool):
        raise shape.fail("`truncated` is not a boolean")
    return Presence(
        channel=shape.text(obj, "channel"),
        connections=shape.count(obj, "connections"),
        users=shape.count(obj, "users"),
        members=members,
        truncated=truncated,
    )


def presence(channel: str, members: bool) -> Operation[Presence]:
    """`GET /v1/presence?channel=..[&members=false]`."""
    params = {"channel": channel}
    if not members:
        params["members"] = "false"
    return Operation("GET", "/v1/presence", params, None, _presence, True)


def _history_page(shape: _Shape, value: Any) -> HistoryPage:
    obj = shape.obj(value, "the history answer")
    messages = []
    for item in shape.array(obj.get("messages"), "`messages`"):
        message = shape.obj(item, "a history message")
        if "data" not in message:
            raise shape.fail("a history message has no `data`")
        messages.append(
            HistoryMessage(
                channel=shape.text(message, "channel"),
                offset=shape.count(message, "offset"),
                seq=shape.count(message, "seq"),
                ts_ms=shape.count(message, "ts_ms"),
                data=message["data"],
            )
        )
    return HistoryPage(
        channel=shape.text(obj, "channel"),
        epoch=shape.text(obj, "epoch"),
        offset=shape.count(obj, "offset"),
        complete=shape.flag(obj, "complete"),
        messages=messages,
        tenant=shape.opt_text(obj, "tenant"),
    )


def history(
    channel: str, since: int, limit: Optional[int], tenant: Optional[str]
) -> Operation[HistoryPage]:
    """`GET /v1/history?channel=..&since=..[&limit=..][&tenant=..]`."""
    params = {"channel": channel, "since": str(since)}
    if limit is not None:
        params["limit"] = str(limit)
    if tenant is not None:
        params["tenant"] = tenant
    return Operation("GET", "/v1/history", params, None, _history_page, True)


def _stats(shape: _Shape, value: Any) -> Stats:
    obj = shape.obj(value, "the stats answer")
    return Stats(
        connections=shape.count(obj, "connections"),
        shards_answered=shape.count(obj, "shards_answered"),
        epoch=shape.text(obj, "epoch"),
        raw=obj,
    )


def stats() -> Operation[Stats]:
    """`GET /v1/stats` (an operator's key when keys are configured)."""
    return Operation("GET", "/v1/stats", {}, None, _stats, True)


def _channels(shape: _Shape, value: Any) -> List[ChannelInfo]:
    items = shape.array(shape.obj(value, "the channels answer").get("channels"), "`channels`")
    infos = []
    for item in items:
        obj = shape.obj(item, "a channel")
        infos.append(
            ChannelInfo(
                channel=shape.text(obj, "channel"),
                subscribers=shape.count(obj, "subscribers"),
                tenant=shape.opt_text(obj, "tenant"),
            )
        )
    return infos


def channels() -> Operation[List[ChannelInfo]]:
    """`GET /v1/channels` (an operator's key when keys are configured)."""
    return Operation("GET", "/v1/channels", {}, None, _channels, True)


def health() -> Operation[str]:
    """`GET /healthz`: `"ok"`; a stopping server answers 503, raised as `ApiError`."""
    return Operation(
        "GET",
        "/healthz",
        {},
        None,
        lambda shape, value: shape.text(shape.obj(value, "the health answer"), "status"),
        True,
    )


def retry_after_s(raw: Optional[str]) -> Optional[float]:
    """`Retry-After` in seconds; the HTTP-date form and anything unreadable count as absent."""
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def decode(operation: Operation[T], reply: Reply, attempts: int) -> T:
    """The result of a 200, or the exception for any other answer."""
    shape = _Shape(reply)
    try:
        value = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError):
        raise shape.fail("the body is not JSON") from None
    if reply.status == 200:
        return operation.parse(shape, value)
    error = shape.obj(shape.obj(value, "the error answer").get("error"), "`error`")
    raise ApiError(
        status=reply.status,
        code=shape.text(error, "code"),
        message=shape.text(error, "message"),
        retry_after_s=retry_after_s(reply.retry_after),
        attempts=attempts,
    )


def retry_delay_s(
    settings: Settings,
    operation: Operation[Any],
    error: CorecastError,
    attempt: int,
    rng: random.Random,
) -> Optional[float]:
    """How long to wait before sending `operation` again after `error` on attempt `attempt`
    (1 is the first), or `None` to raise it.

    Retried: a 503 with a code of `RETRY_CODES`; a failed connection (nothing was sent); and,
    for the GETs only, a broken connection or a timeout. The wait is full jitter,
    `uniform(0, min(backoff_cap_s, backoff_base_s * 2 ** (attempt - 1)))`, and never less than
    the server's `Retry-After`, itself held to `backoff_cap_s`.
    """
    if attempt > settings.retries:
        return None
    floor_s = 0.0
    if isinstance(error, ApiError):
        if error.status != 503 or error.code not in RETRY_CODES:
            return None
        floor_s = min(error.retry_after_s or 0.0, settings.backoff_cap_s)
    elif isinstance(error, TransportError):
        if not (operation.idempotent or error.before_send):
            return None
    else:
        return None
    ceiling_s = min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** (attempt - 1))
    return max(floor_s, rng.uniform(0, ceiling_s))
