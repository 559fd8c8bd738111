"""Cache keys (the Embedder: pooled and projected, its file, fitting the projection) and the hit rule."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgecascade.device_sdk.cache.similarity import Embedder, hit_rule
from edgecascade.device_sdk.errors import TensorSpecError
from edgecascade.training.cache_embedding import fit_embedder


@pytest.mark.parametrize(("shape", "dim"), [((7, 7, 8), 128), ((4, 4, 16), 64)])
def test_pooled_keys_are_compact_and_normalised(shape: tuple[int, int, int], dim: int) -> None:
    f = np.random.default_rng(0).random((5, *shape), dtype=np.float32)
    e = Embedder.pooled(shape)(f)
    assert e.shape == (5, dim) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)


def test_pooled_is_the_mean_over_real_cells() -> None:
    f = np.zeros((1, 3, 3, 1), np.float32)
    f[0, 2, 2, 0] = 4.0  # alone in the last (1x1) cell of a 2x2 grid
    f[0, 0, 0, 0] = 4.0  # one of four cells of the first
    z = Embedder.pooled((3, 3, 1)).projection.T @ f.reshape(-1)
    np.testing.assert_allclose(z, [1.0, 0.0, 0.0, 4.0])


def test_zero_features_give_zero_keys_not_nan() -> None:
    e = Embedder.pooled((7, 7, 8))(np.zeros((2, 7, 7, 8), np.float32))
    assert not np.isnan(e).any() and not e.any()


def test_wrong_shapes_are_refused() -> None:
    embedder = Embedder.pooled((7, 7, 8))
    with pytest.raises(TensorSpecError):
        embedder(np.zeros((7, 7, 8), np.float32))
    with pytest.raises(TensorSpecError):
        embedder(np.zeros((1, 4, 4, 8), np.float32))
    with pytest.raises(TensorSpecError):
        Embedder(np.zeros(10, np.float32), np.zeros((12, 3), np.float32), (7, 7, 8))
    with pytest.raises(TensorSpecError):
        Embedder(np.full(392, np.nan, np.float32), np.zeros((392, 3), np.float32), (7, 7, 8))


def test_file_round_trip_and_bad_files() -> None:
    rng = np.random.default_rng(1)
    embedder = Embedder(rng.random(24, dtype=np.float32), rng.random((24, 5), dtype=np.float32), (2, 3, 4))
    again = Embedder.from_bytes(embedder.to_bytes())
    f = rng.random((3, 2, 3, 4), dtype=np.float32)
    np.testing.assert_array_equal(again(f), embedder(f))
    assert again.feature_shape == (2, 3, 4) and again.dim == 5
    for bad in (b"", b"not a zip", embedder.to_bytes()[:-40]):
        with pytest.raises(ValueError):
            Embedder.from_bytes(bad)
    pickled = io.BytesIO()
    np.savez(
        pickled, format=np.array(1), feature_shape=np.array([2, 3, 4]), mean=np.array([{}], dtype=object)
    )
    with pytest.raises(ValueError):  # object arrays would need unpickling: refused
        Embedder.from_bytes(pickled.getvalue())
    wrong_dtype = io.BytesIO()
    np.savez(
        wrong_dtype,
        format=np.array(1),
        feature_shape=np.array([2, 3, 4]),
        mean=np.zeros(24),
        projection=np.zeros((24, 5)),
    )
    with pytest.raises(ValueError):
        Embedder.from_bytes(wrong_dtype.getvalue())


def _shifted_maps(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Binary feature maps and one-cell-shifted copies: near-duplicates far apart bit for bit."""
    base = rng.random((n, 9, 8, 4)) > 0.5
    smooth = (base[:, :-1] | base[:, 1:]).astype(np.float32) * 2 - 1  # (n, 8, 8, 4)
    return smooth[:, :7, :7], smooth[:, 1:, :7]


def test_fitted_projection_brings_near_duplicates_closer_than_pooling() -> None:
    rng = np.random.default_rng(2)
    a, b = _shifted_maps(3000, rng)
    embedder = fit_embedder(a, b, dim=16)
    assert embedder.dim == 16 and embedder.feature_shape == (7, 7, 4)
    qa, qb = _shifted_maps(300, np.random.default_rng(9))

    def separation(e: Embedder) -> float:
        ka, kb = e(qa), e(qb)
        pair = 1 - (ka * kb).sum(1)
        other = 1 - (ka * np.roll(kb, 1, axis=0)).sum(1)
        return float(np.median(other) / np.median(pair))

    assert separation(embedder) > 2 * separation(Embedder.pooled((7, 7, 4)))


def test_fit_refuses_mismatched_inputs() -> None:
    a = np.zeros((10, 2, 2, 1), np.float32)
    with pytest.raises(ValueError):
        fit_embedder(a, a[:5])
    with pytest.raises(ValueError):
        fit_embedder(a, a, dim=5)


# ------------------------------------------------------------------------------ hit rule
def test_hit_rule_miss_when_nearest_is_too_far() -> None:
    assert hit_rule(np.array([0.05, 0.06, 0.07]), np.array([1, 1, 1]), tau=0.02, min_votes=2) is None


def test_hit_rule_miss_when_close_neighbours_disagree() -> None:
    assert hit_rule(np.array([0.001, 0.005, 0.01]), np.array([1, 2, 2]), tau=0.02, min_votes=2) is None


def test_hit_rule_hit_when_close_neighbours_agree() -> None:
    assert hit_rule(np.array([0.001, 0.005, 0.01]), np.array([3, 3, 2]), tau=0.02, min_votes=2) == 3


def test_hit_rule_neighbours_beyond_tau_do_not_vote() -> None:
    # far neighbours with another label do not count against the close one
    assert hit_rule(np.array([0.001, 0.5, 0.6]), np.array([3, 1, 1]), tau=0.02, min_votes=2) == 3
    # one close vote for 3, one close vote for 1: not enough votes and not unanimous
    assert hit_rule(np.array([0.001, 0.01, 0.6]), np.array([3, 1, 3]), tau=0.02, min_votes=2) is None


def test_hit_rule_needs_enough_neighbours_and_no_stronger_rival() -> None:
    assert hit_rule(np.array([0.001]), np.array([3]), tau=0.02, min_votes=2) == 3  # lone and unopposed
    # nearest's label has 2 votes but another label has 3 within tau
    d = np.array([0.001, 0.002, 0.003, 0.004, 0.005])
    assert hit_rule(d, np.array([1, 2, 2, 2, 1]), tau=0.02, min_votes=2) is None
    assert hit_rule(d, np.array([1, 2, 1, 2, 1]), tau=0.02, min_votes=2) == 1


def test_hit_rule_handles_empty_and_nan() -> None:
    assert hit_rule(np.array([]), np.array([]), tau=0.02, min_votes=1) is None
    assert hit_rule(np.array([np.nan, 0.0]), np.array([1, 1]), tau=0.02, min_votes=1) is None
