"""The replay window: which sequence numbers from one sender may still be accepted.

Pure logic, no I/O and no crypto (RFC 4303's anti-replay window): the newest number
accepted and a bitmap of the ``size`` numbers below it. A number seen before raises
:class:`~edgecascade.device_sdk.errors.ReplayError`; one too old to be checked,
:class:`~edgecascade.device_sdk.errors.SequenceTooOldError`. :class:`~.crypto.GatewayCrypto`
keeps one per device and only records numbers of messages that authenticated.
"""

from __future__ import annotations

from edgecascade.device_sdk.errors import ReplayError, SequenceTooOldError

WINDOW = 64


class ReplayWindow:
    """Sequence numbers accepted from one sender: the highest, and a bitmap of the ones below.

    Bit ``i`` of the bitmap is set when ``highest - i`` was accepted. Not thread-safe; the
    owner locks.
    """

    def __init__(self, size: int = WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.highest: int | None = None
        self._bits = 0

    def check(self, seq: int) -> None:
        """Raise ReplayError or SequenceTooOldError unless ``seq`` would be accepted."""
        if self.highest is None or seq > self.highest:
            return
        behind = self.highest - seq
        if behind >= self.size:
            raise SequenceTooOldError(
                f"sequence number {seq} is {behind} behind the newest ({self.highest}); window {self.size}"
            )
        if self._bits >> behind & 1:
            raise ReplayError(f"sequence number {seq} was already accepted")

    def accept(self, seq: int) -> None:
        """Check ``seq`` and record it."""
        self.check(seq)
        if self.highest is None:
            self.highest, self._bits = seq, 1
        elif seq > self.highest:
            shift = seq - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = seq
        else:
            self._bits |= 1 << (self.highest - seq)
