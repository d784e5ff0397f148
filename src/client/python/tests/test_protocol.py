"""The shared rules without any server: which errors are retried, how long each wait is (full
jitter under the doubling cap, never below `Retry-After`), and how answers are read, checked
over many draws with a seeded generator so the bounds are exact.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from corecast import ApiError, ProtocolError, PublishMessage, RequestTimeout, TransportError
from corecast import _protocol as protocol

SETTINGS = protocol.Settings(
    base_url="http://127.0.0.1:1",
    api_key=None,
    timeout_s=1.0,
    retries=3,
    backoff_base_s=0.1,
    backoff_cap_s=0.3,
    response_bytes_max=1 << 20,
)
PUBLISH = protocol.publish("leads.42", 1, None, None)
STATS = protocol.stats()


def overloaded(retry_after_s: float | None = None) -> ApiError:
    return ApiError(503, "overloaded", "full", retry_after_s=retry_after_s)


def test_waits_are_full_jitter_under_the_doubling_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.3)]:
        waits = [
            protocol.retry_delay_s(SETTINGS, PUBLISH, overloaded(), attempt, rng)
            for _ in range(500)
        ]
        assert all(wait is not None and 0 <= wait <= ceiling for wait in waits)
        assert max(w for w in waits if w is not None) > ceiling * 0.9, "the whole range is drawn"
    assert protocol.retry_delay_s(SETTINGS, PUBLISH, overloaded(), 4, rng) is None


def test_retry_after_is_a_floor_held_to_the_cap() -> None:
    rng = random.Random(7)
    assert protocol.retry_delay_s(SETTINGS, PUBLISH, overloaded(0.25), 1, rng) == 0.25
    assert protocol.retry_delay_s(SETTINGS, PUBLISH, overloaded(60.0), 1, rng) == 0.3


def test_what_is_retried() -> None:
    rng = random.Random(7)

    def retried(operation: protocol.Operation[Any], error: Exception) -> bool:
        assert isinstance(error, (ApiError, TransportError))
        return protocol.retry_delay_s(SETTINGS, operation, error, 1, rng) is not None

    assert retried(PUBLISH, ApiError(503, "too_many_connections", ""))
    assert retried(PUBLISH, ApiError(503, "cluster_unavailable", ""))
    assert not retried(PUBLISH, ApiError(503, "shutting_down", ""))
    assert not retried(PUBLISH, ApiError(503, "channels_full", ""))
    assert not retried(PUBLISH, ApiError(504, "outcome_unknown", ""))
    assert retried(PUBLISH, TransportError("refused", before_send=True))
    assert not retried(PUBLISH, TransportError("reset"))
    assert not retried(PUBLISH, RequestTimeout("slow"))
    assert retried(STATS, RequestTimeout("slow"))
    assert retried(STATS, TransportError("reset"))


def test_retry_after_forms() -> None:
    assert protocol.retry_after_s("1") == 1.0
    assert protocol.retry_after_s(" 2.5 ") == 2.5
    assert protocol.retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert protocol.retry_after_s("-1") is None
    assert protocol.retry_after_s(None) is None


def test_decode_reads_errors_and_refuses_wrong_shapes() -> None:
    body = b'{"error":{"code":"invalid_channel","message":"invalid channel"}}'
    with pytest.raises(ApiError) as raised:
        protocol.decode(PUBLISH, protocol.Reply(400, None, body), 2)
    assert (raised.value.status, raised.value.code, raised.value.attempts) == (
        400,
        "invalid_channel",
        2,
    )
    with pytest.raises(ProtocolError, match="`offset` is not a non-negative integer"):
        protocol.decode(PUBLISH, protocol.Reply(200, None, b'{"channel":"a","offset":true}'), 1)
    batch = protocol.publish_batch([PublishMessage("a", 1)])
    with pytest.raises(ProtocolError, match="0 results for a batch of 1"):
        protocol.decode(batch, protocol.Reply(200, None, b'{"results":[]}'), 1)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        protocol.Settings("http://x", None, 0, 3, 0.1, 5, 1 << 20)
    with pytest.raises(ValueError, match="retries"):
        protocol.Settings("http://x", None, 1, 11, 0.1, 5, 1 << 20)
    with pytest.raises(ValueError, match="backoff_base_s"):
        protocol.Settings("http://x", None, 1, 3, 6, 5, 1 << 20)
    with pytest.raises(ValueError, match="base_url"):
        protocol.check_url("127.0.0.1:8081")
