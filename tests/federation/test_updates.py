"""Site updates: compression round trips, every refusal, signatures and site key files."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgecascade.device_sdk.errors import ConfigError, UpdateError, WireError
from edgecascade.federation import updates
from edgecascade.federation.updates import (
    COMPRESSIONS,
    REFUSAL_REASONS,
    check_version,
    decode_update,
    downlink_arrays,
    encode_update,
    load_private_key,
    load_public_keys,
    new_site_key,
    payload_bytes,
    received_weights,
    sign_update,
    update_digest,
    verify_update,
)


def model(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A base model and a locally trained one: a kernel, a bias, an empty and an untouched tensor."""
    rng = np.random.default_rng(seed)
    base = [
        rng.normal(size=(6, 4)).astype(np.float32),
        rng.normal(size=(4,)).astype(np.float32),
        np.zeros((0, 3), np.float32),
        np.full((2, 2), 0.5, np.float32),
    ]
    local = [b + rng.normal(scale=0.05, size=b.shape).astype(np.float32) for b in base[:3]] + [base[3].copy()]
    return base, local


def refused(reason: str) -> pytest.RaisesExc[UpdateError]:
    assert reason in REFUSAL_REASONS
    return pytest.raises(UpdateError, check=lambda e: e.reason == reason)


def test_update_error_is_a_wire_error_with_a_reason() -> None:
    with refused("version") as info:
        check_version(3, 2)
    assert isinstance(info.value, WireError)
    assert str(info.value) == "an update for model v2, the round trains v3"
    check_version(3, 3)


def test_uncompressed_round_trip_sends_float32_deltas() -> None:
    base, local = model()
    encoded = encode_update(base, local, "none")
    assert [a.dtype for a in encoded] == [np.float32] * 4
    assert not np.any(encoded[3]), "an untouched tensor sends a zero delta"
    assert payload_bytes(encoded) == sum(b.nbytes for b in base)
    for got, want in zip(decode_update(base, encoded, "none"), local, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_float16_round_trip_is_close_and_half_the_bytes() -> None:
    base, local = model()
    encoded = encode_update(base, local, "float16")
    assert [a.dtype for a in encoded] == [np.float16] * 4
    assert payload_bytes(encoded) * 2 == sum(b.nbytes for b in base)
    for got, want, b in zip(decode_update(base, encoded, "float16"), local, base, strict=True):
        # float16 keeps 11 significant bits of the delta, not of the weight
        np.testing.assert_allclose(
            got, want, rtol=0, atol=float(np.max(np.abs(want - b), initial=0)) / 1024 + 1e-6
        )


def test_int8_sends_one_scale_per_tensor_zero_for_empty_or_untouched() -> None:
    base, local = model()
    encoded = encode_update(base, local, "int8")
    assert [a.dtype for a in encoded] == [np.int8] * 4 + [np.float32]
    scales = encoded[-1]
    assert scales.shape == (4,)
    assert scales[2] == 0 and scales[3] == 0
    assert np.max(np.abs(encoded[0])) == 127, "the largest delta uses the full range"
    assert payload_bytes(encoded) == sum(b.size for b in base) + 4 * 4


finite32 = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)


