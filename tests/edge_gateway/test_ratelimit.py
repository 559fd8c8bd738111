"""The per-device token bucket: burst, refill, independence of devices, bounded memory; its settings."""

from __future__ import annotations

import pytest

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.edge_gateway.config import load_gateway_config
from edgecascade.edge_gateway.ratelimit import DeviceRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_then_refilled_at_the_rate() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(rate=4, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.125  # half a token
    assert not limiter.allow("a")
    clock.now += 0.125  # one token
    assert limiter.allow("a")
    assert not limiter.allow("a")
    clock.now += 60  # idle for long: never more than the burst
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]


def test_a_refused_request_takes_no_token() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(rate=1, burst=1, clock=clock)
    assert limiter.allow("a")
    for _ in range(100):  # a flood while empty does not dig a hole
        assert not limiter.allow("a")
    clock.now += 1.0
    assert limiter.allow("a")


def test_devices_have_their_own_buckets() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(rate=1, burst=2, clock=clock)
    assert [limiter.allow("flood") for _ in range(5)] == [True, True, False, False, False]
    assert limiter.allow("calm") and limiter.allow("calm")


def test_sustained_rate_matches_the_setting() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(rate=20, burst=5, clock=clock)
    allowed = 0
    for _ in range(2000):  # 10 s at 200 requests/s
        clock.now += 0.005
        allowed += limiter.allow("a")
    assert 5 + 200 - 2 <= allowed <= 5 + 200 + 1


def test_memory_is_bounded_and_forgetting_is_harmless() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(rate=1, burst=1, max_devices=3, clock=clock)
    assert limiter.allow("a")
    for device in ("b", "c", "d"):
        limiter.allow(device)
    assert len(limiter) == 3  # "a", the least recently seen, was dropped...
    assert limiter.allow("a")  # ...and starts again with a full bucket


def test_clock_going_backwards_adds_nothing() -> None:
    clock = Clock()
    limiter = DeviceRateLimiter(rate=1, burst=1, clock=clock)
    assert limiter.allow("a")
    clock.now -= 10
    assert not limiter.allow("a")


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_bad_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        DeviceRateLimiter(rate=rate, burst=burst)


def test_settings_from_the_environment_and_their_checks() -> None:
    config = load_gateway_config(env={"EC_GATEWAY__DEVICE_RATE": "2.5", "EC_GATEWAY__DEVICE_BURST": "20"})
    assert (config.gateway.device_rate, config.gateway.device_burst) == (2.5, 20)
    assert load_gateway_config(env={}).gateway.device_rate == 0  # off unless set
    with pytest.raises(ConfigError) as raised:
        load_gateway_config(env={"EC_GATEWAY__DEVICE_RATE": "-1", "EC_GATEWAY__DEVICE_BURST": "0"})
    assert "device_rate" in str(raised.value) and "device_burst" in str(raised.value)
