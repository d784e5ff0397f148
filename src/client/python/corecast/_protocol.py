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
    ChannelInfo,
    HistoryMessage,
    HistoryPage,
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


def _message(
    channel: str, data: Any, priority: Optional[Priority], tenant: Optional[str]
) -> Dict[str, Any]:
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, got {type(channel).__name__}")
    if priority is not None and priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    body: Dict[str, Any] = {"channel": channel, "data": data}
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
    return Published(
        channel=shape.text(obj, "channel"),
        offset=shape.count(obj, "offset"),
        tenant=shape.opt_text(obj, "tenant"),
    )


def publish(
    channel: str, data: Any, priority: Optional[Priority], tenant: Optional[str]
) -> Operation[Published]:
    """`POST /v1/publish`."""
    body = _encode(_message(channel, data, priority, tenant))
    return Operation("POST", "/v1/publish", {}, body, _published, False)


def publish_batch(messages: Sequence[PublishMessage]) -> Operation[List[Published]]:
    """`POST /v1/publish/batch`: all or nothing, answered in order."""
    bodies = [_message(m.channel, m.data, m.priority, m.tenant) for m in messages]
    count = len(bodies)

    def parse(shape: _Shape, value: Any) -> List[Published]:
        results = shape.array(shape.obj(value, "the batch answer").get("results"), "`results`")
        if len(results) != count:
            raise shape.fail(f"{len(results)} results for a batch of {count}")
        return [_published(shape, result) for result in results]

    return Operation("POST", "/v1/publish/batch", {}, _encode({"messages": bodies}), parse, False)


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
