"""Hot swap: serve the current model version and keep the one it replaced for a grace period.

Every tier holds what it loaded for one model version (bundle, interpreter, exit policy,
cache) in one immutable object, and all of them in a :class:`ServedModels`. A request
resolves its model once, when it starts, and uses that object to the end, so a swap never
changes a model under a request in flight. :meth:`ServedModels.swap` only replaces a
reference: the new model is built before, off the request path (by the updater thread).

The model a swap replaces stays servable for ``grace`` seconds. Versions do not reach
every tier at the same instant, and cut features only make sense to the partitions of the
version that produced them, so a gateway that has swapped must still answer requests a
device stamped with the previous version (and the cloud those the gateway forwards).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Versioned(Protocol):
    """Anything that knows which model version it is."""

    @property
    def version(self) -> int: ...


M = TypeVar("M", bound=Versioned)


class ServedModels(Generic[M]):
    """The current model and, for ``grace`` seconds after a swap, the ones it replaced.

    Reading :attr:`current` takes no lock (one attribute read); :meth:`swap` and the
    lookup of a retired version take a short one.
    """

    def __init__(self, current: M, grace: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        if grace < 0:
            raise ValueError("grace must be >= 0 seconds")
        self._current = current
        self.grace = grace
        self._clock = clock
        self._retired: dict[int, tuple[M, float]] = {}  # version -> (model, servable until)
        self._lock = threading.Lock()

    @property
    def current(self) -> M:
        """The model new requests use."""
        return self._current

    def get(self, version: int) -> M | None:
        """The model serving ``version``: the current one, or a replaced one still in its grace."""
        current = self._current
        if current.version == version:
            return current
        with self._lock:
            self._prune()
            entry = self._retired.get(version)
        return None if entry is None else entry[0]

    def previous(self) -> M | None:
        """The most recently replaced model still in its grace period, if any."""
        with self._lock:
            self._prune()
            if not self._retired:
                return None
            return max(self._retired.values(), key=lambda entry: entry[1])[0]

    def versions(self) -> tuple[int, ...]:
        """Versions answered right now: the current first, then those in grace."""
        with self._lock:
            self._prune()
            retired = sorted(self._retired, reverse=True)
        current = self._current.version
        return (current, *(v for v in retired if v != current))

    def swap(self, model: M) -> M:
        """Make ``model`` current; the one it replaces stays servable for ``grace`` seconds."""
        with self._lock:
            old = self._current
            if old.version != model.version and self.grace > 0:
                self._retired[old.version] = (old, self._clock() + self.grace)
            self._retired.pop(model.version, None)
            self._current = model
            self._prune()
        return old

    def _prune(self) -> None:
        now = self._clock()
        for version in [v for v, (_, until) in self._retired.items() if until <= now]:
            del self._retired[version]
