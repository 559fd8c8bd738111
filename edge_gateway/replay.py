"""The replay window: which sequence numbers from one sender may still be accepted.

Pure logic, no I/O, no clock and no crypto (RFC 4303's anti-replay window): the newest
number accepted and a bitmap of the ``size`` numbers below it. A number seen before raises
:class:`~edgecascade.device_sdk.errors.ReplayError`; one too old to be checked,
:class:`~edgecascade.device_sdk.errors.SequenceTooOldError`; one above the ``limit`` the caller
passes, :class:`~edgecascade.device_sdk.errors.SequenceTooFarAheadError`, and the window does not
move. :meth:`ReplayWindow.limit` bounds how far a window may jump: up to ``ahead`` over the
gateway's clock (devices number with their clock in µs), and never less than ``size`` over
its newest number, so a device that resynchronised to it always has room.

A window restored after a restart starts at a ``floor``: every number up to it counts as
too old (the gateway accepted some of them before and no longer knows which); a window
kept whole in a shared store comes back exactly (:meth:`ReplayWindow.restore`).
:func:`judge` is one decision: accept a number or say where the sender may continue.

Where the windows live is a :class:`ReplayWindows`: in this process, with high-water marks
that survive a restart (:class:`~.replay_store.LocalWindows`), or in a database that every
gateway of a share group uses (:class:`~.shared_replay.SharedReplayStore`).
:class:`~.crypto.GatewayCrypto` only records numbers of messages that authenticated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from edgecascade.device_sdk.errors import (
    ReplayError,
    SequenceTooFarAheadError,
    SequenceTooOldError,
    StorageError,
)

WINDOW = 64


@dataclass(frozen=True)
class Refusal:
    """A number the window refused, and where the sender's numbers may continue."""

    error: ReplayError
    next_seq: int  # the lowest number accepted for sure
    limit: int  # the highest number accepted now


#: per number judged: None (accepted), a Refusal, or the StorageError that kept it from being judged
Verdict = Refusal | StorageError | None


class ReplayWindow:
    """Sequence numbers accepted from one sender: the highest, and a bitmap of the ones below.

    Bit ``i`` of the bitmap is set when ``highest - i`` was accepted. ``floor``: numbers at
    or below it are refused as too old (the window's state before a restart). Not
    thread-safe; the owner locks.
    """

    def __init__(self, size: int = WINDOW, floor: int | None = None) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.floor = floor
        self.highest: int | None = floor
        self._bits = 0

    @classmethod
    def restore(cls, size: int, highest: int | None, bits: int) -> ReplayWindow:
        """A window exactly as :attr:`state` gave it (no floor: every number it accepted is in it)."""
        window = cls(size)
        window.highest = highest
        window._bits = bits & ((1 << size) - 1) if highest is not None else 0
        return window

    @property
    def state(self) -> tuple[int | None, int]:
        """The newest number accepted and the bitmap below it: what a shared store keeps."""
        return self.highest, self._bits

    @property
    def next_seq(self) -> int | None:
        """The lowest number the window accepts for sure (None: it has not seen any yet)."""
        return None if self.highest is None else self.highest + 1

    def limit(self, now: int, ahead: int) -> int:
        """The highest number accepted at gateway time ``now`` (in the senders' unit, µs).

        ``ahead`` over the clock, or ``size`` over the newest number if that is higher (the
        clock went back, or a restored floor lies ahead of it): the window moves at most
        that far, and a sender that continues at :attr:`next_seq` is always accepted.
        """
        top = now + ahead
        return top if self.highest is None else max(top, self.highest + self.size)

    def check(self, seq: int, limit: int | None = None) -> None:
        """Raise a ReplayError (or subclass) unless ``seq`` would be accepted."""
        if limit is not None and seq > limit:
            raise SequenceTooFarAheadError(
                f"sequence number {seq} is {seq - limit} beyond the highest accepted now ({limit})"
            )
        if self.highest is None or seq > self.highest:
            return
        if self.floor is not None and seq <= self.floor:
            raise SequenceTooOldError(f"sequence number {seq} is at or below the restored floor {self.floor}")
        behind = self.highest - seq
        if behind >= self.size:
            raise SequenceTooOldError(
                f"sequence number {seq} is {behind} behind the newest ({self.highest}); window {self.size}"
            )
        if self._bits >> behind & 1:
            raise ReplayError(f"sequence number {seq} was already accepted")

    def accept(self, seq: int, limit: int | None = None) -> None:
        """Check ``seq`` and record it."""
        self.check(seq, limit)
        if self.highest is None:
            self.highest, self._bits = seq, 1
        elif seq > self.highest:
            shift = seq - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = seq
        else:
            self._bits |= 1 << (self.highest - seq)


def judge(window: ReplayWindow, seq: int, now: int, ahead: int) -> Refusal | None:
    """Accept ``seq`` into ``window`` at gateway time ``now`` (µs), or say why not and where to go on.

    A refusal leaves the window as it was; it tells the sender every number from
    ``next_seq`` (the window's, or the clock's for a window still empty) up to ``limit``.
    """
    limit = window.limit(now, ahead)
    try:
        window.accept(seq, limit)
    except ReplayError as exc:
        next_seq = window.next_seq
        return Refusal(exc, now if next_seq is None else next_seq, limit)
    return None


class ReplayWindows(ABC):
    """Every device's replay window, wherever it is kept; thread-safe.

    :meth:`accept_many` judges the numbers of one micro-batch together (one transaction
    for a shared store), each on its own: one refused number never affects another.
    """

    @abstractmethod
    def accept_many(self, numbers: Sequence[tuple[str, int]], now: int, ahead: int) -> list[Verdict]:
        """Judge each ``(device id, sequence number)`` in order at gateway time ``now`` (µs)."""

    def close(self) -> None:  # noqa: B027 (optional: windows in memory hold nothing)
        """Release what the windows are kept in."""
