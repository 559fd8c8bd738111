"""The device's side of a request to the next tier: seal, submit, wait, open the reply.

I/O only: :func:`exchange` sends a window of cut features at once and returns, per input,
the upper tier's result or the error that stands in for it (timeout, link failure, error
reply, unreadable reply). :class:`~edgecascade.device_sdk.client.DeviceClient` decides what each
outcome means: an answer, the device's own answer flagged degraded, or another try with
the model it replaced.

A request whose sequence number the gateway refused comes back as a sealed
:class:`~edgecascade.device_sdk.errors.OutOfWindowError` that says where the device's numbers
may continue: :func:`exchange` moves the sender's counter there (``Sender.resync``) and
sends that request once more, with a new number (:mod:`edgecascade.device_sdk.wire.sequence`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import (
    EdgeCascadeError,
    OutOfWindowError,
    RemoteError,
    TransportError,
    WireError,
)
from edgecascade.device_sdk.transport import Transport
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import DeviceCrypto
from edgecascade.device_sdk.wire.sequence import parse_resync


@dataclass(frozen=True)
class Outcome:
    """What became of one request: a result, or the error in its place."""

    result: wire.Result | None
    error: EdgeCascadeError | None
    bytes_sent: int  # 0 when nothing left the device
    elapsed_ms: float  # from submission to the reply or the failure
    resent: bool = False  # sent twice: the first number was refused and the counter resynchronised


@dataclass(frozen=True)
class Sender:
    """Who sends, how, and with which model version and cut encoding."""

    transport: Transport
    crypto: DeviceCrypto | None
    device_id: str
    next_seq: Callable[[], int]
    timeout: float
    resync: Callable[[int, int, int], object] | None = None  # (next_seq, limit, refused number)


def exchange(
    sender: Sender, version: int, encoding: str, classes: int, features: list[np.ndarray]
) -> list[Outcome]:
    """Submit every request, then collect every reply within the sender's timeout.

    Requests refused for their sequence number are sent once more after the counter
    resynchronised (when the sender can resync).
    """
    outcomes = _exchange(sender, version, encoding, classes, features)
    refused = [i for i, o in enumerate(outcomes) if isinstance(o.error, OutOfWindowError)]
    if not refused or sender.resync is None:
        return outcomes
    for i in refused:
        error = outcomes[i].error
        assert isinstance(error, OutOfWindowError)
        sender.resync(error.next_seq, error.limit, error.refused)
    again = _exchange(sender, version, encoding, classes, [features[i] for i in refused])
    for i, second in zip(refused, again, strict=True):
        first = outcomes[i]
        outcomes[i] = Outcome(
            second.result,
            second.error,
            first.bytes_sent + second.bytes_sent,
            first.elapsed_ms + second.elapsed_ms,
            resent=True,
        )
    return outcomes


def _exchange(
    sender: Sender, version: int, encoding: str, classes: int, features: list[np.ndarray]
) -> list[Outcome]:
    """One round: submit every request, then collect every reply within the sender's timeout."""
    sent: list[tuple[wire.Header, int, float, Future[bytes] | EdgeCascadeError]] = []
    for tensor in features:
        header = wire.Header(wire.MessageType.INFER_REQUEST, sender.device_id, version, sender.next_seq())
        envelope = wire.Envelope(header, codec.encode_features(tensor, encoding))
        request = (
            sender.crypto.seal(envelope) if sender.crypto is not None else wire.envelope_to_bytes(envelope)
        )
        submitted = time.perf_counter()
        try:
            future: Future[bytes] | EdgeCascadeError = sender.transport.submit(request, header.request_id)
        except TransportError as exc:
            future = exc
        size = 0 if isinstance(future, EdgeCascadeError) else len(request)
        sent.append((header, size, submitted, future))
    outcomes = []
    for header, size, submitted, future in sent:
        result: wire.Result | None = None
        error: EdgeCascadeError | None = None
        try:
            if isinstance(future, EdgeCascadeError):
                raise future
            remaining = max(0.0, sender.timeout - (time.perf_counter() - submitted))
            try:
                reply = future.result(remaining)
            except FutureTimeout:
                sender.transport.forget(header.request_id)
                raise TransportError(f"no reply within {sender.timeout:.3g} s") from None
            result = read_reply(sender.crypto, header, reply, classes)
        except (TransportError, WireError) as exc:  # RemoteError is a TransportError
            error = exc
        outcomes.append(Outcome(result, error, size, (time.perf_counter() - submitted) * 1000))
    return outcomes


def open_reply(
    crypto: DeviceCrypto | None, request: wire.Header, reply: bytes, expected: wire.MessageType
) -> wire.Envelope:
    """The reply to ``request``, decrypted, of type ``expected``.

    RemoteError for an error reply (OutOfWindowError for a sealed refusal of the request's
    sequence number), WireError for a reply to another request or of another type.
    """
    envelope = crypto.open(reply) if crypto is not None else wire.envelope_from_bytes(reply)
    if envelope.header.request_id != request.request_id:
        raise WireError("reply does not answer this request")
    if envelope.header.msg_type == wire.MessageType.ERROR:
        code, message = wire.decode_error(envelope.body)
        window = parse_resync(message) if crypto is not None else None  # believed only sealed
        if window is not None and code == wire.ErrorCode.UNAUTHORIZED:
            raise OutOfWindowError(int(code), message, *window, refused=request.seq)
        raise RemoteError(int(code), message)
    if envelope.header.msg_type != expected:
        raise WireError(f"unexpected reply type {envelope.header.msg_type.name}")
    return envelope


def read_reply(crypto: DeviceCrypto | None, request: wire.Header, reply: bytes, classes: int) -> wire.Result:
    """The result a reply carries; RemoteError for an error reply, WireError for anything else wrong."""
    result = wire.decode_result(open_reply(crypto, request, reply, wire.MessageType.RESULT).body)
    if len(result.probabilities) != classes:
        raise WireError("reply has the wrong number of classes")
    return result
