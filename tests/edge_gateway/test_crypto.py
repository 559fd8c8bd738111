"""End-to-end payload encryption, gateway side: round trips, keys, rotation, replays, resync, fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import (
    ConfigError,
    CryptoError,
    DecryptError,
    EdgeCascadeError,
    NotEncryptedError,
    ReplayError,
    SequenceTooFarAheadError,
    SequenceTooOldError,
    StorageError,
    UnknownKeyError,
    WireError,
)
from edgecascade.device_sdk.wire import crypto
from edgecascade.device_sdk.wire.crypto import load_x25519_private, load_x25519_public
from edgecascade.device_sdk.wire.keys import load_device_crypto
from edgecascade.device_sdk.wire.sequence import SequenceCounter, parse_resync
from edgecascade.edge_gateway.config import CryptoSettings
from edgecascade.edge_gateway.crypto import GatewayCrypto, GatewayKeyring, load_gateway_crypto
from edgecascade.edge_gateway.messages import Message, open_message, read
from edgecascade.edge_gateway.replay_store import RESERVE, ReplayStore
from edgecascade.tools.certs import init_pki, issue_device

DEVICE = "cam-01"


def open_request(
    gateway: GatewayCrypto, payload: bytes, topic_device: str | None = None
) -> tuple[bytes, int | None]:
    """The gateway's path for one payload: parse once, check the topic, open; the plain bytes."""
    opened = open_message(gateway, read(Message(payload, topic_device)))
    return wire.envelope_to_bytes(opened.envelope), opened.key_id


def seal_reply(gateway: GatewayCrypto, reply: bytes, key_id: int) -> bytes:
    return gateway.seal_reply(wire.envelope_from_bytes(reply), key_id)


_seq = itertools.count(1000)


