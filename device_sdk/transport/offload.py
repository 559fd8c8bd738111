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

A request still unanswered ``Sender.retry_after`` seconds after it left is sent once more,
sealed again under a fresh sequence number and request id: gateways share the devices'
requests (one MQTT share group), so the second copy may reach a gateway that is alive when
the first one's went down with it. The first reply to either copy wins; the input is a
failure only if neither is answered within the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
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
    retried: bool = False  # sent twice: no reply came within the sender's retry_after

    @property
    def events(self) -> tuple[str, ...]:
        """The client counters this outcome adds to, besides its answer."""
        return ("resent_after_resync",) * self.resent + ("retries",) * self.retried


@dataclass(frozen=True)
class Sender:
    """Who sends, how, and with which model version and cut encoding."""

    transport: Transport
    crypto: DeviceCrypto | None
    device_id: str
    next_seq: Callable[[], int]
    timeout: float
    resync: Callable[[int, int, int], object] | None = None  # (next_seq, limit, refused number)
    retry_after: float | None = None  # seconds; None, or not below the timeout: never sent twice

    @property
    def retries(self) -> bool:
        """Whether an unanswered request is sent once more before the timeout."""
        return self.retry_after is not None and 0 < self.retry_after < self.timeout


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
            retried=first.retried or second.retried,
        )
    return outcomes


@dataclass(frozen=True)
class _Try:
    """One copy of a request on its way: its header, size, when it left, its reply to come."""

    header: wire.Header
    size: int  # 0 when it never left
    submitted: float  # perf_counter
    future: Future[bytes] | EdgeCascadeError


def _submit(sender: Sender, version: int, encoding: str, tensor: np.ndarray) -> _Try:
    """Seal one request under the next sequence number and hand it to the transport."""
    header = wire.Header(wire.MessageType.INFER_REQUEST, sender.device_id, version, sender.next_seq())
    envelope = wire.Envelope(header, codec.encode_features(tensor, encoding))
    request = sender.crypto.seal(envelope) if sender.crypto is not None else wire.envelope_to_bytes(envelope)
    submitted = time.perf_counter()
    try:
        future: Future[bytes] | EdgeCascadeError = sender.transport.submit(request, header.request_id)
    except TransportError as exc:
        future = exc
    return _Try(header, 0 if isinstance(future, EdgeCascadeError) else len(request), submitted, future)


def _exchange(
    sender: Sender, version: int, encoding: str, classes: int, features: list[np.ndarray]
) -> list[Outcome]:
    """One round: submit every request, send again what is unanswered at ``retry_after``, collect."""
    firsts = [_submit(sender, version, encoding, tensor) for tensor in features]
    seconds: list[_Try | None] = [None] * len(firsts)
    if sender.retries:
        assert sender.retry_after is not None
        for i, first in enumerate(firsts):
            if isinstance(first.future, Future):
                wait([first.future], max(0.0, first.submitted + sender.retry_after - time.perf_counter()))
                if not first.future.done():
                    seconds[i] = _submit(sender, version, encoding, features[i])
    return [_collect(sender, classes, first, second) for first, second in zip(firsts, seconds, strict=True)]


def _collect(sender: Sender, classes: int, first: _Try, second: _Try | None) -> Outcome:
    """The first reply to either copy within the timeout (from the first copy's departure)."""
    tries = [t for t in (first, second) if t is not None and isinstance(t.future, Future)]
    result: wire.Result | None = None
    error: EdgeCascadeError | None = None
    try:
        if not tries:
            assert isinstance(first.future, EdgeCascadeError)
            raise first.future
        remaining = max(0.0, sender.timeout - (time.perf_counter() - first.submitted))
        done, _ = wait([t.future for t in tries], remaining, return_when=FIRST_COMPLETED)  # type: ignore[misc]
        for t in tries:
            if t.future not in done:
                sender.transport.forget(t.header.request_id)
        if not done:
            raise TransportError(f"no reply within {sender.timeout:.3g} s")
        winner = next(t for t in tries if t.future in done)
        assert isinstance(winner.future, Future)
        result = read_reply(sender.crypto, winner.header, winner.future.result(), classes)
    except (TransportError, WireError) as exc:  # RemoteError is a TransportError
        error = exc
    size = first.size + (second.size if second is not None else 0)
    elapsed = (time.perf_counter() - first.submitted) * 1000
    return Outcome(result, error, size, elapsed, retried=second is not None and second.size > 0)


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
