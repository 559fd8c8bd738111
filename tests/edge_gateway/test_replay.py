"""The replay window on its own: pure logic over sequence numbers."""

from __future__ import annotations

import pytest

from edgecascade.device_sdk.errors import ReplayError, SequenceTooOldError
from edgecascade.edge_gateway import replay


def test_replay_window_logic() -> None:
    window = replay.ReplayWindow(4)
    for seq in (5, 7, 6, 8):
        window.accept(seq)
    assert window.highest == 8
    for seen in (5, 6, 7, 8):
        with pytest.raises(ReplayError):
            window.check(seen)
    with pytest.raises(SequenceTooOldError):
        window.check(4)  # 8 - 4 = 4 >= size
    window.accept(100)  # a jump wider than the window forgets everything below
    with pytest.raises(SequenceTooOldError):
        window.check(96)
    window.check(97)  # inside the window and never seen
    window.accept(97)
    with pytest.raises(ReplayError):
        window.accept(97)
    with pytest.raises(ValueError):
        replay.ReplayWindow(0)