@dataclasses.dataclass
class Site:
    """One gateway key, a device with key generations 1 and 2, and a keyring holding both."""

    gateway_key: X25519PrivateKey
    device_keys: dict[int, X25519PrivateKey]
    keyring: GatewayKeyring

    def device(
        self, *key_ids: int, device_id: str = DEVICE, gateway_name: str = "gateway"
    ) -> crypto.DeviceCrypto:
        public = self.gateway_key.public_key()
        return crypto.DeviceCrypto(
            device_id,
            {
                k: crypto.device_pair_keys(self.device_keys[k], public, device_id, k, gateway_name)
                for k in key_ids
            },
        )

    def gateway(self, **kwargs: object) -> GatewayCrypto:
        return GatewayCrypto(self.keyring, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def site() -> Site:
    gateway_key = X25519PrivateKey.generate()
    device_keys = {1: X25519PrivateKey.generate(), 2: X25519PrivateKey.generate()}
    keyring = GatewayKeyring(gateway_key)
    for key_id, key in device_keys.items():
        keyring.add(DEVICE, key_id, key.public_key())
    return Site(gateway_key, device_keys, keyring)


def request(
    seq: int | None = None, body: bytes = b"features \x00\x01\x02", device: str = DEVICE
) -> wire.Envelope:
    header = wire.Header(wire.MessageType.INFER_REQUEST, device, 7, next(_seq) if seq is None else seq)
    return wire.Envelope(header, body)


def test_request_and_reply_round_trip(site: Site) -> None:
    device, gateway = site.device(1), site.gateway()
    plain = request()
    sealed = device.seal(plain)
    parsed = wire.envelope_from_bytes(sealed)

    assert parsed.header.flags & wire.FLAG_ENCRYPTED
    assert (
        len(sealed)
        == len(wire.envelope_to_bytes(plain)) + crypto.OVERHEAD
        == len(wire.envelope_to_bytes(plain)) + 30
    )
    assert plain.body not in sealed
    opened, key_id = open_request(gateway, sealed, DEVICE)
    assert key_id == 1 and wire.envelope_from_bytes(opened) == plain  # flag cleared, everything else equal

    reply = wire.envelope_to_bytes(wire.Envelope(plain.header.reply(wire.MessageType.RESULT), b"label 3"))
    sealed_reply = seal_reply(gateway, reply, key_id)
    assert b"label 3" not in sealed_reply
    back = device.open(sealed_reply)
    assert back.body == b"label 3" and back.header.request_id == plain.header.request_id
    assert not back.header.flags & wire.FLAG_ENCRYPTED


def test_wrong_keys_do_not_decrypt(site: Site) -> None:
    sealed = site.device(1).seal(request())
    stranger = GatewayKeyring(X25519PrivateKey.generate())  # another site's gateway key
    stranger.add(DEVICE, 1, site.device_keys[1].public_key())
    with pytest.raises(DecryptError):
        open_request(GatewayCrypto(stranger), sealed)
    # keys for another gateway name derive differently too
    other_name = site.device(1, gateway_name="gateway-eu").seal(request())
    with pytest.raises(DecryptError):
        open_request(site.gateway(), other_name)
    # a device cannot read a reply sealed for another device, and replies are not requests
    gateway = site.gateway()
    opened, _ = open_request(gateway, site.device(1).seal(request()))
    reply = seal_reply(gateway, wire.envelope_to_bytes(wire.envelope_from_bytes(opened)), 1)
    with pytest.raises(DecryptError):
        open_request(site.gateway(), reply)  # gateway->device key differs from device->gateway


def test_tampering_with_header_or_body_is_detected(site: Site) -> None:
    device, gateway = site.device(1), site.gateway()
    sealed = device.seal(request())
    n = len(DEVICE)
    for offset in (
        3,
        5,
        9,
        17,
        34,
        38 + n,
        38 + n + 2,
        len(sealed) - 1,
    ):  # type, version, seq, id, kid, nonce, tag
        flipped = bytearray(sealed)
        flipped[offset] ^= 0x01
        with pytest.raises(WireError):  # a decrypt failure, or a header that no longer parses
            open_request(gateway, bytes(flipped))
    stripped = bytearray(sealed)
    stripped[4] = 0  # pretend it is plaintext
    with pytest.raises(NotEncryptedError):
        open_request(gateway, bytes(stripped))
    assert open_request(gateway, sealed)[1] == 1  # the original still opens


def test_truncated_bodies_are_decrypt_errors(site: Site) -> None:
    envelope = wire.envelope_from_bytes(site.device(1).seal(request(body=b"")))
    assert len(envelope.body) == crypto.OVERHEAD
    for cut in (0, 2, 14, crypto.OVERHEAD - 1):
        short = wire.envelope_to_bytes(wire.Envelope(envelope.header, envelope.body[:cut]))
        with pytest.raises(DecryptError):
            open_request(site.gateway(), short)


def test_key_rotation_by_key_id(site: Site) -> None:
    old, new = site.device(1), site.device(1, 2)
    gateway = site.gateway()
    assert old.key_id == 1 and new.key_id == 2  # the newest generation seals
    for device, key_id in ((old, 1), (new, 2)):
        opened, used = open_request(gateway, device.seal(request()))
        assert used == key_id
        reply = wire.envelope_to_bytes(
            wire.Envelope(wire.envelope_from_bytes(opened).header.reply(wire.MessageType.RESULT), b"ok")
        )
        sealed = seal_reply(gateway, reply, used)
        assert crypto.key_id_of(wire.envelope_from_bytes(sealed)) == key_id
        assert new.open(sealed).body == b"ok"  # the device holds both generations
    with pytest.raises(UnknownKeyError):  # generation 2 is unknown to a device that only has 1
        old.open(seal_reply(gateway, reply, 2))
    retired = GatewayKeyring(site.gateway_key)
    retired.add(DEVICE, 2, site.device_keys[2].public_key())
    with pytest.raises(UnknownKeyError):
        open_request(GatewayCrypto(retired), old.seal(request()))


def test_unknown_device_and_topic_mismatch(site: Site) -> None:
    stranger = crypto.DeviceCrypto(
        "cam-99",
        {1: crypto.device_pair_keys(X25519PrivateKey.generate(), site.gateway_key.public_key(), "cam-99", 1)},
    )
    with pytest.raises(UnknownKeyError):
        open_request(site.gateway(), stranger.seal(request(device="cam-99")))
    with pytest.raises(WireError, match="topic"):
        open_request(site.gateway(), site.device(1).seal(request()), "cam-02")
    with pytest.raises(WireError):
        site.device(1).seal(request(device="cam-02"))  # a device only seals its own requests


def test_plaintext_is_refused_unless_allowed(site: Site) -> None:
    plain = wire.envelope_to_bytes(request())
    with pytest.raises(NotEncryptedError):
        open_request(site.gateway(), plain)
    assert open_request(site.gateway(required=False), plain) == (plain, None)
    error = wire.envelope_to_bytes(
        wire.Envelope(
            request().header.reply(wire.MessageType.ERROR),
            wire.encode_error(wire.ErrorCode.UNAUTHORIZED, "nope"),
        )
    )
    with pytest.raises(NotEncryptedError, match="unverified text: 401 nope"):
        site.device(1).open(error)  # a device never believes a plain reply


def test_replays_and_old_sequence_numbers_are_rejected(site: Site) -> None:
    device, gateway = site.device(1), site.gateway(window=8)
    first = device.seal(request(seq=100))
    open_request(gateway, first)
    with pytest.raises(ReplayError) as replay:
        open_request(gateway, first)
    assert replay.value.reason == "replay"
    open_request(gateway, device.seal(request(seq=105)))
    open_request(gateway, device.seal(request(seq=103)))  # late but inside the window: once
    with pytest.raises(ReplayError):
        open_request(gateway, device.seal(request(seq=103)))
    with pytest.raises(SequenceTooOldError) as old:
        open_request(gateway, device.seal(request(seq=97)))  # 105 - 97 = 8 >= window
    assert old.value.reason == "too_old" and isinstance(old.value, ReplayError)


def test_forgeries_do_not_move_the_window(site: Site) -> None:
    gateway = site.gateway(window=4)
    device = site.device(1)
    open_request(gateway, device.seal(request(seq=10)))
    forged = bytearray(device.seal(request(seq=1_000_000)))
    forged[-1] ^= 0xFF
    with pytest.raises(DecryptError):
        open_request(gateway, bytes(forged))
    open_request(gateway, device.seal(request(seq=11)))  # would be "too old" had the forgery counted


def test_windows_are_per_device(site: Site) -> None:
    other_key = X25519PrivateKey.generate()
    site.keyring.add("cam-02", 1, other_key.public_key())
    other = crypto.DeviceCrypto(
        "cam-02", {1: crypto.device_pair_keys(other_key, site.gateway_key.public_key(), "cam-02", 1)}
    )
    gateway = site.gateway()
    open_request(gateway, site.device(1).seal(request(seq=500)))
    open_request(gateway, other.seal(request(seq=500, device="cam-02")))  # same number, other sender


def test_keys_load_from_files_and_the_keyring_rescans(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    issue_device(pki.root, DEVICE)
    device = load_device_crypto(pki.device_dir(DEVICE), DEVICE)
    gateway = load_gateway_crypto(pki.gateway_x25519_key, pki.device_keys, rescan_interval=0)
    assert gateway.open_request(wire.envelope_from_bytes(device.seal(request())))[1] == 1

    issue_device(pki.root, "cam-02")  # registered while the gateway runs
    newcomer = load_device_crypto(pki.device_dir("cam-02"), "cam-02")
    assert gateway.open_request(wire.envelope_from_bytes(newcomer.seal(request(device="cam-02"))))[1] == 1

    issue_device(pki.root, DEVICE, rotate=True)
    rotated = load_device_crypto(pki.device_dir(DEVICE), DEVICE)
    assert (
        rotated.key_id == 2
        and gateway.open_request(wire.envelope_from_bytes(rotated.seal(request())))[1] == 2
    )
    (pki.device_keys / f"{DEVICE}.k1.pub").unlink()  # retire generation 1
    gateway.keyring.rescan()
    with pytest.raises(UnknownKeyError):
        gateway.open_request(wire.envelope_from_bytes(device.seal(request())))

    with pytest.raises(ConfigError, match="no payload key"):
        load_device_crypto(tmp_path, DEVICE, gateway_public=pki.gateway_x25519_pub)
    with pytest.raises(ConfigError, match="not an X25519"):
        load_x25519_private(pki.ca_key)
    with pytest.raises(ConfigError, match="cannot read"):
        load_x25519_public(tmp_path / "missing.pub")
    with pytest.raises(ConfigError, match="does not exist"):
        load_gateway_crypto(pki.gateway_x25519_key, tmp_path / "nowhere")


# ------------------------------------------------------- lockout, resync and restarts
NOW = 1_700_000_000.0  # the gateway's clock in these tests (seconds)
US = 1_000_000  # devices number in µs of their clock


def refused(gateway: GatewayCrypto, device: crypto.DeviceCrypto, seq: int) -> tuple[ReplayError, int, int]:
    """The window refusal of a request numbered ``seq``, and the resync its sealed answer carries."""
    with pytest.raises(ReplayError) as info:
        open_request(gateway, device.seal(request(seq=seq)), DEVICE)
    answer = info.value.answer
    assert answer is not None and answer.header.flags & wire.FLAG_ENCRYPTED  # sealed: the device believes it
    opened = device.open(wire.envelope_to_bytes(answer))
    assert opened.header.msg_type is wire.MessageType.ERROR and opened.header.seq == seq
    code, message = wire.decode_error(opened.body)
    window = parse_resync(message)
    assert code is wire.ErrorCode.UNAUTHORIZED and window is not None
    return info.value, *window


def test_a_far_ahead_number_is_refused_and_does_not_lock_the_device_out(site: Site) -> None:
    device, gateway = site.device(1), site.gateway(clock=lambda: NOW)
    now = int(NOW * US)
    open_request(gateway, device.seal(request(seq=now)))
    error, next_seq, limit = refused(gateway, device, now + 1000 * US)  # 1,000 s of the device's clock
    assert isinstance(error, SequenceTooFarAheadError) and error.reason == "too_far_ahead"
    assert (next_seq, limit) == (now + 1, now + 60 * US)
    for seq in range(now + 1, now + 100):  # the device's ordinary numbers: never "too old"
        open_request(gateway, device.seal(request(seq=seq)))


def test_a_device_that_never_sent_is_told_the_gateways_clock(site: Site) -> None:
    gateway = site.gateway(clock=lambda: NOW, max_ahead=5.0)
    _, next_seq, limit = refused(gateway, site.device(1), int((NOW + 3600) * US))  # its clock an hour fast
    assert (next_seq, limit) == (int(NOW * US), int((NOW + 5) * US))
    counter = SequenceCounter(int((NOW + 3600) * US))
    assert counter.resync(next_seq, limit)  # down, to where the gateway accepts
    open_request(gateway, site.device(1).seal(request(seq=counter())))


def test_a_window_moved_ahead_within_the_bound_is_recovered_by_resync(site: Site) -> None:
    clock = [NOW]
    device, gateway = site.device(1), site.gateway(clock=lambda: clock[0])
    now = int(NOW * US)
    open_request(gateway, device.seal(request(seq=now + 30 * US)))  # a clock 30 s fast: inside the bound
    counter = SequenceCounter(now)  # the clock back where it belongs
    old = device.seal(request(seq=counter()))
    error, next_seq, limit = refused(gateway, device, now)
    assert isinstance(error, SequenceTooOldError) and next_seq == now + 30 * US + 1
    assert counter.resync(next_seq, limit) and not counter.resync(next_seq, limit)  # moved once
    for _ in range(10):
        open_request(gateway, device.seal(request(seq=counter())))
    with pytest.raises(SequenceTooOldError):  # the refused number stays refused: no replay reopened
        open_request(gateway, old)
    clock[0] += 3600  # an hour later the device's numbers are still accepted, clock or no clock
    open_request(gateway, device.seal(request(seq=counter())))


def test_only_authentic_messages_are_answered_sealed(site: Site) -> None:
    device, gateway = site.device(1), site.gateway(clock=lambda: NOW)
    first = device.seal(request(seq=int(NOW * US)))
    open_request(gateway, first)
    with pytest.raises(ReplayError) as replayed:
        open_request(gateway, first)  # a captured copy: refused, answered to the device (which ignores it)
    assert replayed.value.answer is not None
    assert replayed.value.answer.header.request_id == wire.envelope_from_bytes(first).header.request_id
    forged = bytearray(device.seal(request(seq=int((NOW + 1000) * US))))
    forged[-1] ^= 0xFF
    with pytest.raises(DecryptError) as bad:
        open_request(gateway, bytes(forged))
    assert not isinstance(bad.value, ReplayError)  # no answer to a message that did not authenticate


def test_windows_survive_a_restart_with_the_replay_store(site: Site, tmp_path: Path) -> None:
    path, now = tmp_path / "state" / "replay.db", int(NOW * US)
    device = site.device(1)
    store = ReplayStore(path)
    gateway = site.gateway(clock=lambda: NOW, store=store)
    captured = [device.seal(request(seq=now + i)) for i in range(1000)]
    for message in captured:
        open_request(gateway, message)
    assert store.writes == 1  # reserved ahead: one durable write for a thousand requests
    gateway.close()

    restarted = site.gateway(clock=lambda: NOW + 5, store=ReplayStore(path))
    for message in (captured[0], captured[500], captured[-1]):
        with pytest.raises(SequenceTooOldError):  # not accepted once more after the restart
            open_request(restarted, message)
    counter = SequenceCounter(now + 1000)  # the device goes on where it was: below the mark
    _, next_seq, limit = refused(restarted, device, counter())
    assert next_seq == now + RESERVE + 1  # the mark reserved at the first request, and kept
    assert counter.resync(next_seq, limit)
    open_request(restarted, device.seal(request(seq=counter())))
    restarted.close()
    # windows in memory only (no store): the same captured request is accepted once more
    assert open_request(site.gateway(clock=lambda: NOW + 5), captured[500])[1] == 1


def test_a_replay_store_that_cannot_be_written_refuses_the_request(site: Site, tmp_path: Path) -> None:
    store = ReplayStore(tmp_path / "replay.db")
    gateway = site.gateway(clock=lambda: NOW, store=store)
    store.close()
    with pytest.raises(StorageError):
        open_request(gateway, site.device(1).seal(request(seq=int(NOW * US))))
    with pytest.raises(ConfigError, match="max_ahead"):
        CryptoSettings(max_ahead=0)
    assert CryptoSettings().replay_store is not None  # windows survive a restart by default


# ----------------------------------------------------------------------------- fuzzing
_FUZZ_SITE: dict[str, object] = {}


def _fuzz_site() -> tuple[crypto.DeviceCrypto, GatewayCrypto, bytes, bytes]:
    """One device/gateway pair and a valid sealed request and reply, built once."""
    if not _FUZZ_SITE:
        gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        keyring = GatewayKeyring(gateway_key)
        keyring.add(DEVICE, 1, device_key.public_key())
        device = crypto.DeviceCrypto(
            DEVICE, {1: crypto.device_pair_keys(device_key, gateway_key.public_key(), DEVICE, 1)}
        )
        gateway = GatewayCrypto(keyring, window=64)
        sealed = device.seal(request(seq=2**40))
        reply = wire.envelope_to_bytes(
            wire.Envelope(request().header.reply(wire.MessageType.RESULT), b"result body")
        )
        _FUZZ_SITE.update(device=device, gateway=gateway, request=sealed, reply=seal_reply(gateway, reply, 1))
    return _FUZZ_SITE["device"], _FUZZ_SITE["gateway"], _FUZZ_SITE["request"], _FUZZ_SITE["reply"]  # type: ignore[return-value]


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None, extra: bytes) -> bytes:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] ^= value or 1
    if cut is not None:
        del buf[cut % (len(buf) + 1) :]
    return bytes(buf) + extra


