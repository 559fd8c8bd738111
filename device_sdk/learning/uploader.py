"""The uploader: a background thread that empties an outbox into the next hop, idempotently.

It takes the oldest pending records (at most ``batch_size`` and ``max_batch_bytes``), sends
them over an :class:`UploadLink` and marks an id ``sent`` only when the receipt lists it as
accepted or duplicate, ``failed`` only when the receipt rejects it. Anything else (the link
is down, the receiver is unavailable, the answer was lost, the receipt omits an id) leaves
the record pending: it is sent again after an exponential back-off with jitter
(:func:`backoff_delay`). Because ids are content ids, a re-sent record is a duplicate at
the receiver, never a second copy.

A batch the receiver refuses as a whole (HTTP 400, 413 or 422, or an ERROR envelope with
those codes) is split in halves and retried at once, down to single records; a single
record refused as a whole is marked failed with the receiver's message. One poisonous
record therefore cannot block the records queued behind it.

Links: :mod:`edgecascade.device_sdk.learning.links` (the gateway relay over MQTT, HTTPS to the cloud, an
in-memory twin); the gateway's HTTP cloud link is one too.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import RemoteError, StorageError, TransportError, WireError
from edgecascade.device_sdk.learning.batch import Receipt
from edgecascade.device_sdk.learning.outbox import Outbox, PendingRecord
from edgecascade.device_sdk.learning.records import MAX_BATCH

logger = logging.getLogger(__name__)

WHOLE_BATCH_REFUSED = frozenset({400, 413, 422})
"""Receiver answers that refuse a batch's content as a whole: split it rather than retry it."""

DEFAULT_MAX_BATCH_BYTES = 512 * 1024
"""JSON bytes of records per upload (under the cloud's default 1 MiB body limit)."""


class UploadLink(abc.ABC):
    """Where an uploader sends batches: the gateway relay, the cloud, or a test double."""

    @property
    def available(self) -> bool:
        """Whether a link exists right now (e.g. the MQTT connection is up); else the uploader waits."""
        return True

    @abc.abstractmethod
    def upload(self, records: Sequence[Mapping[str, Any]]) -> Receipt:
        """Send one batch of HardExample JSON records; the receipt says what the receiver holds.

        Raises TransportError (RemoteError when the receiver answered with an error) or
        WireError (an answer that cannot be read); the uploader retries after either.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``base * 2**(failures-1)``, capped, jittered.

    "Equal jitter": half the delay is fixed, half uniform, so many nodes that failed together
    (a cloud outage) do not retry in lockstep, yet none retries immediately.
    """
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 60))
    return ceiling / 2 + (rng or random).random() * ceiling / 2


@dataclass(frozen=True)
class UploadOutcome:
    """What one call of :meth:`Uploader.upload_once` did."""

    attempted: int = 0  # records sent
    sent: int = 0  # acknowledged (accepted or duplicate): marked sent
    failed: int = 0  # rejected: marked failed
    unacknowledged: int = 0  # neither: still pending, sent again after a back-off
    split: bool = False  # refused as a whole: the next batch is smaller

    @property
    def idle(self) -> bool:
        return self.attempted == 0


