"""The replay check alone, µs per request: windows in memory, with a mark file, or shared.

What a share group pays for windows shared in a database (``crypto.replay_shared``)
against one gateway's own (``crypto.replay_store``): the same numbers of a few devices
judged in micro-batches of the daemon's size and one by one (a quiet gateway), through
:meth:`~edgecascade.edge_gateway.replay.ReplayWindows.accept_many` and nothing else.
``edgecascade bench gateway --replay-shared URL`` prints it beside the whole request path.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecascade.edge_gateway.replay import ReplayWindows
from edgecascade.edge_gateway.replay_store import LocalWindows, ReplayStore

SECOND = 1_000_000  # devices number in µs of their clock


def time_windows(
    windows: ReplayWindows, *, requests: int = 2000, batch: int = 32, devices: int = 8, runs: int = 3
) -> float:
    """Median µs per request judged by ``windows`` in batches of ``batch`` (every one accepted).

    The devices are new to ``windows`` (named afresh per call), so a store timed before holds
    no window that would refuse their numbers.
    """
    prefix = uuid.uuid4().hex[:8]
    now = int(time.time() * SECOND)
    base = now
    per_request = []
    for _ in range(runs):
        numbers = [(f"bench-{prefix}-{i % devices}", base + i // devices) for i in range(requests)]
        base += requests
        started = time.perf_counter()
        for start in range(0, requests, batch):
            verdicts = windows.accept_many(numbers[start : start + batch], now, 3600 * SECOND)
            assert verdicts.count(None) == len(verdicts), verdicts
        per_request.append((time.perf_counter() - started) / requests * 1e6)
    return statistics.median(per_request)


def bench_replay(shared: dict[str, Callable[[], ReplayWindows]], *, requests: int = 2000) -> dict[str, Any]:
    """µs per request, batches of 32 and of 1, of local windows and of each ``shared`` store."""
    with tempfile.TemporaryDirectory() as tmp:
        kinds: dict[str, Callable[[], ReplayWindows]] = {
            "memory": LocalWindows,
            "local mark file": lambda: LocalWindows(store=ReplayStore(Path(tmp) / "marks.db")),
            **shared,
        }
        rows = {}
        for name, make in kinds.items():
            row = {}
            for batch in (32, 1):
                windows = make()
                try:
                    row[f"batch_{batch}"] = round(time_windows(windows, requests=requests, batch=batch), 1)
                finally:
                    windows.close()
            rows[name] = row
    return {"requests": requests, "us_per_request": rows}


def format_replay_report(report: dict[str, Any]) -> str:
    lines = [f"replay check alone, µs per request ({report['requests']} requests of 8 devices):"]
    for name, row in report["us_per_request"].items():
        lines.append(
            f"  {name:<24} {row['batch_32']:>8.1f} in batches of 32, {row['batch_1']:>8.1f} one by one"
        )
    return "\n".join(lines)
