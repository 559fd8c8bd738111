"""What a fresh interpreter imports: for tests that keep heavy dependencies off light paths."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tensorflow", "keras", "hnswlib")


def heavy_imports(*modules: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has loaded after importing ``modules``."""
    loaded = f"[m for m in {heavy!r} if m in sys.modules]"
    code = f"import json, sys, {', '.join(modules)}; print(json.dumps({loaded}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))