class Uploader:
    """Sends an outbox's pending records over a link, in a background thread (see module doc)."""

    def __init__(
        self,
        outbox: Outbox,
        link: UploadLink,
        *,
        batch_size: int = 64,
        interval: float = 5.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        name: str = "hard-example-uploader",
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH}")
        self.outbox = outbox
        self.link = link
        self.batch_size = batch_size
        self.interval = interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_batch_bytes = max_batch_bytes
        self.counters = Counters()
        self._limit = batch_size  # shrinks while a batch is refused as a whole
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @classmethod
    def from_settings(cls, outbox: Outbox, link: UploadLink, settings: Any, **kwargs: Any) -> Uploader:
        """An uploader with a config section's ``batch_size``, ``upload_interval`` and back-off."""
        return cls(
            outbox,
            link,
            batch_size=settings.batch_size,
            interval=settings.upload_interval,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            **kwargs,
        )

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> Uploader:
        self._thread.start()
        return self

    def wake(self) -> None:
        """Look for pending records now rather than after the interval or back-off."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the batch in flight (if any); True if the thread ended within ``timeout``.

        A batch still in flight when this returns False is safe: if its receipt arrives after
        the outbox was closed, its records simply stay pending and are sent again next time.
        """
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        self.wake()
        while self.outbox.counts()["pending"]:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # ---------------------------------------------------------------------- one batch
    def upload_once(self) -> UploadOutcome:
        """Send the oldest pending batch and record the receipt; raises what the link raises."""
        if not self.link.available:
            self.counters.add("no_link")
            return UploadOutcome()
        records = self._batch(self.outbox.pending(self._limit))
        if not records:
            return UploadOutcome()
        ids = [r.id for r in records]
        self.counters.add("batches")
        try:
            receipt = self.link.upload([r.record for r in records])
        except RemoteError as exc:
            if exc.code not in WHOLE_BATCH_REFUSED:
                raise
            return self._refused(records, exc)
        wanted = set(ids)
        acked = receipt.acknowledged & wanted
        failed = {r.id: r.reason for r in receipt.rejected if r.id in wanted and r.id not in acked}
        extra = (receipt.acknowledged | {r.id for r in receipt.rejected}) - wanted - {None}
        if extra:
            self.counters.add("receipt_unknown_ids", len(extra))
            logger.warning("receipt names %d id(s) that were not in the batch; ignored", len(extra))
        self.outbox.mark_sent(acked)
        self.outbox.mark_failed(failed)
        missing = len(wanted) - len(acked) - len(failed)
        self.counters.add("accepted", len(set(receipt.accepted) & wanted))
        self.counters.add("duplicates", len(acked) - len(set(receipt.accepted) & wanted))
        self.counters.add("rejected", len(failed))
        if missing:
            self.counters.add("unacknowledged", missing)
        else:
            self._limit = self.batch_size
        return UploadOutcome(len(records), len(acked), len(failed), missing)

    def _batch(self, records: list[PendingRecord]) -> list[PendingRecord]:
        """The longest prefix within ``max_batch_bytes`` (never empty when records exist)."""
        total = 0
        for n, record in enumerate(records):
            total += record.size
            if total > self.max_batch_bytes and n > 0:
                return records[:n]
        return records

    def _refused(self, records: list[PendingRecord], exc: RemoteError) -> UploadOutcome:
        """A batch refused as a whole: halve it, or give up on a single record."""
        self.counters.add(f"refused_{exc.code}")
        if len(records) > 1:
            self._limit = max(1, len(records) // 2)
            logger.warning(
                "batch of %d refused (%s); retrying in batches of %d", len(records), exc, self._limit
            )
            return UploadOutcome(len(records), split=True)
        self.outbox.mark_failed({records[0].id: f"refused as a whole: {exc.code} {exc.message}"[:200]})
        self.counters.add("rejected")
        return UploadOutcome(1, failed=1)

    # ------------------------------------------------------------------------- thread
    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            delay = self.interval
            try:
                outcome = self.upload_once()
            except StorageError as exc:
                self.counters.add("storage_error")
                logger.error("outbox unusable, uploader stops: %s", exc)
                return
            except (TransportError, WireError) as exc:
                failures += 1
                self.counters.add(f"failed_{type(exc).__name__}")
                delay = backoff_delay(failures, self.backoff_base, self.backoff_max, self._rng)
                logger.warning("upload failed (%d in a row), next try in %.2f s: %s", failures, delay, exc)
            except Exception:  # a bug must not end uploads for the life of the process
                failures += 1
                self.counters.add("failed_unexpected")
                delay = backoff_delay(failures, self.backoff_base, self.backoff_max, self._rng)
                logger.exception("unexpected error while uploading; next try in %.2f s", delay)
            else:
                if outcome.unacknowledged:
                    failures += 1
                    delay = backoff_delay(failures, self.backoff_base, self.backoff_max, self._rng)
                elif not outcome.idle:
                    failures = 0
                    continue  # more may be pending: no wait while the link works
                else:
                    failures = 0
            self._wake.wait(delay)
            self._wake.clear()
