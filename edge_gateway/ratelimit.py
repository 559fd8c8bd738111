"""Per-device request rate limit at the gateway: one token bucket per device id.

A device may send ``rate`` requests per second on average and ``burst`` at once; a request
beyond that is refused before it costs the gateway anything (no decryption, no model run),
so one flooding device cannot fill the shared request queue and delay everyone else's
answers. Pure logic over an injected clock; the daemon calls :meth:`DeviceRateLimiter.allow`
on the network thread and answers a refused request with a ``RATE_LIMITED`` error reply.

Buckets are kept for at most ``max_devices`` ids (least recently seen dropped first): a
dropped bucket was idle long enough to be full again, so forgetting it changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_DEVICES = 100_000


class DeviceRateLimiter:
    """Token buckets keyed by device id: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_devices: int = DEFAULT_MAX_DEVICES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_devices < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_devices >= 1")
        self.rate = rate
        self.burst = burst
        self.max_devices = max_devices
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # id -> (tokens, at)

    def allow(self, device_id: str) -> bool:
        """Take one token from ``device_id``'s bucket; False (nothing taken) when it is empty."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(device_id, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[device_id] = (tokens, now)  # most recently seen last
            while len(self._buckets) > self.max_devices:
                self._buckets.popitem(last=False)
            return allowed

    def __len__(self) -> int:
        """Devices with a bucket."""
        with self._lock:
            return len(self._buckets)
