"""The gateway's hard-example relay: devices' upload batches in, durable records, receipts out.

A device publishes a ``HARD_EXAMPLES`` envelope (encrypted like its requests) on its own
upload topic. :meth:`HardExampleRelay.handle` decrypts it (checking the device's replay
window), reads the JSON batch, validates every record with
:meth:`~edgecascade.device_sdk.learning.records.HardExample.from_json`, refuses records that claim another
device, stores the rest in the gateway's :class:`~.learning.outbox.Outbox` in one fsynced
transaction, and only then answers with a ``HARD_EXAMPLES_ACK`` receipt. A record the
outbox could not take (full of pending records) is left out of the receipt, so the device
keeps it and tries again later.

Whole-batch problems (cannot decrypt, not a batch, more than ``MAX_BATCH`` records, the
outbox cannot be written) are answered with an ERROR envelope whose code says whether the
device should split the batch (400) or just retry later (401, 503). Everything is counted
(``hx_*`` in the gateway's counters) and logged, the log lines rate-limited per reason and
device (a device resending a bad batch in a loop costs a few lines a minute); nothing stops
the gateway.
"""

from __future__ import annotations

import logging

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core import serving
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import BatchError, CryptoError, EdgeCascadeError, StorageError, WireError
from edgecascade.device_sdk.learning.batch import Receipt, Rejection, parse_batch
from edgecascade.device_sdk.learning.outbox import AddStatus, Outbox
from edgecascade.device_sdk.logs import LogLimiter
from edgecascade.edge_gateway.crypto import GatewayCrypto
from edgecascade.edge_gateway.messages import Message, Opened, open_message, read, refusal, seal_reply

logger = logging.getLogger(__name__)


class HardExampleRelay:
    """Validates and stores devices' upload batches; thread-safe (the outbox is)."""

    def __init__(
        self, outbox: Outbox, crypto: GatewayCrypto | None, counters: Counters | None = None
    ) -> None:
        self.outbox = outbox
        self.crypto = crypto
        self.counters = counters if counters is not None else Counters()
        self.log_limiter = LogLimiter(logger)

    def handle(self, payload: bytes, device_id: str, correlation: bytes | None = None) -> bytes | None:
        """The receipt (or error) envelope answering one upload; None if nobody can be addressed."""
        self.counters.add("hx_batches")
        self.counters.add("hx_bytes_in", len(payload))
        message = Message(payload, device_id, correlation)
        envelope: wire.Envelope | None = None
        upload: Opened | None = None
        try:
            envelope = read(message)
            upload = open_message(self.crypto, envelope)
            if upload.header.msg_type != wire.MessageType.HARD_EXAMPLES:
                kind = upload.header.msg_type.name
                raise WireError(f"expected HARD_EXAMPLES on an upload topic, got {kind}")
            receipt = self._store(upload.header, upload.envelope.body)
            reply = wire.Envelope(upload.header.reply(wire.MessageType.HARD_EXAMPLES_ACK), receipt.to_bytes())
        except EdgeCascadeError as exc:
            refused = self._reject(message, envelope, exc)
            if upload is None or refused is None:  # never seal an answer to what did not authenticate
                return wire.envelope_to_bytes(refused) if refused is not None else None
            reply = refused
        try:
            return seal_reply(self.crypto, reply, upload.key_id)
        except EdgeCascadeError as exc:
            self.counters.add("hx_reply_seal_failed")
            self.log_limiter.log(
                logging.WARNING,
                ("receipt_not_sealed", device_id),
                "cannot encrypt an upload receipt for %s: %s",
                device_id,
                exc,
            )
            return None

    def _store(self, header: wire.Header, body: bytes) -> Receipt:
        """Validate a batch, store what is valid (one fsync), and say what happened to each id."""
        examples, rejected = parse_batch(body)
        total = len(examples) + len(rejected)
        mine = []
        for example in examples:
            if example.device_id == header.device_id:
                mine.append(example)
            else:  # a device speaks only for itself, like on the request topic
                reason = f"device_id is not the sender {header.device_id}"
                rejected.append(Rejection(example.example_id, reason))
        statuses = self.outbox.add_many(mine)
        accepted = [e.example_id for e, s in zip(mine, statuses, strict=True) if s is AddStatus.STORED]
        duplicates = [e.example_id for e, s in zip(mine, statuses, strict=True) if s is AddStatus.DUPLICATE]
        deferred = len(mine) - len(accepted) - len(duplicates)
        self.counters.add("hx_accepted", len(accepted))
        self.counters.add("hx_duplicates", len(duplicates))
        self.counters.add("hx_rejected", len(rejected))
        if deferred:
            self.counters.add("hx_deferred_full", deferred)
        if rejected:
            self.log_limiter.log(
                logging.WARNING,
                ("records_rejected", header.device_id),
                "rejected %d of %d hard example(s) from %s: %s",
                len(rejected),
                total,
                header.device_id,
                "; ".join(sorted({r.reason for r in rejected}))[:300],
            )
        return Receipt(tuple(accepted), tuple(duplicates), tuple(rejected))

    def _reject(
        self, message: Message, envelope: wire.Envelope | None, exc: EdgeCascadeError
    ) -> wire.Envelope | None:
        """An ERROR envelope for an upload refused as a whole (400 split, 401/503 retry later)."""
        if isinstance(exc, CryptoError | BatchError):
            reason = exc.reason
        elif isinstance(exc, StorageError):
            reason = "storage"
        else:
            reason = serving.error_code(exc).name.lower()
        self.counters.add(f"hx_rejected_batch_{reason}")
        self.log_limiter.log(
            logging.WARNING,
            (reason, message.device_id),
            "refused an upload from %s: %s",
            message.device_id,
            exc,
        )
        # BatchError: MALFORMED (split); crypto: 401; storage: 503
        return refusal(message, envelope, exc, wire.MessageType.HARD_EXAMPLES)
