"""Devices' messages as the gateway receives them: parsed once, sender checked, opened, answered.

Inference requests and hard-example uploads arrive alike: an envelope on a device's own
topic (the broker vouches for the device id in the topic), encrypted end to end unless the
``[crypto]`` settings allow plaintext. :func:`read` parses the payload once and
refuses an envelope naming another device than its topic; :func:`open_message` decrypts it
(checking the device's replay window), :func:`open_messages` a micro-batch of them (their
windows judged together); the :class:`Opened` message travels on as an object.
:func:`seal_reply` serialises a reply once, encrypted under the key id the request used,
and :func:`refusal` addresses an error reply even to a message that could not be read. A
message that authenticated but whose sequence number the device's window refuses is
answered with the sealed refusal the crypto made (it tells the device where its numbers
may continue); every other refusal is plain and carries nothing secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core import serving
from edgecascade.device_sdk.errors import ReplayError, WireError
from edgecascade.edge_gateway.crypto import GatewayCrypto


@dataclass(frozen=True)
class Message:
    """A message as it arrived: payload, and what the transport knows of its sender."""

    payload: bytes
    device_id: str | None = None  # from the MQTT topic; must match the envelope
    correlation: bytes | None = None  # MQTT v5 correlation data: the request id


@dataclass(frozen=True)
class Opened:
    """An authenticated message: its plain envelope, and the key id its reply is sealed with."""

    envelope: wire.Envelope
    key_id: int | None = None  # None: the message came in plaintext (encryption not required)

    @property
    def header(self) -> wire.Header:
        return self.envelope.header


def read(message: Message) -> wire.Envelope:
    """Parse a message's envelope and check it names the device of its topic."""
    envelope = wire.envelope_from_bytes(message.payload)
    if message.device_id is not None and envelope.header.device_id != message.device_id:
        raise WireError(f"envelope device id {envelope.header.device_id!r} does not match its topic")
    return envelope


def open_message(crypto: GatewayCrypto | None, envelope: wire.Envelope) -> Opened:
    """Decrypt a parsed envelope (with replay checks), or take it as it is when crypto is off."""
    if crypto is None:
        return Opened(envelope)
    return Opened(*crypto.open_request(envelope))


def open_messages(
    crypto: GatewayCrypto | None, envelopes: Sequence[wire.Envelope]
) -> list[Opened | Exception]:
    """:func:`open_message` for a micro-batch, each on its own: its Opened, or what it raised.

    The replay windows judge the batch's numbers together (one transaction of a shared store).
    """
    if crypto is None:
        return [Opened(envelope) for envelope in envelopes]
    return [
        opened if isinstance(opened, Exception) else Opened(*opened)
        for opened in crypto.open_requests(envelopes)
    ]


def seal_reply(crypto: GatewayCrypto | None, reply: wire.Envelope, key_id: int | None) -> bytes:
    """The reply's bytes, sealed under ``key_id`` when the request was encrypted."""
    if key_id is None or crypto is None:
        return wire.envelope_to_bytes(reply)
    return crypto.seal_reply(reply, key_id)


def refusal(
    message: Message, envelope: wire.Envelope | None, exc: Exception, kind: wire.MessageType
) -> wire.Envelope | None:
    """An ERROR reply to a message that cannot be served; None if nobody can be addressed.

    ``envelope`` is the message as parsed, if it parsed; otherwise the reply is addressed by
    the topic's device id and the correlation data (a request id), when both are known. The
    reply is plain, except for a sequence number refused after the message authenticated:
    then it is the refusal sealed for the device (:meth:`~.crypto.GatewayCrypto.open_request`).
    """
    if isinstance(exc, ReplayError) and exc.answer is not None:
        return exc.answer
    if envelope is not None:
        return serving.error_reply(envelope.header, exc)
    if message.device_id is None or message.correlation is None or len(message.correlation) != 16:
        return None
    return serving.error_reply(wire.Header(kind, message.device_id, 0, 0, message.correlation), exc)