def _only_typed_errors(call: object, data: bytes) -> None:
    with contextlib.suppress(EdgeCascadeError):  # anything else propagates and fails the test
        call(data)  # type: ignore[operator]


_edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)
_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    device, gateway, _, _ = _fuzz_site()
    _only_typed_errors(lambda d: open_request(gateway, d), data)
    _only_typed_errors(device.open, data)


@_fuzz
@given(_edits, st.none() | st.integers(0, 400), st.binary(max_size=8))
def test_fuzz_mutated_envelopes_raise_only_typed_errors(
    edits: list[tuple[int, int]], cut: int | None, extra: bytes
) -> None:
    device, gateway, sealed, reply = _fuzz_site()
    mutated = _mutate(sealed, edits, cut, extra)
    try:
        open_request(gateway, mutated)
    except EdgeCascadeError as exc:
        assert isinstance(exc, WireError)
    else:  # only the unmodified message (a replay after its first success) could open
        assert mutated == sealed
    _only_typed_errors(device.open, _mutate(reply, edits, cut, extra))


def test_fuzz_site_request_is_valid_and_errors_are_crypto_errors() -> None:
    device, gateway, _, reply = _fuzz_site()
    fresh = device.seal(request(seq=2**41))
    assert open_request(gateway, fresh)[1] == 1  # the fuzzed message family really opens
    assert device.open(reply).body == b"result body"
    assert issubclass(DecryptError, CryptoError) and issubclass(CryptoError, WireError)
