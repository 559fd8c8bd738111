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
too old (the gateway accepted some of them before and no longer knows which).
:class:`~.crypto.GatewayCrypto` keeps one window per device and only records numbers of
messages that authenticated.
"""

from __future__ import annotations

from edgecascade.device_sdk.errors import ReplayError, SequenceTooFarAheadError, SequenceTooOldError

WINDOW = 64


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
