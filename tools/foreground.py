"""Run a daemon in the foreground of a command: its output is ours, our stop signals are its.

``edgecascade federated link`` and ``node`` run Flower's processes this way. The child gets
its own process group, so a terminal's Ctrl-C reaches it once (forwarded by us), not twice;
SIGINT and SIGTERM sent to the command are passed on to the whole group (the daemon and the
apps it started), and the command exits with the daemon's status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

FORWARDED = (signal.SIGINT, signal.SIGTERM)


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def run_foreground(
    command: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Run ``command`` until it exits, forwarding SIGINT and SIGTERM to its process group; its status."""
    process = subprocess.Popen(
        list(command), env=None if env is None else dict(env), cwd=cwd, process_group=0
    )

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return exit_status(process.wait())  # a forwarded signal interrupts nothing here (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
