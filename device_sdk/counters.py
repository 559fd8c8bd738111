"""Event counters of a serving tier, safe to increment from several threads."""

from __future__ import annotations

import threading
from collections import Counter


class Counters(Counter[str]):
    """Event counters of a serving tier, safe to increment from several threads."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self[key] += n
