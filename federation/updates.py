"""What a site sends back after a round of local training, and how the server checks it.

A site sends the *difference* between the weights it trained and the weights the round
started from (the delta is small and compresses well), optionally as float16 or as int8
with one float32 scale per tensor. The server rebuilds the weights from its own copy of the
round's base model, so every size and shape comes from that base and never from the
payload; anything else is refused with an :class:`UpdateError` whose ``reason`` names the
counter (:data:`REFUSAL_REASONS`).

The round's weights travel down as float16 by default (:func:`downlink_arrays`, half the
bytes of float32); a site trains from them widened back to float32
(:func:`received_weights`), and the server decodes its update onto exactly that, so the
aggregate is what the sites computed.

Each update is signed by its site: a SHA-256 digest over a canonical JSON header (site,
run, round, model version, compression, example count, every array's dtype and shape)
followed by the arrays' bytes, signed with the site's EC P-256 key (:mod:`.site_keys`: the
key its Flower SuperNode authenticates with; re-exported here).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgecascade.device_sdk.errors import UpdateError
from edgecascade.federation.site_keys import load_private_key as load_private_key
from edgecascade.federation.site_keys import load_public_keys as load_public_keys
from edgecascade.federation.site_keys import new_site_key as new_site_key

COMPRESSIONS = ("none", "float16", "int8")
DOWNLINKS = ("float32", "float16")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
REFUSAL_REASONS = ("shape", "malformed", "not_finite", "unknown_site", "signature", "version")
SIGN_CONTEXT = b"edgecascade model update v1\0"  # a site's signature over anything else never passes
_DELTA_DTYPE: dict[str, np.dtype[Any]] = {
    "none": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
}
_SCALE_DTYPE = np.dtype(np.float32)


def _check_compression(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise UpdateError("malformed", f"unknown compression {compression!r}, not one of {COMPRESSIONS}")


def encode_update(
    base: Sequence[np.ndarray], local: Sequence[np.ndarray], compression: str
) -> list[np.ndarray]:
    """The arrays a site sends: ``local - base`` per tensor, compressed as asked.

    ``int8`` quantises each tensor symmetrically (``scale = max|d| / 127``) and appends one
    float32 vector of the scales. Diverged weights (NaN/inf) or deltas too large for float16
    are refused here rather than sent.
    """
    _check_compression(compression)
    if len(base) != len(local):
        raise UpdateError("shape", f"{len(local)} local tensors for {len(base)} in the base model")
    deltas = []
    for i, (b, w) in enumerate(zip(base, local, strict=True)):
        if b.shape != w.shape:
            raise UpdateError("shape", f"tensor {i}: local shape {w.shape}, base {b.shape}")
        d = np.asarray(w, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        if not np.all(np.isfinite(d)):
            raise UpdateError("not_finite", f"tensor {i}: the local weights are not finite")
        deltas.append(d)
    if compression != "int8":
        with np.errstate(over="ignore"):
            out = [d.astype(_DELTA_DTYPE[compression]) for d in deltas]
        for i, d in enumerate(out):
            if not np.all(np.isfinite(d)):
                raise UpdateError("not_finite", f"tensor {i}: a delta is too large for {compression}")
        return out
    scales = np.zeros(len(deltas), dtype=_SCALE_DTYPE)
    quantised = []
    for i, d in enumerate(deltas):
        peak = float(np.max(np.abs(d))) if d.size else 0.0
        scale32 = np.float32(peak / 127.0)
        if float(scale32) * 127.0 < peak:  # rounded down: |d| / scale would pass 127 and clip
            scale32 = np.nextafter(scale32, np.float32(np.inf))
        if not np.isfinite(scale32):
            raise UpdateError("not_finite", f"tensor {i}: a delta is too large for an int8 scale")
        scales[i] = scale32
        scale = float(scale32)  # quantise with the float32 scale the server will multiply by
        q = np.zeros(d.shape) if scale == 0.0 else np.rint(d / scale)
        quantised.append(np.asarray(np.clip(q, -127, 127), dtype=np.int8))  # 0-d stays an array
    return [*quantised, scales]


def decode_update(
    base: Sequence[np.ndarray], encoded: Sequence[np.ndarray], compression: str
) -> list[np.ndarray]:
    """The weights an update stands for: ``base + delta``, checked against ``base`` first.

    The result keeps each base tensor's dtype when it is a float, else it is float32.
    Raises :class:`UpdateError`: ``shape`` (tensor count or a shape differs from the base),
    ``malformed`` (not arrays, a dtype other than the compression's, int8 -128), ``not_finite``
    (NaN/inf in a delta, a scale or the result; a negative scale).
    """
    _check_compression(compression)
    arrays = list(encoded)
    if not all(isinstance(a, np.ndarray) for a in arrays):
        raise UpdateError("malformed", "an update holds something other than arrays")
    expected = len(base) + (1 if compression == "int8" else 0)
    if len(arrays) != expected:
        raise UpdateError(
            "shape", f"{len(arrays)} arrays, a {compression} update of this model has {expected}"
        )
    deltas, scales = arrays[: len(base)], None
    if compression == "int8":
        scales = arrays[-1]
        if scales.dtype != _SCALE_DTYPE:
            raise UpdateError("malformed", f"int8 scales are {scales.dtype}, not float32")
        if scales.shape != (len(base),):
            raise UpdateError("shape", f"int8 scales have shape {scales.shape}, not ({len(base)},)")
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise UpdateError("not_finite", "an int8 scale is not a finite, non-negative number")
    want = _DELTA_DTYPE[compression]
    out = []
    for i, (b, d) in enumerate(zip(base, deltas, strict=True)):
        if d.dtype != want:
            raise UpdateError("malformed", f"tensor {i} is {d.dtype}, a {compression} update sends {want}")
        if d.shape != b.shape:
            raise UpdateError("shape", f"tensor {i} has shape {d.shape}, the base model {b.shape}")
        if scales is not None and np.any(d == -128):
            raise UpdateError("malformed", f"tensor {i} holds -128, outside symmetric int8")
        if scales is None and not np.all(np.isfinite(d)):
            raise UpdateError("not_finite", f"tensor {i}: a delta is not finite")
        dtype = b.dtype if np.issubdtype(b.dtype, np.floating) else np.dtype(np.float32)
        work = np.promote_types(dtype, np.float32)  # float16 weights add in float32, float64 in float64
        with np.errstate(over="ignore", invalid="ignore"):
            delta = d.astype(work) if scales is None else d.astype(work) * scales[i].astype(work)
            weights = np.asarray(b.astype(work) + delta, dtype=dtype)  # 0-d stays an array
        if not np.all(np.isfinite(weights)):
            raise UpdateError("not_finite", f"tensor {i}: base + delta is not finite")
        out.append(weights)
    return out


def downlink_arrays(weights: Sequence[np.ndarray], downlink: str) -> list[np.ndarray]:
    """The weights as a round sends them: with ``float16`` each float32 tensor whose values fit
    float16 is sent as float16; any other tensor, and everything with ``float32``, as it is."""
    if downlink not in DOWNLINKS:
        raise ValueError(f"unknown downlink {downlink!r}, not one of {DOWNLINKS}")
    if downlink == "float32":
        return [np.asarray(w) for w in weights]
    return [
        w.astype(np.float16)
        if w.dtype == np.float32 and (not w.size or float(np.max(np.abs(w))) <= _FLOAT16_MAX)
        else w
        for w in (np.asarray(w) for w in weights)
    ]


def received_weights(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What a site trains from and the server decodes its update onto: float16 tensors as float32."""
    return [a.astype(np.float32) if a.dtype == np.float16 else np.asarray(a) for a in arrays]


def payload_bytes(arrays: Sequence[np.ndarray]) -> int:
    """How many bytes of tensor data an update carries (the sum of ``nbytes``)."""
    return sum(int(a.nbytes) for a in arrays)


def weights_digest(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 (hex) of whole weights, dtypes and shapes included: which model a site was sent."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def update_digest(
    *,
    site: str,
    run: int,
    server_round: int,
    model_version: int,
    compression: str,
    num_examples: int,
    arrays: Sequence[np.ndarray],
) -> bytes:
    """SHA-256 over what a site signs: a canonical header, then each array's bytes in C order.

    The header (JSON, sorted keys, its length first) binds the update to its site, run, round
    and model version, and names every array's dtype and shape, so the bytes that follow can
    only be read one way.
    """
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.dtype.hasobject:
            raise UpdateError("malformed", f"array {i} is not a numeric array")
    header = {
        "site": site,
        "run": int(run),
        "server_round": int(server_round),
        "model_version": int(model_version),
        "compression": compression,
        "num_examples": int(num_examples),
        "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays],
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h = hashlib.sha256(len(head).to_bytes(8, "big") + head)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes(order="C"))
    return h.digest()


def sign_update(key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """The site's ECDSA (SHA-256, DER) signature of an update digest."""
    return key.sign(SIGN_CONTEXT + digest, ec.ECDSA(hashes.SHA256()))


def verify_update(
    keys: Mapping[str, ec.EllipticCurvePublicKey], site: str, digest: bytes, signature: bytes
) -> None:
    """Check that ``site`` signed ``digest``; ``unknown_site`` or ``signature`` otherwise."""
    key = keys.get(site)
    if key is None:
        raise UpdateError("unknown_site", f"no key is registered for site {site!r}")
    try:
        key.verify(bytes(signature), SIGN_CONTEXT + bytes(digest), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        raise UpdateError("signature", f"the update's signature is not by site {site!r}") from None


def check_version(expected: int, got: int) -> None:
    """Refuse an update trained from another model version than the round's (``version``)."""
    if got != expected:
        raise UpdateError("version", f"an update for model v{got}, the round trains v{expected}")
