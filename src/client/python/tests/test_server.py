"""The clients against the real `corecast serve`: what a publish returns is what history and
stats then show, a batch is answered in order, keys gate the control plane as the README says,
and a refused request raises `ApiError` with the server's status and code. Each test uses
channels of its own on a shared server, so exact offsets hold; the async tests repeat the
sync ones through `AsyncClient`.
"""

from __future__ import annotations

import math
import socket
import uuid

import pytest
from conftest import ACME_KEY, OPERATOR_KEY, Server

from corecast import (
    ApiError,
    AsyncClient,
    ChannelInfo,
    Client,
    Published,
    PublishMessage,
)


def fresh(prefix: str) -> str:
    """A channel no other test publishes to."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def test_publish_then_history_sees_it(server: Server) -> None:
    channel = fresh("leads")
    with Client(server.api) as corecast:
        first = corecast.publish(channel, {"score": 97})
        second = corecast.publish(channel, [1, "two", None], priority="critical")
        assert first == Published(channel=channel, offset=1)
        assert second == Published(channel=channel, offset=2)

        page = corecast.history(channel)
        assert (page.channel, page.offset, page.complete) == (channel, 2, True)
        assert page.epoch == corecast.stats().epoch
        assert [(m.channel, m.offset, m.data) for m in page.messages] == [
            (channel, 1, {"score": 97}),
            (channel, 2, [1, "two", None]),
        ]
        assert page.messages[0].seq < page.messages[1].seq
        assert page.messages[0].ts_ms > 1_600_000_000_000

        later = corecast.history(channel, since=1, limit=1)
        assert [(m.offset, m.data) for m in later.messages] == [(2, [1, "two", None])]


def test_batch_is_answered_in_order(server: Server) -> None:
    left, right = fresh("batch"), fresh("batch")
    with Client(server.api) as corecast:
        results = corecast.publish_batch(
            [
                PublishMessage(left, 1),
                PublishMessage(right, {"b": 2}, priority="high"),
                PublishMessage(left, 3),
            ]
        )
        assert results == [
            Published(left, 1),
            Published(right, 1),
            Published(left, 2),
        ]
        assert [m.data for m in corecast.history(left).messages] == [1, 3]
        assert [m.data for m in corecast.history(right).messages] == [{"b": 2}]


def test_stats_counts_the_publishes(server: Server) -> None:
    with Client(server.api) as corecast:
        before = corecast.stats()
        corecast.publish(fresh("stats"), True)
        after = corecast.stats()
    assert after.shards_answered == 1
    assert after.epoch == before.epoch and len(after.epoch) > 0
    published = after.raw["ingest"]["published_total"] - before.raw["ingest"]["published_total"]
    # `$sys.stats` is published every second too; ours is at least one of them.
    assert published >= 1
    assert after.raw["shards"][0]["shard"] == 0


def test_channels_lists_a_live_subscription(server: Server) -> None:
    pattern = fresh("live") + ".*"
    host, port = server.ws.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as ws:
        ws.sendall(
            (
                f"GET /ws?channels={pattern} HTTP/1.1\r\nHost: {server.ws}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert ws.recv(4096).startswith(b"HTTP/1.1 101"), "expected the upgrade to succeed"
        with Client(server.api) as corecast:
            listed = corecast.channels()
            stats = corecast.stats()
    assert ChannelInfo(channel=pattern, subscribers=1) in listed
    assert stats.connections >= 1


def test_a_bad_request_raises_the_servers_code(server: Server) -> None:
    with Client(server.api) as corecast:
        with pytest.raises(ApiError) as bad_channel:
            corecast.publish("no spaces allowed", 1)
        assert (bad_channel.value.status, bad_channel.value.code) == (400, "invalid_channel")
        assert "invalid channel" in bad_channel.value.message
        assert bad_channel.value.attempts == 1

        with pytest.raises(ApiError) as system:
            corecast.publish("$sys.mine", 1)
        assert (system.value.status, system.value.code) == (403, "forbidden")

        with pytest.raises(ApiError) as bad_limit:
            corecast.history(fresh("h"), limit=0)
        assert (bad_limit.value.status, bad_limit.value.code) == (400, "bad_request")

        with pytest.raises(ApiError) as bad_batch:
            corecast.publish_batch([PublishMessage(fresh("ok"), 1), PublishMessage("bad..name", 2)])
        assert (bad_batch.value.status, bad_batch.value.code) == (400, "invalid_channel")
        assert bad_batch.value.message.startswith("messages[1]: ")

        with pytest.raises(ValueError):
            corecast.publish(fresh("nan"), math.nan)
        with pytest.raises(ValueError):
            corecast.publish(fresh("p"), 1, priority="urgent")  # type: ignore[arg-type]


def test_an_api_key_is_required_and_scoped(keyed_server: Server) -> None:
    channel = fresh("keyed")
    with Client(keyed_server.api, retries=0) as anonymous:
        assert anonymous.health() == "ok"
        with pytest.raises(ApiError) as missing:
            anonymous.publish(channel, 1)
        assert (missing.value.status, missing.value.code) == (401, "unauthorized")
        assert "Authorization: Bearer" in missing.value.message

    with Client(keyed_server.api, api_key="not-a-key-0123456789") as wrong:
        with pytest.raises(ApiError) as refused:
            wrong.stats()
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")

    with Client(keyed_server.api, api_key=ACME_KEY) as acme:
        assert acme.publish(channel, {"n": 1}) == Published(channel, 1, tenant="acme")
        assert [m.data for m in acme.history(channel).messages] == [{"n": 1}]
        with pytest.raises(ApiError) as other_tenant:
            acme.publish(channel, 2, tenant="globex")
        assert (other_tenant.value.status, other_tenant.value.code) == (403, "forbidden")
        with pytest.raises(ApiError) as operator_route:
            acme.stats()
        assert (operator_route.value.status, operator_route.value.code) == (403, "forbidden")

    with Client(keyed_server.api, api_key=OPERATOR_KEY) as operator:
        assert operator.stats().shards_answered == 1
        assert operator.history(channel).offset == 0, "the unscoped channel was never published"
        page = operator.history(channel, tenant="acme")
        assert (page.tenant, page.offset) == ("acme", 1)


async def test_async_publish_history_batch_and_stats(server: Server) -> None:
    channel, other = fresh("async"), fresh("async")
    async with AsyncClient(server.api) as corecast:
        assert await corecast.health() == "ok"
        assert await corecast.publish(channel, {"a": 1}) == Published(channel, 1)
        assert await corecast.publish_batch(
            [PublishMessage(channel, 2), PublishMessage(other, 3)]
        ) == [Published(channel, 2), Published(other, 1)]
        page = await corecast.history(channel)
        assert [(m.offset, m.data) for m in page.messages] == [(1, {"a": 1}), (2, 2)]
        stats = await corecast.stats()
        assert stats.shards_answered == 1 and stats.epoch == page.epoch
        assert isinstance(await corecast.channels(), list)
        with pytest.raises(ApiError) as bad:
            await corecast.publish("bad channel", 1)
        assert (bad.value.status, bad.value.code) == (400, "invalid_channel")


async def test_async_api_key(keyed_server: Server) -> None:
    async with AsyncClient(keyed_server.api) as anonymous:
        with pytest.raises(ApiError) as missing:
            await anonymous.stats()
        assert (missing.value.status, missing.value.code) == (401, "unauthorized")
    async with AsyncClient(keyed_server.api, api_key=OPERATOR_KEY) as operator:
        assert (await operator.stats()).shards_answered == 1
