"""``edgecascade bench crypto``: what end-to-end encryption adds to one message.

For request bodies of a few sizes (1-bit, int8 and float32 cut features), one run measures
bytes on the wire and the time from envelope to parsed envelope on the other side: plain is
serialise + parse; sealed is seal on the device, then open on the gateway (window check
included) and the parse the gateway does next, with the real keys of a throw-away
device/gateway pair. Also a reply (10-class result), sealed by the gateway and
opened by the device. Times are means over ``n`` messages, in microseconds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import DeviceCrypto, device_pair_keys
from edgecascade.edge_gateway.crypto import GatewayCrypto, GatewayKeyring

DEVICE = "bench-device"

#: name -> (encoding, shape) of the feature tensors timed: both cuts of the default model, and float32
PAYLOADS: dict[str, tuple[str, tuple[int, ...]]] = {
    "1bit_7x7x32": ("1bit", (7, 7, 32)),  # cut 1 of the default model
    "int8_7x7x64": ("int8", (7, 7, 64)),  # cut 2 of the default model
    "float32_7x7x16": ("float32", (7, 7, 16)),
}


def _pair() -> tuple[DeviceCrypto, GatewayCrypto]:
    """A throw-away device and gateway that share keys under key id 1."""
    gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    keyring = GatewayKeyring(gateway_key)
    keyring.add(DEVICE, 1, device_key.public_key())
    keys = device_pair_keys(device_key, gateway_key.public_key(), DEVICE, 1)
    return DeviceCrypto(DEVICE, {1: keys}), GatewayCrypto(keyring)


def _mean_us(items: list[Any], step: Callable[[Any], object]) -> float:
    started = time.perf_counter()
    for item in items:
        step(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def bench_crypto(n: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Per message: plain and sealed sizes and envelope-to-parsed-envelope times."""
    rng = np.random.default_rng(seed)
    device, gateway = _pair()
    seq = itertools.count(1)

    def envelopes(body: bytes, count: int) -> list[wire.Envelope]:
        return [
            wire.Envelope(wire.Header(wire.MessageType.INFER_REQUEST, DEVICE, 1, next(seq)), body)
            for _ in range(count)
        ]

    def plain(envelope: wire.Envelope) -> wire.Envelope:
        return wire.envelope_from_bytes(wire.envelope_to_bytes(envelope))

    def sealed(envelope: wire.Envelope) -> wire.Envelope:
        return gateway.open_request(wire.envelope_from_bytes(device.seal(envelope)))[0]

    _mean_us(envelopes(b"", 500), sealed)  # the first calls pay for set-up, not per message
    report: dict[str, Any] = {"n": n, "cipher": "AES-256-GCM, keys from X25519 + HKDF-SHA256"}
    report["requests"] = {}
    for name, (encoding, shape) in PAYLOADS.items():
        body = codec.encode_features(rng.normal(size=shape).astype(np.float32), encoding)
        (probe,) = envelopes(body, 1)
        report["requests"][name] = _row(
            len(body),
            len(wire.envelope_to_bytes(probe)),
            len(device.seal(probe)),
            _mean_us(envelopes(body, n), plain),
            _mean_us(envelopes(body, n), sealed),
        )

    result = wire.Result(3, rng.dirichlet(np.ones(10)).astype(np.float32), wire.Tier.GATEWAY)
    request = wire.Header(wire.MessageType.INFER_REQUEST, DEVICE, 1, next(seq))
    reply_envelope = wire.Envelope(request.reply(wire.MessageType.RESULT), wire.encode_result(result))
    reply = wire.envelope_to_bytes(reply_envelope)
    report["reply_result_10_classes"] = _row(
        len(reply_envelope.body),
        len(reply),
        len(gateway.seal_reply(reply_envelope, 1)),
        _mean_us([reply] * n, wire.envelope_from_bytes),
        _mean_us([reply_envelope] * n, lambda envelope: device.open(gateway.seal_reply(envelope, 1))),
    )
    return report


def _row(body: int, plain: int, sealed: int, plain_us: float, sealed_us: float) -> dict[str, Any]:
    return {
        "body_bytes": body,
        "plain_bytes": plain,
        "sealed_bytes": sealed,
        "added_bytes": sealed - plain,
        "plain_us": round(plain_us, 2),
        "sealed_us": round(sealed_us, 2),
        "added_us": round(sealed_us - plain_us, 2),
    }


def format_crypto_report(report: dict[str, Any]) -> str:
    """A short table of :func:`bench_crypto`'s result."""
    rows = [*report["requests"].items(), ("reply (result)", report["reply_result_10_classes"])]
    lines = [
        f"{'message':<18}{'plain B':>9}{'sealed B':>10}{'+B':>5}{'plain µs':>10}{'sealed µs':>11}{'+µs':>8}"
    ]
    for name, r in rows:
        lines.append(
            f"{name:<18}{r['plain_bytes']:>9}{r['sealed_bytes']:>10}{r['added_bytes']:>5}"
            f"{r['plain_us']:>10.1f}{r['sealed_us']:>11.1f}{r['added_us']:>8.1f}"
        )
    lines.append(f"(mean of {report['n']} each; plain = serialise + parse, sealed = seal + open + parse)")
    return "\n".join(lines)
