"""ExactIndex: exact answers across block and chunk boundaries, for any k and batch."""

from __future__ import annotations

import numpy as np
import pytest

from edgecascade.device_sdk.cache import ExactIndex

from .cache_kit import units


@pytest.mark.parametrize(
    ("dim", "n", "k", "queries"),
    [
        (32, 1000, 3, 1),
        (32, 1000, 3, 70),
        (7, 3000, 12, 1),
        (7, 3000, 12, 40),
        (128, 333, 1, 5),
        (32, 5, 5, 3),
        (600, 50, 2, 2),
    ],
)
def test_search_is_exact_for_any_size_k_and_batch(dim: int, n: int, k: int, queries: int) -> None:
    x = units(n, dim)
    index = ExactIndex(dim, n + 10)
    index.add(x, np.arange(n))
    q = units(queries, dim, seed=1)
    scores = q @ x.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ids, dists = index.search(q, k)
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(dists, 1 - np.take_along_axis(scores, expected, axis=1), atol=1e-5)


def test_an_exact_index_has_no_graph_to_save() -> None:
    index = ExactIndex(4, 3)
    index.add(units(2, 4), np.arange(2))
    assert index.graph() is None


def test_a_single_query_and_the_same_query_in_a_batch_agree() -> None:
    x = units(500, 32)
    index = ExactIndex(32, 500)
    index.add(x, np.arange(500))
    q = units(3, 32, seed=2)
    batch_ids, batch_d = index.search(q, 4)
    for i in range(3):
        ids, d = index.search(q[i : i + 1], 4)
        assert ids.tolist() == batch_ids[i : i + 1].tolist()
        np.testing.assert_allclose(d, batch_d[i : i + 1], atol=1e-6)
