"""A device's sequence numbers and its resynchronisation after a gateway's sealed refusal."""

from __future__ import annotations

import threading

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import OutOfWindowError, RemoteError
from edgecascade.device_sdk.learning.batch import Receipt
from edgecascade.device_sdk.learning.links import RelayUploadLink
from edgecascade.device_sdk.transport import InMemoryTransport
from edgecascade.device_sdk.transport.offload import Sender, exchange
from edgecascade.device_sdk.wire import crypto
from edgecascade.device_sdk.wire.sequence import (
    MAX_SEQ,
    SequenceCounter,
    initial_sequence,
    parse_resync,
    resync_message,
)

DEVICE = "cam-01"
FEATURES = [np.zeros((2, 2, 1), np.float32) for _ in range(3)]


def test_the_counter_starts_at_the_clock_and_hands_out_each_number_once() -> None:
    before = initial_sequence()
    counter = SequenceCounter()
    assert before <= counter() <= initial_sequence()
    numbers: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [counter() for _ in range(500)]
        with lock:
            numbers.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(numbers)) == len(numbers) == 2000


def test_resync_moves_the_counter_up_or_down_only_when_it_is_outside() -> None:
    behind = SequenceCounter(100)  # a clock behind the window (or a restarted gateway's mark)
    assert behind.resync(500, 900) and behind() == 500
    assert not behind.resync(400, 900) and behind() == 501  # inside already: a later refusal of the burst
    ahead = SequenceCounter(10_000)  # a clock further ahead than the gateway allows
    assert ahead.resync(500, 900) and ahead() == 500
    inside = SequenceCounter(700)
    assert not inside.resync(500, 900) and inside() == 700


def test_refusals_of_numbers_handed_out_before_the_last_move_are_stale() -> None:
    counter = SequenceCounter(10_000)  # a burst of three, all too far ahead
    burst = [counter(), counter(), counter()]
    assert counter.resync(500, 900, refused=burst[0])
    # the gateway's clock moved on while it refused the others: their advice is older than the move
    assert not counter.resync(501, 901, refused=burst[1]) and not counter.resync(502, 902, refused=burst[2])
    assert counter() == 500
    assert counter.resync(700, 900, refused=500)  # a refusal of a number handed out since: applies
    assert counter() == 700


def test_resync_messages_round_trip_and_nothing_else_reads_as_one() -> None:
    text = resync_message(5, 9, "sequence number 3 is too old")
    assert parse_resync(text) == (5, 9) and text.endswith("too old")
    for other in (
        "sequence number 3 is too old",
        "nope: resync next=5 limit=9: x",  # only at the start
        "resync next=9 limit=5: x",  # next above limit
        f"resync next=1 limit={MAX_SEQ + 1}: x",  # beyond a u64
        "resync next=-1 limit=5: x",
        "resync next=5 limit=9 x",
    ):
        assert parse_resync(other) is None, other


class FakeGateway:
    """The gateway's side of the exchange with real keys: a floor below which it refuses, sealed."""

    def __init__(self, floor: int, *, sealed: bool = True, always_refuse: bool = False) -> None:
        gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self.keys = crypto.gateway_pair_keys(gateway_key, device_key.public_key(), DEVICE, 1)
        device = crypto.device_pair_keys(device_key, gateway_key.public_key(), DEVICE, 1)
        self.device = crypto.DeviceCrypto(DEVICE, {1: device})
        self.floor, self.sealed, self.always_refuse = floor, sealed, always_refuse
        self.seen: list[int] = []

    def __call__(self, payload: bytes) -> bytes:
        request = wire.envelope_from_bytes(payload)
        if request.header.flags & wire.FLAG_ENCRYPTED:
            request = crypto.open_sealed(request, self.keys.to_gateway)
        seq = request.header.seq
        self.seen.append(seq)
        if seq < self.floor or self.always_refuse:
            body = wire.encode_error(
                wire.ErrorCode.UNAUTHORIZED, resync_message(self.floor, self.floor + 1000, "too old")
            )
            reply = wire.Envelope(request.header.reply(wire.MessageType.ERROR), body)
        elif request.header.msg_type is wire.MessageType.HARD_EXAMPLES:
            receipt = Receipt(accepted=("abc",)).to_bytes()
            reply = wire.Envelope(request.header.reply(wire.MessageType.HARD_EXAMPLES_ACK), receipt)
        else:
            result = wire.Result(2, np.full(10, 0.1, np.float32), wire.Tier.GATEWAY)
            reply = wire.Envelope(request.header.reply(wire.MessageType.RESULT), wire.encode_result(result))
        if not self.sealed:
            return wire.envelope_to_bytes(reply)
        return crypto.seal(reply, self.keys.to_device, 1)


def _sender(gateway: FakeGateway, counter: SequenceCounter, *, crypto_on: bool = True) -> Sender:
    transport = InMemoryTransport(gateway)
    return Sender(
        transport, gateway.device if crypto_on else None, DEVICE, counter, 1.0, resync=counter.resync
    )


def test_refused_requests_are_sent_once_more_above_the_gateways_window() -> None:
    gateway, counter = FakeGateway(floor=10_000), SequenceCounter(100)
    outcomes = exchange(_sender(gateway, counter), 1, "float32", 10, FEATURES)
    assert all(o.result is not None and o.resent for o in outcomes)
    assert all(o.bytes_sent > 0 for o in outcomes)
    assert gateway.seen == [100, 101, 102, 10_000, 10_001, 10_002]  # one resync for the burst
    fine = exchange(_sender(gateway, counter), 1, "float32", 10, FEATURES)
    assert all(o.result is not None and not o.resent for o in fine)  # no more refusals


def test_a_request_is_sent_again_only_once() -> None:
    gateway, counter = FakeGateway(floor=10_000, always_refuse=True), SequenceCounter(100)
    (outcome,) = exchange(_sender(gateway, counter), 1, "float32", 10, FEATURES[:1])
    assert isinstance(outcome.error, OutOfWindowError) and outcome.resent and outcome.result is None
    assert (outcome.error.next_seq, outcome.error.limit) == (10_000, 11_000)
    assert len(gateway.seen) == 2


def test_an_unsealed_resync_is_not_believed() -> None:
    gateway, counter = FakeGateway(floor=10_000, sealed=False), SequenceCounter(100)
    (outcome,) = exchange(_sender(gateway, counter, crypto_on=False), 1, "float32", 10, FEATURES[:1])
    assert type(outcome.error) is RemoteError and not outcome.resent
    assert counter() == 101  # not moved by a reply anyone on the path could have written
    (outcome,) = exchange(_sender(gateway, counter), 1, "float32", 10, FEATURES[:1])
    assert outcome.error is not None and not outcome.resent  # a device with keys refuses plain replies
    assert not isinstance(outcome.error, OutOfWindowError) and counter() == 103


def test_an_upload_link_resynchronises_its_counter_too() -> None:
    gateway, counter = FakeGateway(floor=10_000), SequenceCounter(100)  # e.g. after a gateway restart
    transport = InMemoryTransport(gateway, upload_handler=gateway)
    link = RelayUploadLink(transport, DEVICE, 1, crypto=gateway.device, sequence=counter)
    assert link.upload([]).accepted == ("abc",)
    assert gateway.seen == [100, 10_000] and counter() == 10_001