@settings(max_examples=60, deadline=None)
@given(
    base=hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5), elements=finite32
    ),
    data=st.data(),
)
def test_int8_error_is_at_most_half_a_step(base: np.ndarray, data: st.DataObject) -> None:
    local = data.draw(hnp.arrays(np.float32, base.shape, elements=finite32))
    encoded = encode_update([base], [local], "int8")
    scale = float(encoded[-1][0])
    got = decode_update([base], encoded, "int8")[0]
    assert got.dtype == np.float32 and got.shape == base.shape
    delta = local.astype(np.float64) - base.astype(np.float64)
    sent = got.astype(np.float64) - base.astype(np.float64)
    # half a quantisation step, plus the float32 rounding of base + delta
    bound = scale / 2 * (1 + 1e-6) + np.spacing(np.abs(got)).astype(np.float64)
    assert np.all(np.abs(sent - delta) <= bound)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_decoding_keeps_a_float_base_dtype_and_makes_others_float32(compression: str) -> None:
    base: list[np.ndarray] = [
        np.linspace(0, 1, 6).reshape(2, 3),
        np.arange(4, dtype=np.int64),
        np.ones(3, np.float16),
    ]
    local = [base[0] + 0.25, base[1] + 1, base[2] * 2]
    got = decode_update(base, encode_update(base, local, compression), compression)
    assert [a.dtype for a in got] == [np.float64, np.float32, np.float16]
    for g, w in zip(got, local, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_site_refuses_to_send_diverged_weights(compression: str) -> None:
    base, local = model()
    local[1][0] = np.nan
    with refused("not_finite"):
        encode_update(base, local, compression)


def test_a_delta_too_large_for_float16_is_refused_not_sent_as_inf() -> None:
    with refused("not_finite"):
        encode_update([np.zeros(2, np.float32)], [np.array([1e5, 0], np.float32)], "float16")


def test_unknown_compression_is_malformed() -> None:
    base, local = model()
    with refused("malformed"):
        encode_update(base, local, "zip")
    with refused("malformed"):
        decode_update(base, encode_update(base, local, "none"), "zip")


def _corrupt(compression: str, how: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A good update of ``model()`` with one thing wrong with it."""
    base, local = model()
    arrays = encode_update(base, local, compression)
    if how == "one_missing":
        arrays.pop(0)
    elif how == "one_extra":
        arrays.append(arrays[0].copy())
    elif how == "transposed":
        arrays[0] = np.ascontiguousarray(arrays[0].T)
    elif how == "flattened":
        arrays[1] = arrays[1].reshape(1, -1)
    elif how == "float64":
        arrays[1] = arrays[1].astype(np.float64)
    elif how == "not_an_array":
        arrays[1] = arrays[1].tolist()
    elif how == "nan":
        arrays[1] = arrays[1].copy()
        arrays[1][0] = np.nan
    elif how == "inf":
        arrays[0] = arrays[0].copy()
        arrays[0][0, 0] = np.inf
    return base, arrays


@pytest.mark.parametrize(
    ("compression", "how", "reason"),
    [
        *[(c, "one_missing", "shape") for c in COMPRESSIONS],
        *[(c, "one_extra", "shape") for c in COMPRESSIONS],
        *[(c, "transposed", "shape") for c in COMPRESSIONS],
        *[(c, "flattened", "shape") for c in COMPRESSIONS],
        *[(c, "float64", "malformed") for c in COMPRESSIONS],
        *[(c, "not_an_array", "malformed") for c in COMPRESSIONS],
        ("none", "nan", "not_finite"),
        ("float16", "nan", "not_finite"),
        ("none", "inf", "not_finite"),
        ("float16", "inf", "not_finite"),
    ],
)
def test_a_bad_update_is_refused_with_its_counter(compression: str, how: str, reason: str) -> None:
    base, arrays = _corrupt(compression, how)
    with refused(reason):
        decode_update(base, arrays, compression)


def test_an_uncompressed_update_sent_as_float16_is_malformed() -> None:
    base, local = model()
    with refused("malformed"):
        decode_update(base, encode_update(base, local, "float16"), "none")
    with refused("shape"):  # int8 carries one more array: the scales
        decode_update(base, encode_update(base, local, "int8"), "none")


@pytest.mark.parametrize(
    ("bad_scales", "reason"),
    [
        (lambda s: np.where(np.arange(s.size) == 0, np.inf, s).astype(np.float32), "not_finite"),
        (lambda s: np.where(np.arange(s.size) == 0, np.nan, s).astype(np.float32), "not_finite"),
        (lambda s: np.where(np.arange(s.size) == 0, -s[0], s).astype(np.float32), "not_finite"),
        (lambda s: s.astype(np.float64), "malformed"),
        (lambda s: s[:-1], "shape"),
        (lambda s: s.reshape(1, -1), "shape"),
    ],
    ids=["inf", "nan", "negative", "float64", "short", "2d"],
)
def test_bad_int8_scales_are_refused(bad_scales: Callable[[np.ndarray], np.ndarray], reason: str) -> None:
    base, local = model()
    arrays = encode_update(base, local, "int8")
    arrays[-1] = bad_scales(arrays[-1])
    with refused(reason):
        decode_update(base, arrays, "int8")


def test_int8_minus_128_is_outside_symmetric_quantisation() -> None:
    base, local = model()
    arrays = encode_update(base, local, "int8")
    arrays[0] = arrays[0].copy()
    arrays[0][0, 0] = -128
    with refused("malformed"):
        decode_update(base, arrays, "int8")


def test_a_delta_that_overflows_the_weights_is_not_finite() -> None:
    base = [np.full(2, 3e38, np.float32)]
    with refused("not_finite"):
        decode_update(base, [np.full(2, 3e38, np.float32)], "none")


# --- digests and signatures -------------------------------------------------------------


def digest_of(arrays: list[np.ndarray], **changes: object) -> bytes:
    fields: dict = dict(
        site="lab-a", run=7, server_round=2, model_version=5, compression="int8", num_examples=120
    )
    fields.update(changes)
    return update_digest(arrays=arrays, **fields)


@pytest.fixture(scope="module")
def site_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site-keys")
    for site in ("lab-a", "lab-b"):
        new_site_key(folder, site)
    return folder


def test_a_signed_update_verifies_and_any_change_breaks_it(site_keys: Path) -> None:
    base, local = model()
    arrays = encode_update(base, local, "int8")
    digest = digest_of(arrays)
    signature = sign_update(load_private_key(site_keys / "lab-a.key"), digest)
    keys = load_public_keys(site_keys)
    verify_update(keys, "lab-a", digest, signature)

    tampered = [a.copy() for a in arrays]
    tampered[0].view(np.uint8)[3] ^= 1  # one bit of one weight, after signing
    with refused("signature"):
        verify_update(keys, "lab-a", digest_of(tampered), signature)
    for change in ({"server_round": 3}, {"model_version": 4}, {"num_examples": 12000}, {"site": "lab-b"}):
        with refused("signature"):
            verify_update(keys, "lab-a", digest_of(arrays, **change), signature)
    with refused("signature"):
        verify_update(keys, "lab-a", digest, signature[:-1] + bytes([signature[-1] ^ 1]))
    with refused("signature"):
        verify_update(keys, "lab-a", digest, b"not a DER signature")


def test_another_sites_key_does_not_pass_and_an_unknown_site_is_refused(site_keys: Path) -> None:
    arrays = encode_update(*model(), "none")
    digest = digest_of(arrays)
    by_b = sign_update(load_private_key(site_keys / "lab-b.key"), digest)
    keys = load_public_keys(site_keys)
    with refused("signature"):
        verify_update(keys, "lab-a", digest, by_b)  # lab-b claiming to be lab-a
    with refused("unknown_site"):
        verify_update(keys, "lab-c", digest, by_b)


def test_the_digest_binds_dtype_and_shape_not_only_the_bytes() -> None:
    a = np.arange(6, dtype=np.float32)
    assert digest_of([a]) == digest_of([a.copy()])
    assert digest_of([a]) != digest_of([a.reshape(2, 3)])
    assert digest_of([a]) != digest_of([a.view(np.int32)])
    assert digest_of([a[:3], a[3:]]) != digest_of([a])
    assert digest_of([np.asfortranarray(a.reshape(2, 3))]) == digest_of([a.reshape(2, 3)])
    with refused("malformed"):
        digest_of([np.array([object()])])


def test_a_signature_is_only_for_updates() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = digest_of([np.zeros(2, np.float32)])
    plain = key.sign(digest, ec.ECDSA(updates.hashes.SHA256()))  # the same key signing raw bytes
    with refused("signature"):
        verify_update({"lab-a": key.public_key()}, "lab-a", digest, plain)


# --- site key files ---------------------------------------------------------------------


def test_site_key_files_are_openssh_p256_and_private_is_owner_only(tmp_path: Path) -> None:
    key_path, pub_path = new_site_key(tmp_path / "keys", "lab-a")
    assert (key_path.name, pub_path.name) == ("lab-a.key", "lab-a.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub_path.read_text().startswith("ecdsa-sha2-nistp256 ")
    private = load_private_key(key_path)
    public = load_public_keys(tmp_path / "keys")["lab-a"]
    assert public.public_numbers() == private.public_key().public_numbers()
    with pytest.raises(ConfigError, match="refusing to replace"):
        new_site_key(tmp_path / "keys", "lab-a")
    with pytest.raises(ConfigError, match="site name"):
        new_site_key(tmp_path / "keys", "../lab-b")


def test_flower_reads_the_site_key_files(tmp_path: Path) -> None:
    register = pytest.importorskip("flwr.cli.supernode.register")
    key_path, pub_path = new_site_key(tmp_path, "lab-a")
    assert register.try_load_public_key(pub_path)  # what `flwr supernode register` reads
    key = serialization.load_ssh_private_key(key_path.read_bytes(), None)  # what the SuperNode reads
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def _openssh_public(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (_openssh_public(Ed25519PrivateKey.generate()), "not an EC P-256 key"),
        (_openssh_public(ec.generate_private_key(ec.SECP384R1())), "not an EC P-256 key"),
        (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            "not an OpenSSH public key",
        ),
        (b"", "not an OpenSSH public key"),
    ],
    ids=["ed25519", "p384", "pem", "empty"],
)
def test_a_public_key_file_that_is_not_openssh_p256_is_refused_by_name(
    tmp_path: Path, content: bytes, says: str
) -> None:
    new_site_key(tmp_path, "lab-a")
    (tmp_path / "lab-x.pub").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_public_keys(tmp_path)
    assert info.value.problems == [f"{tmp_path / 'lab-x.pub'} is {says}"]


def test_every_bad_public_key_file_is_listed_at_once(tmp_path: Path) -> None:
    (tmp_path / "one.pub").write_text("junk")
    (tmp_path / "bad name.pub").write_bytes(_openssh_public(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ConfigError) as info:
        load_public_keys(tmp_path)
    assert len(info.value.problems) == 2
    assert any("one.pub" in p for p in info.value.problems)
    assert any("'bad name' is not a site name" in p for p in info.value.problems)
    with pytest.raises(ConfigError, match="does not exist"):
        load_public_keys(tmp_path / "missing")


def test_a_private_key_that_is_not_openssh_p256_is_refused(tmp_path: Path) -> None:
    ed = tmp_path / "ed.key"
    ed.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match=r"ed\.key is not an EC P-256 key"):
        load_private_key(ed)
    pem = tmp_path / "pem.key"  # the right key in the PKCS#8 PEM format Flower does not read
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match=r"pem\.key is not an unencrypted OpenSSH private key"):
        load_private_key(pem)
    with pytest.raises(ConfigError, match="cannot read site key"):
        load_private_key(tmp_path / "missing.key")


def test_the_float16_downlink_halves_float32_tensors_and_leaves_the_rest_alone() -> None:
    weights = [
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        np.array([1e6, 1.0], np.float32),  # does not fit float16: sent as it is
        np.arange(3, dtype=np.int64),
        np.zeros((0,), np.float32),
    ]
    sent = downlink_arrays(weights, "float16")
    assert [a.dtype for a in sent] == [np.float16, np.float32, np.int64, np.float16]
    assert payload_bytes(sent) == payload_bytes(weights) - 12 * 2
    back = received_weights(sent)
    assert [a.dtype for a in back] == [np.float32, np.float32, np.int64, np.float32]
    np.testing.assert_allclose(back[0], weights[0], atol=1e-3)
    np.testing.assert_array_equal(back[1], weights[1])
    assert all(
        a is w or (a == w).all() for a, w in zip(downlink_arrays(weights, "float32"), weights, strict=True)
    )
    with pytest.raises(ValueError, match="downlink"):
        downlink_arrays(weights, "int4")
