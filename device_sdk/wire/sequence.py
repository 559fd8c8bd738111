"""A sender's sequence numbers, and how a gateway's sealed refusal moves them (resynchronisation).

Every message a device sends carries a sequence number; the gateways accept each number
once, within a window (``edgecascade.edge_gateway.replay``) that may not run further ahead
than a bound over the gateway's clock. A device starts numbering at its clock in
microseconds (:func:`initial_sequence`), so a restarted device normally continues above what
the gateways saw. When its numbers fall outside what a gateway accepts (its clock was
behind, or jumped forward and back, or another sender with its keys moved the window, or
the gateway restarted), the gateway refuses the message and, because the message
authenticated, says in a reply sealed under the device's key where its numbers may go:
every number from ``next_seq`` up to ``limit``. :class:`SequenceCounter` moves there
(:meth:`SequenceCounter.resync`) and the device sends the refused request once more.

The resync travels in an ERROR reply's message, first, as ``resync next=<n> limit=<m>:``
(:func:`resync_message`, :func:`parse_resync`). The device believes it only in a reply that
decrypted under its own key and answers a request it has in flight (the request id, in the
AAD, is the challenge), so it cannot be forged or replayed. Moving the device's counter
never reopens a replay: the gateway still accepts each number once.
"""

from __future__ import annotations

import logging
import re
import threading
import time

logger = logging.getLogger(__name__)

MAX_SEQ = 2**64 - 1
_RESYNC_RE = re.compile(r"resync next=(\d{1,20}) limit=(\d{1,20}): ")


def initial_sequence() -> int:
    """A start for a sender's sequence numbers that grows across restarts: the clock in µs."""
    return time.time_ns() // 1000


def resync_message(next_seq: int, limit: int, detail: str) -> str:
    """An error message that tells the sender where its numbers may continue (and why)."""
    return f"resync next={next_seq} limit={limit}: {detail}"


def parse_resync(message: str) -> tuple[int, int] | None:
    """``(next_seq, limit)`` from an error message made by :func:`resync_message`; None if it is not one."""
    match = _RESYNC_RE.match(message)
    if match is None:
        return None
    next_seq, limit = int(match.group(1)), int(match.group(2))
    if not 0 <= next_seq <= limit <= MAX_SEQ:
        return None
    return next_seq, limit


class SequenceCounter:
    """Thread-safe sequence numbers of one sender: +1 per message, moved by a gateway's resync.

    Called, it returns the next number. Share one counter between everything that sends
    under the same device id (inference requests, relayed uploads): the gateways keep one
    window per device.
    """

    def __init__(self, start: int | None = None) -> None:
        self._next = initial_sequence() if start is None else start
        self._since = self._next  # numbers handed out since the last move: [_since, _next)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            seq = self._next
            self._next = min(seq + 1, MAX_SEQ)
            return seq

    def resync(self, next_seq: int, limit: int, refused: int | None = None) -> bool:
        """Continue at ``next_seq`` unless the next number is already in ``[next_seq, limit]``.

        Up when the counter is below what the gateway accepts (behind its window), down when
        it is above (further ahead than the gateway allows). A counter already inside is left
        alone, and so is one that moved after the ``refused`` number was handed out (that
        refusal is stale): the refusals of a burst of requests in flight move it once. True
        if it moved.
        """
        with self._lock:
            stale = refused is not None and not self._since <= refused < self._next
            if stale or next_seq <= self._next <= limit:
                return False
            logger.info(
                "sequence numbers resynchronised from %d to %d (the gateway accepts up to %d)",
                self._next,
                next_seq,
                limit,
            )
            self._next = self._since = next_seq
            return True
