"""The federated benchmark's data: the label-skewed partition, the shifted sites, per-site test sets.

Small synthetic splits (8x8 images, 10 classes) stand in for Fashion-MNIST: the properties
under test are about indices and label mixes, not about what the images show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecascade.federation.site_data import load_site_data
from edgecascade.tools.bench_drift import shift
from edgecascade.tools.bench_federated_data import (
    Workload,
    dirichlet_split,
    federated_workload,
    label_counts,
    label_skew_table,
    write_sites,
)

CLASSES = tuple(str(c) for c in range(10))


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, (n, 8, 8), dtype=np.uint8), np.arange(n) % 10


@pytest.fixture(scope="module")
def splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (*_split(3000, 1), *_split(1000, 2))


def _workload(splits: tuple[np.ndarray, ...], **kwargs: object) -> Workload:
    options: dict[str, object] = {"test_per_site": 100, "min_size": 40} | kwargs
    return federated_workload(*splits, **options)  # type: ignore[arg-type]


def _mean_entropy(parts: list[np.ndarray], y: np.ndarray) -> float:
    entropies = []
    for part in parts:
        p = label_counts(y[part], 10) / len(part)
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


# --- the partition ---


@pytest.mark.parametrize("alpha", [0.05, 0.3, 100.0])
def test_partition_uses_every_index_once(alpha: float) -> None:
    y = np.random.default_rng(0).integers(0, 10, 2000)
    parts = dirichlet_split(y, 9, alpha, np.random.default_rng(1))
    assert len(parts) == 9
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(2000))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats


def test_skew_grows_as_alpha_shrinks() -> None:
    y = np.arange(5000) % 10
    entropy = {
        a: _mean_entropy(dirichlet_split(y, 9, a, np.random.default_rng(0)), y) for a in (0.1, 0.3, 100)
    }
    assert entropy[0.1] < entropy[0.3] < entropy[100]
    assert entropy[100] > 0.95 * np.log(10)  # an even mix: close to the uniform mix's entropy
    assert entropy[0.3] < 0.75 * np.log(10)


def test_min_size_respected_under_extreme_skew() -> None:
    y = np.arange(1000) % 10
    for seed in range(5):
        parts = dirichlet_split(y, 9, 0.01, np.random.default_rng(seed), min_size=100)
        assert min(len(p) for p in parts) >= 100
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    parts = dirichlet_split(y[:18], 9, 0.01, np.random.default_rng(0), min_size=0)
    assert min(len(p) for p in parts) >= 1  # never an empty part
    with pytest.raises(ValueError, match="cannot give 9 parts 50 each"):
        dirichlet_split(y[:400], 9, 0.3, np.random.default_rng(0))


def test_partition_deterministic_with_the_generator() -> None:
    y = np.arange(2000) % 10
    one = dirichlet_split(y, 5, 0.3, np.random.default_rng(4))
    two = dirichlet_split(y, 5, 0.3, np.random.default_rng(4))
    other = dirichlet_split(y, 5, 0.3, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(one, other, strict=True))


# --- the workload ---


def test_workload_shape_and_coverage(splits: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, x_test, y_test = splits
    w = _workload(splits)
    assert [s.name for s in w.sites] == [f"site-{i}" for i in range(1, 9)]
    assert w.new_site.name == "site-new" and w.new_site not in w.sites
    assert len(w.cloud[1]) == 600  # 20 % of 3,000
    every = np.concatenate(list(w.train_indices.values()))
    np.testing.assert_array_equal(np.sort(every), np.arange(3000))  # cloud and sites: each example once
    assert w.proportions.shape == (8, 10)
    np.testing.assert_allclose(w.proportions.sum(axis=1), 1.0)
    for site in w.all_sites:
        idx = w.train_indices[site.name]
        np.testing.assert_array_equal(site.y_train, y_train[idx])
        assert len(site.y_train) >= 40 and len(site.y_test) == 100
        np.testing.assert_array_equal(site.y_test, y_test[w.test_indices[site.name]])
    np.testing.assert_array_equal(w.global_test[0], x_test)  # whole and unshifted
    np.testing.assert_array_equal(w.cloud[0], x_train[w.train_indices["cloud"]])


def test_cloud_share_is_a_uniform_sample(splits: tuple[np.ndarray, ...]) -> None:
    w = _workload(splits, alpha=0.05)
    counts = label_counts(w.cloud[1], 10)
    assert counts.min() >= 35 and counts.max() <= 85  # ~60 per class, not skewed like the sites


def test_new_site_disjoint_from_the_others(splits: tuple[np.ndarray, ...]) -> None:
    w = _workload(splits)
    new = set(w.train_indices["site-new"].tolist())
    for name in [s.name for s in w.sites] + ["cloud"]:
        assert new.isdisjoint(w.train_indices[name].tolist()), name


def test_site_test_sets_disjoint_while_classes_last(splits: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, _, _ = splits
    w = federated_workload(x_train, y_train, *_split(5000, 3), test_per_site=100, min_size=40)
    tests = np.concatenate([w.test_indices[s.name] for s in w.all_sites])
    assert len(tests) == 900 and len(np.unique(tests)) == 900


def test_shift_applied_to_exactly_the_first_sites(splits: tuple[np.ndarray, ...]) -> None:
    x_train, _, x_test, _ = splits
    w = _workload(splits, shifted=3)
    assert [s.shifted for s in w.all_sites] == [True] * 3 + [False] * 6
    for site in w.all_sites:
        raw_train = x_train[w.train_indices[site.name]]
        raw_test = x_test[w.test_indices[site.name]]
        if site.shifted:
            np.testing.assert_array_equal(site.x_train, shift(raw_train))
            np.testing.assert_array_equal(site.x_test, shift(raw_test))
            assert site.x_train.mean() > raw_train.mean() + 5 and site.x_test.mean() > raw_test.mean() + 5
        else:
            np.testing.assert_array_equal(site.x_train, raw_train)
            np.testing.assert_array_equal(site.x_test, raw_test)


def test_site_test_sets_follow_the_site_label_mix(splits: tuple[np.ndarray, ...]) -> None:
    w = _workload(splits)
    for site in w.all_sites:
        train_mix = label_counts(site.y_train, 10) / len(site.y_train)
        test_mix = label_counts(site.y_test, 10) / len(site.y_test)
        assert np.corrcoef(train_mix, test_mix)[0, 1] > 0.8, site.name
        assert np.abs(train_mix - test_mix).max() <= 0.01 + 1e-9  # largest remainder: within one image


def test_classes_running_out_are_sampled_again(splits: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, x_test, y_test = splits
    w = federated_workload(x_train, y_train, x_test[:300], y_test[:300], test_per_site=100, min_size=40)
    tests = np.concatenate([w.test_indices[s.name] for s in w.all_sites])
    assert len(tests) == 900 and len(np.unique(tests)) == 300  # 900 wanted from 300: all used, some twice
    for site in w.all_sites:
        assert len(site.y_test) == 100
        train_mix = label_counts(site.y_train, 10) / len(site.y_train)
        assert np.corrcoef(train_mix, label_counts(site.y_test, 10) / 100)[0, 1] > 0.8


def test_workload_deterministic_with_the_seed(splits: tuple[np.ndarray, ...]) -> None:
    one, two, other = _workload(splits), _workload(splits), _workload(splits, seed=1)
    for a, b in zip(one.all_sites, two.all_sites, strict=True):
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(one.train_indices["site-1"], other.train_indices["site-1"])


def test_workload_refuses_bad_arguments(splits: tuple[np.ndarray, ...]) -> None:
    with pytest.raises(ValueError, match="cloud_share"):
        _workload(splits, cloud_share=1.0)
    with pytest.raises(ValueError, match="shifted <= sites"):
        _workload(splits, sites=2, shifted=3)


# --- what the bench writes and logs ---


def test_write_sites_in_the_form_a_site_reads(splits: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    w = _workload(splits)
    paths = write_sites(w, tmp_path / "sites")
    assert sorted(paths) == sorted(s.name for s in w.all_sites)
    for site in w.all_sites:
        assert paths[site.name] == tmp_path / "sites" / f"{site.name}.npz"
        x, y = load_site_data(paths[site.name], CLASSES)
        np.testing.assert_array_equal(x, site.x_train)
        np.testing.assert_array_equal(y, site.y_train)


def test_label_skew_table(splits: tuple[np.ndarray, ...]) -> None:
    w = _workload(splits, shifted=2)
    lines = label_skew_table(w).splitlines()
    assert len(lines) == 1 + 1 + 9 + 1  # header, cloud, sites, legend
    assert lines[0].split() == [*CLASSES, "total"]
    for line, site in zip(lines[2:11], w.all_sites, strict=True):
        cells = line.split()
        assert cells[0] == site.name and (cells[1] == "*") == site.shifted
        numbers = [int(c) for c in cells[1 + site.shifted :]]
        assert numbers == [*label_counts(site.y_train, 10).tolist(), len(site.y_train)]
