"""Unknown-input scores: does an input look like anything the model was trained on? Pure numpy.

An exit's softmax can be confidently wrong on an input of a class it never saw; the scale
of its logits says more. A familiarity score is high for inputs like the training data and
low for the rest:

- ``energy``: ``T · logsumexp(logits / T)``, the negative free energy (Liu et al., 2020);
- ``max_logit``: the largest logit (Hendrycks et al., 2022);
- ``max_prob``: the top softmax probability (the classic baseline);
- ``mahalanobis``: minus the smallest Mahalanobis distance of the input's cache key to a
  class mean, with one covariance shared by the classes (Lee et al., 2018). Measured on
  Fashion-MNIST with two classes held out, it separates unseen classes far better than any
  score over the logits (AUROC 0.91 against 0.80 for energy on the device exit): an input
  of a new class often gets confident logits, but its features lie away from every class.

A manifest's :class:`~edgecascade.device_sdk.model.bundle.UnknownSpec` names the score and
a threshold calibrated on validation data (a small share of known inputs falls below it);
:class:`UnknownRule` applies it (:func:`is_unknown` for the scores over logits). Unknown
inputs are never answered by a cache and are kept as hard examples for the reason ``unknown``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk.cache.from_bundle import load_embedder
from edgecascade.device_sdk.cache.similarity import Embedder
from edgecascade.device_sdk.core.policy import softmax
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import Bundle, UnknownSpec


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``T · logsumexp(logits / T)`` per row: the negative free energy, high for familiar inputs."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=-1)
    return (temperature * (top + np.log(np.exp(z - top[..., None]).sum(axis=-1)))).astype(np.float32)


def max_logit(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The largest logit per row (divided by the temperature, which keeps the order)."""
    return (np.asarray(logits, dtype=np.float64).max(axis=-1) / temperature).astype(np.float32)


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The top class probability per row, at ``temperature``."""
    return softmax(logits, temperature).max(axis=-1)


FAMILIARITY: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "energy": energy,
    "max_logit": max_logit,
    "max_prob": max_softmax,
}
"""Familiarity scores over logits, by the name a manifest uses; higher means more familiar."""

KEY_SCORE = "mahalanobis"
"""The familiarity score over cache keys (:class:`ClassStatistics`)."""


def familiarity(name: str) -> Callable[[np.ndarray, float], np.ndarray]:
    """The score over logits called ``name``, or a ConfigError listing the known ones."""
    try:
        return FAMILIARITY[name]
    except KeyError:
        raise ConfigError(f"unknown familiarity score {name!r} (known: {', '.join(FAMILIARITY)})") from None


def is_unknown(logits: np.ndarray, spec: UnknownSpec) -> np.ndarray:
    """Boolean mask over a batch of logits: True where the input falls below the calibrated threshold."""
    return familiarity(spec.score)(logits, spec.temperature) < spec.threshold


def threshold_at(values: np.ndarray, known_fpr: float) -> float:
    """The familiarity under which ``known_fpr`` of known (validation) ``values`` fall."""
    if not 0.0 < known_fpr < 1.0:
        raise ValueError(f"known_fpr must be in (0, 1), got {known_fpr}")
    if not len(values):
        raise ValueError("calibrating the unknown-input threshold needs validation inputs")
    return float(np.quantile(values, known_fpr))


def calibrate_unknown(
    logits: np.ndarray, score: str = "energy", known_fpr: float = 0.05, temperature: float = 1.0
) -> UnknownSpec:
    """The rule over logits that flags ``known_fpr`` of known (validation) inputs as unknown."""
    if not 0.0 < known_fpr < 1.0:  # before the score: a wrong rate is the first thing to say
        raise ValueError(f"known_fpr must be in (0, 1), got {known_fpr}")
    threshold = threshold_at(familiarity(score)(logits, temperature), known_fpr)
    return UnknownSpec(score=score, threshold=threshold, temperature=temperature, known_fpr=known_fpr)


STATISTICS_FORMAT = 1


@dataclass(frozen=True, eq=False)
class ClassStatistics:
    """Class means of a tier's cache keys and the precision (inverse covariance) they share.

    Stored in the bundle as ``<tier>.unknown.npz`` (plain arrays, read without pickle).
    """

    means: np.ndarray  # (classes, d) float32
    precision: np.ndarray  # (d, d) float32, symmetric positive definite

    def __post_init__(self) -> None:
        k, d = self.means.shape if self.means.ndim == 2 else (0, 0)
        if not k or self.precision.shape != (d, d):
            raise ValueError(
                f"class statistics need (classes, d) means and a (d, d) precision, "
                f"got {self.means.shape} and {self.precision.shape}"
            )
        if not (np.isfinite(self.means).all() and np.isfinite(self.precision).all()):
            raise ValueError("class statistics must be finite")

    @classmethod
    def fit(cls, keys: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-3) -> ClassStatistics:
        """Means per label and the shared within-class covariance's inverse (ridge ``shrinkage``)."""
        classes = np.unique(labels)
        means = np.stack([keys[labels == c].mean(axis=0) for c in classes]).astype(np.float64)
        centred = keys - means[np.searchsorted(classes, labels)]
        covariance = centred.T @ centred / len(keys)
        covariance += shrinkage * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        return cls(means.astype(np.float32), np.linalg.inv(covariance).astype(np.float32))

    def familiarity(self, keys: np.ndarray) -> np.ndarray:
        """Minus the squared Mahalanobis distance to the nearest class mean, per key row."""
        diff = np.asarray(keys, dtype=np.float32)[:, None, :] - self.means[None]  # (n, k, d)
        distances = np.einsum("nkd,de,nke->nk", diff, self.precision, diff)
        return (-distances.min(axis=1)).astype(np.float32)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez(out, format=np.int64(STATISTICS_FORMAT), means=self.means, precision=self.precision)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClassStatistics:
        """Parse a statistics file (never unpickling); ValueError when it is not one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                version = int(npz["format"])
                means, precision = npz["means"], npz["precision"]
        except (OSError, KeyError, EOFError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a class statistics file: {exc}") from None
        if version != STATISTICS_FORMAT:
            raise ValueError(f"class statistics format {version}, expected {STATISTICS_FORMAT}")
        return cls(means.astype(np.float32), precision.astype(np.float32))


@dataclass(frozen=True, eq=False)
class UnknownRule:
    """A tier's unknown-input rule, ready to apply: the spec and, for ``mahalanobis``, the key
    projection and class statistics."""

    spec: UnknownSpec
    embedder: Embedder | None = None
    statistics: ClassStatistics | None = None

    @classmethod
    def from_bundle(cls, bundle: Bundle, tier: str) -> UnknownRule | None:
        """The rule of ``tier``'s exit in ``bundle`` (None without one).

        A statistics file that does not parse, or does not fit the cache keys, is a ConfigError.
        """
        spec = bundle.manifest.partition(tier).unknown
        if spec is None or spec.statistics is None:
            return None if spec is None else cls(spec)
        try:
            statistics = ClassStatistics.from_bytes((bundle.path / spec.statistics).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{tier} unknown-input statistics {spec.statistics}: {exc}") from None
        embedder = load_embedder(bundle, tier)
        if embedder.dim != statistics.means.shape[1]:
            raise ConfigError(
                f"{tier} unknown-input statistics are for {statistics.means.shape[1]}-d keys, "
                f"the cache keys have {embedder.dim}"
            )
        return cls(spec, embedder, statistics)

    def familiarity(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """The rule's score per input: over the logits, or over the cache keys of ``features``."""
        if self.statistics is None or self.embedder is None:
            return familiarity(self.spec.score)(logits, self.spec.temperature)
        if features is None:
            raise ValueError("the mahalanobis score needs the features the tier sends up")
        return self.statistics.familiarity(self.embedder(features))

    def flags(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """Boolean mask over the batch: True where an input is unknown."""
        return self.familiarity(logits, features) < self.spec.threshold
