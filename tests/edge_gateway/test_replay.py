"""The replay window on its own: pure logic over sequence numbers, a limit and a restored floor."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecascade.device_sdk.errors import ReplayError, SequenceTooFarAheadError, SequenceTooOldError
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


SECOND = 1_000_000  # senders number in µs of their clock


def test_a_number_beyond_the_limit_is_refused_and_does_not_move_the_window() -> None:
    now = 1_700_000_000 * SECOND
    window = replay.ReplayWindow(64)
    window.accept(now)
    limit = window.limit(now, 60 * SECOND)
    assert limit == now + 60 * SECOND
    with pytest.raises(SequenceTooFarAheadError) as ahead:
        window.accept(now + 1000 * SECOND, limit)  # the lockout: 1,000 s of the device's clock ahead
    assert ahead.value.reason == "too_far_ahead" and isinstance(ahead.value, ReplayError)
    assert window.highest == now and window.next_seq == now + 1
    window.accept(now + 1, limit)  # the device's next ordinary number is still accepted
    window.accept(limit, limit)  # the limit itself is inside
    with pytest.raises(ReplayError):
        window.accept(now + 1, limit)


def test_the_limit_never_falls_below_the_window() -> None:
    window = replay.ReplayWindow(8, floor=5_000)  # restored ahead of this gateway's clock
    assert window.limit(now=1_000, ahead=100) == 5_008  # a resynchronised sender has room
    assert replay.ReplayWindow(8).limit(now=1_000, ahead=100) == 1_100
    window.accept(5_001, window.limit(1_000, 100))
    assert window.next_seq == 5_002


def test_a_restored_window_refuses_everything_up_to_its_floor_as_too_old() -> None:
    window = replay.ReplayWindow(64, floor=1_000)
    assert window.highest == 1_000 and window.next_seq == 1_001
    for seq in (1_000, 999, 990, 1):  # inside the bitmap's reach too: never "unseen"
        with pytest.raises(SequenceTooOldError):
            window.check(seq)
    window.accept(1_005)
    with pytest.raises(SequenceTooOldError):
        window.check(1_000)
    window.accept(1_001)  # above the floor and never seen
    with pytest.raises(ReplayError):
        window.accept(1_001)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 400), max_size=120),
    st.none() | st.integers(0, 300),
    st.integers(1, 16),
)
def test_no_number_is_ever_accepted_twice_or_beyond_the_limit(
    numbers: list[int], floor: int | None, size: int
) -> None:
    window = replay.ReplayWindow(size, floor)
    accepted: set[int] = set()
    for step, seq in enumerate(numbers):
        limit = window.limit(now=step * 3, ahead=50)
        before = (window.highest, window.next_seq)
        try:
            window.accept(seq, limit)
        except ReplayError:
            assert (window.highest, window.next_seq) == before  # a refusal changes nothing
            continue
        assert seq not in accepted and seq <= limit
        assert floor is None or seq > floor
        accepted.add(seq)
