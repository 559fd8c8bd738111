"""The data of ``edgecascade bench federated``: a cloud share, label-skewed sites, some shifted.

From one labelled training split and one test split:

* the **cloud** keeps a uniform random ``cloud_share`` of the training split (what it
  trained the first model on);
* the rest is split over ``sites + 1`` parts by :func:`dirichlet_split`, the usual
  label-skew benchmark of collaborative learning: for each class, the shares of the parts
  are drawn from ``Dir(alpha)``, so a small ``alpha`` gives each site a few dominant
  classes (0.3: most sites see two or three classes for most of their data), a large
  one an even mix. The last part is the **new site**, which joins after the others;
* the first ``shifted`` sites see through the washed-out camera of ``bench drift``
  (:func:`edgecascade.tools.bench_drift.shift`), on their training and test images alike;
* each site has a test set of its own, ``test_per_site`` images with its own label mix,
  drawn from the test split (see :func:`federated_workload`); the **global test** set is the
  whole unshifted test split.

:func:`write_sites` writes each site's training data in the form a site's SuperNode reads
(:func:`edgecascade.federation.site_data.save_site_data`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecascade.federation.site_data import save_site_data
from edgecascade.tools.bench_drift import shift

__all__ = [
    "Site",
    "Workload",
    "dirichlet_split",
    "federated_workload",
    "label_counts",
    "label_skew_table",
    "write_sites",
]

logger = logging.getLogger(__name__)

MIN_SIZE = 50  # training examples every part gets at least
_REDRAWS = 10  # fresh Dirichlet draws before moving examples to a part that is too small


def label_counts(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Examples per class, ``(num_classes,)`` int64."""
    return np.bincount(y, minlength=num_classes).astype(np.int64)[:num_classes]


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` shared out in proportion to ``weights`` by largest remainder: integers that sum to it."""
    quotas = weights / weights.sum() * total
    counts = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def _draw(y: np.ndarray, n_parts: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(n_parts, alpha))
        cuts = np.cumsum(_allocate(len(members), shares))[:-1]
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.append(chunk)
    return [np.concatenate(chunks) if chunks else np.empty(0, np.int64) for chunks in parts]


def dirichlet_split(
    y: np.ndarray, n_parts: int, alpha: float, rng: np.random.Generator, min_size: int = MIN_SIZE
) -> list[np.ndarray]:
    """A label-skewed partition of ``range(len(y))`` into ``n_parts`` sorted index arrays.

    For each class the shares of the parts are drawn from ``Dir(alpha)``; every index is
    in exactly one part. Every part gets at least ``min_size`` indices (at least one): up
    to ten fresh draws, then random examples move from the largest part to any part still
    short. Same ``rng`` state, same partition.
    """
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    floor = max(min_size, 1)
    if len(y) < n_parts * floor:
        raise ValueError(f"{len(y)} examples cannot give {n_parts} parts {floor} each")
    parts = _draw(y, n_parts, alpha, rng)
    for _ in range(_REDRAWS):
        if min(len(p) for p in parts) >= floor:
            break
        parts = _draw(y, n_parts, alpha, rng)
    while True:
        sizes = [len(p) for p in parts]
        short, donor = int(np.argmin(sizes)), int(np.argmax(sizes))
        if sizes[short] >= floor:
            break
        k = min(floor - sizes[short], sizes[donor] - floor)
        moved = rng.choice(len(parts[donor]), size=k, replace=False)
        parts[short] = np.concatenate([parts[short], parts[donor][moved]])
        parts[donor] = np.delete(parts[donor], moved)
    return [np.sort(p).astype(np.int64) for p in parts]


@dataclass(frozen=True, eq=False)  # arrays: compared and hashed by identity
class Site:
    """One site's training data (its SuperNode's) and the test set it is measured on."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    shifted: bool


@dataclass(frozen=True, eq=False)
class Workload:
    """The whole benchmark's data; indices point into the training and test splits it was cut from."""

    cloud: tuple[np.ndarray, np.ndarray]
    sites: list[Site]
    new_site: Site
    global_test: tuple[np.ndarray, np.ndarray]
    proportions: np.ndarray  # (len(sites), classes): each site's share of its training data per class
    train_indices: dict[str, np.ndarray]  # "cloud" and every site name (the new site too)
    test_indices: dict[str, np.ndarray]  # every site name; may repeat an index (see federated_workload)

    @property
    def num_classes(self) -> int:
        return int(self.proportions.shape[1])

    @property
    def all_sites(self) -> list[Site]:
        """The first sites, then the new one."""
        return [*self.sites, self.new_site]


def _site_tests(
    y_test: np.ndarray, wanted: list[np.ndarray], rng: np.random.Generator
) -> tuple[list[np.ndarray], int]:
    """Test indices per site with ``wanted[i][c]`` images of class ``c``; how many were reused.

    Sites draw in turn from one shuffled pool per class, so no two share an image while the
    class lasts; once it runs out a site's shortfall is sampled again from the whole class
    (without repeats within the site where the class is large enough).
    """
    pools = {int(c): rng.permutation(np.flatnonzero(y_test == c)) for c in np.unique(y_test)}
    tests: list[np.ndarray] = []
    reused = 0
    for counts in wanted:
        picks: list[np.ndarray] = []
        for c, k in enumerate(counts):
            if k == 0:
                continue
            if c not in pools:
                raise ValueError(f"class {c} has training examples but no test images")
            fresh, pools[c] = pools[c][:k], pools[c][k:]
            picks.append(fresh)
            short = int(k) - len(fresh)
            if short:
                reused += short
                members = np.setdiff1d(np.flatnonzero(y_test == c), fresh)
                if len(members) < short:
                    members = np.flatnonzero(y_test == c)
                picks.append(rng.choice(members, size=short, replace=len(members) < short))
        tests.append(np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64))
    return tests, reused


def federated_workload(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    cloud_share: float = 0.2,
    sites: int = 8,
    alpha: float = 0.3,
    shifted: int = 4,
    seed: int = 0,
    test_per_site: int = 1000,
    min_size: int = MIN_SIZE,
) -> Workload:
    """Cut the benchmark's cloud share, sites and per-site test sets (see the module docstring).

    Each site's test set has ``test_per_site`` images whose label mix follows the site's
    training data. They are drawn without replacement across sites while a class lasts;
    when a class runs out (label skew can make several sites want most of one class), the
    missing images are sampled again from that class, so some test images then appear at
    more than one site. The count is logged. The same arguments give the same workload.
    """
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError("images and labels differ in length")
    if not 0.0 <= cloud_share < 1.0:
        raise ValueError(f"cloud_share must be in [0, 1), got {cloud_share}")
    if sites < 1 or not 0 <= shifted <= sites or test_per_site < 1:
        raise ValueError(f"need sites >= 1, 0 <= shifted <= sites, test_per_site >= 1: {sites}, {shifted}")
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_train))
    n_cloud = round(len(y_train) * cloud_share)
    cloud, rest = np.sort(order[:n_cloud]), np.sort(order[n_cloud:])
    parts = [rest[p] for p in dirichlet_split(y_train[rest], sites + 1, alpha, rng, min_size)]
    names = [f"site-{i + 1}" for i in range(sites)] + ["site-new"]
    wanted = [_allocate(test_per_site, label_counts(y_train[p], num_classes).astype(float)) for p in parts]
    tests, reused = _site_tests(y_test, wanted, rng)
    if reused:
        logger.info(
            "site test sets: %d of %d images reused (a class ran out)", reused, len(names) * test_per_site
        )
    built = []
    for i, (name, train, test) in enumerate(zip(names, parts, tests, strict=True)):
        is_shifted = i < shifted
        x_site, x_site_test = x_train[train], x_test[test]
        if is_shifted:
            x_site, x_site_test = shift(x_site), shift(x_site_test)
        built.append(Site(name, x_site, y_train[train], x_site_test, y_test[test], is_shifted))
    counts = np.stack([label_counts(y_train[p], num_classes) for p in parts[:sites]])
    return Workload(
        cloud=(x_train[cloud], y_train[cloud]),
        sites=built[:sites],
        new_site=built[sites],
        global_test=(x_test, y_test),
        proportions=counts / counts.sum(axis=1, keepdims=True),
        train_indices={"cloud": cloud, **dict(zip(names, parts, strict=True))},
        test_indices=dict(zip(names, tests, strict=True)),
    )


def write_sites(workload: Workload, out_dir: Path) -> dict[str, Path]:
    """Each site's training data (the new site's too) as ``<out_dir>/<name>.npz``, for its SuperNode."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        site.name: save_site_data(out_dir / f"{site.name}.npz", site.x_train, site.y_train)
        for site in workload.all_sites
    }


def label_skew_table(workload: Workload) -> str:
    """Training examples per site and class, one line per site (``*``: shifted camera), for the bench log."""
    num_classes = workload.num_classes
    rows = [("cloud", "", label_counts(workload.cloud[1], num_classes))]
    rows += [
        (s.name, "*" if s.shifted else "", label_counts(s.y_train, num_classes)) for s in workload.all_sites
    ]
    width = max(5, *(len(str(int(c.max(initial=0)))) + 1 for _, _, c in rows))
    head = f"{'':<9}{'':1}" + "".join(f"{c:>{width}}" for c in range(num_classes)) + f"{'total':>{width + 2}}"
    lines = [head]
    for name, mark, c in rows:
        lines.append(
            f"{name:<9}{mark:1}" + "".join(f"{int(v):>{width}}" for v in c) + f"{int(c.sum()):>{width + 2}}"
        )
    lines.append("* shifted camera")
    return "\n".join(lines)
