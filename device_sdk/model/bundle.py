"""Model bundles: a directory with ``manifest.json`` and one ``.tflite`` per partition.

The manifest is the contract between training and every runtime tier. It names the model
and its version, the classes, how raw inputs are normalised, and for each partition its
file, sha256, input tensor, output tensors and exit settings. :func:`load_bundle` refuses a
bundle whose manifest is malformed or whose files do not match their hashes; given the
cloud's public key it also refuses one whose ``manifest.sig`` does not verify (see
:mod:`edgecascade.device_sdk.model.signing`) or that would roll back the running version.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.errors import (
    BundleError,
    ClassListError,
    ConfigError,
    RollbackError,
    TensorSpecError,
)
from edgecascade.device_sdk.files import atomic_write, sha256_file
from edgecascade.device_sdk.model.signing import (
    SIGNATURE,
    PrivateKeySource,
    PublicKeySource,
    load_private_key,
    sign_manifest,
    verify_manifest,
)
from edgecascade.device_sdk.wire.codec import Encoding

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TIERS = ("device", "gateway", "cloud")
PRECISIONS = ("float32", "float16", "int8")
PARTITIONED, MODELS = "partitioned", "models"
MODES = (PARTITIONED, MODELS)
"""How a bundle's tiers relate. ``partitioned``: one multi-exit network cut in three, each
tier runs on the cut features of the one below. ``models``: three separately trained
networks (small, medium, large), each runs on the raw input, which is what travels up."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a partition: its name in the TFLite graph, shape without batch, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ExitSpec:
    """How a partition's exit decides: temperature for its logits and a confidence threshold.

    A max-probability threshold above 1.0 means the exit never answers (every input moves on).
    """

    threshold: float
    temperature: float = 1.0
    score: str = "max_prob"


FAMILIARITY_SCORES = ("energy", "max_logit", "max_prob", "mahalanobis")
"""Scores an exit's unknown-input rule may use (:mod:`edgecascade.device_sdk.core.novelty`):
three over the exit's logits, ``mahalanobis`` over the tier's cache keys (it needs statistics)."""


@dataclass(frozen=True)
class UnknownSpec:
    """How an exit tells inputs unlike its training data: a familiarity score over its logits
    (at ``temperature``) and the threshold below which an input counts as unknown, chosen so
    that ``known_fpr`` of the known validation inputs fall below it.

    The ``mahalanobis`` score reads ``statistics``, a file in the bundle (hashed like the
    partitions) with the class means and shared precision of the tier's cache keys."""

    score: str
    threshold: float
    temperature: float = 1.0
    known_fpr: float = 0.05
    statistics: str | None = None
    statistics_sha256: str = ""


@dataclass(frozen=True)
class DriftSpec:
    """What the device exit did on validation data, the reference of the device's drift detector
    (:mod:`edgecascade.device_sdk.core.drift`): the mean and standard deviation of its top
    calibrated probability, the share of inputs it answered, the share its unknown-input rule
    flagged, and how many inputs these were measured on."""

    confidence_mean: float
    confidence_std: float
    device_share: float
    unknown_share: float = 0.0
    samples: int = 0


@dataclass(frozen=True)
class CacheSpec:
    """Calibrated settings of a tier's neural cache: its keys, hit rule and what it keeps.

    ``embedding`` names the file in the bundle holding the key projection
    (:class:`edgecascade.device_sdk.cache.similarity.Embedder`), hashed like the partition files; without it
    the cache keys are 2x2-pooled features. Besides the answers of the tiers above, the
    cache keeps the tier's own exit answers with a confidence below ``keep_exits_below``:
    a near-duplicate of such an input may fall under the exit threshold, and then the
    confident answer given to its original is at hand (0 keeps none).
    """

    tau: float
    k: int = 3
    min_votes: int = 2
    accuracy_ratio: float = 0.0  # on validation hits (at the expected repeat share): cache / tiers' accuracy
    hit_rate: float = 0.0  # share of validation queries answered by the cache at this tau
    embedding: str | None = None  # key projection file in the bundle, or None: pooled features
    embedding_sha256: str = ""
    keep_exits_below: float = 0.0


@dataclass(frozen=True)
class PartitionSpec:
    """One partition of the multi-exit model and where it runs."""

    tier: str
    file: str
    sha256: str
    input: TensorSpec
    logits: TensorSpec
    exit: ExitSpec
    features: TensorSpec | None = None  # cut features for the next tier; None on the last
    cache: CacheSpec | None = None  # calibrated neural-cache settings for this tier
    unknown: UnknownSpec | None = None  # calibrated unknown-input rule; None: nothing is flagged
    drift: DriftSpec | None = None  # the drift detector's reference (device); None: no detector
    encoding: str = (
        "float32"  # how ``features`` travel to the next tier (edgecascade.device_sdk.wire.codec.Encoding)
    )
    precision: str = "float32"  # weights and arithmetic of the .tflite: float32, float16 or int8

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        """The bundle files this tier needs, with their sha256: the partition, the cache's key projection,
        the unknown-input rule's statistics."""
        files = [(self.file, self.sha256)]
        if self.cache is not None and self.cache.embedding is not None:
            files.append((self.cache.embedding, self.cache.embedding_sha256))
        if self.unknown is not None and self.unknown.statistics is not None:
            files.append((self.unknown.statistics, self.unknown.statistics_sha256))
        return tuple(files)


@dataclass(frozen=True)
class InputSpec:
    """Raw input shape and normalisation: ``x = raw * scale + offset`` as float32."""

    shape: tuple[int, ...]
    scale: float = 1.0 / 255.0
    offset: float = 0.0

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Raw images (uint8 or float) to the model's float32 input."""
        return (np.asarray(raw, dtype=np.float32) * np.float32(self.scale) + np.float32(self.offset)).astype(
            np.float32
        )

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """A batch of raw inputs as the model's input: shape checked (a missing channel axis
        added), normalised, finite; anything else is a :class:`TensorSpecError`."""
        batch = np.asarray(batch)
        if batch.shape[1:] != self.shape and (*batch.shape[1:], 1) == self.shape:
            batch = batch[..., None]
        if batch.ndim != len(self.shape) + 1 or batch.shape[1:] != self.shape or len(batch) == 0:
            raise TensorSpecError(
                f"expected inputs of shape {self.shape}, got a batch of shape {batch.shape}"
            )
        x = self.normalise(batch)
        if not np.isfinite(x).all():
            raise TensorSpecError("input holds NaN or infinite values")
        return x


@dataclass(frozen=True)
class Manifest:
    """Everything a tier needs to know about a model version."""

    name: str
    version: int
    classes: tuple[str, ...]
    input: InputSpec
    partitions: tuple[PartitionSpec, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT
    rollback_of: int | None = None  # set on a signed rollback: the newest version it may replace
    mode: str = PARTITIONED  # see MODES

    @property
    def forwards_input(self) -> bool:
        """True in the models mode: a tier passes its own input (the raw input) up, not cut features."""
        return self.mode == MODELS

    def partition(self, tier: str) -> PartitionSpec:
        """The partition that runs on ``tier``."""
        for p in self.partitions:
            if p.tier == tier:
                return p
        raise BundleError(f"manifest has no {tier!r} partition")

    def sent_up(self, tier: str) -> TensorSpec | None:
        """What ``tier`` sends the tier above (before its wire encoding): its cut features, or in
        the models mode the input it ran on; None on the last tier."""
        spec = self.partition(tier)
        if tier == self.partitions[-1].tier:
            return None
        return spec.input if self.forwards_input else spec.features

    def to_json(self) -> str:
        """Canonical JSON, the bytes that are signed: one manifest always gives the same text.

        Sorted keys, fixed indent and separators, ASCII only, floats as their shortest
        round-trip repr. ``rollback_of`` and a partition's ``unknown`` and ``drift`` are left out
        when unset and ``mode`` when partitioned, so manifests written before those fields
        existed keep their exact bytes.
        """
        data = asdict(self)
        if data["rollback_of"] is None:
            del data["rollback_of"]
        if data["mode"] == PARTITIONED:
            del data["mode"]
        for part in data["partitions"]:
            if part["drift"] is None:
                del part["drift"]
            if part["unknown"] is None:
                del part["unknown"]
            elif part["unknown"]["statistics"] is None:  # a rule over logits
                del part["unknown"]["statistics"], part["unknown"]["statistics_sha256"]
        return json.dumps(data, sort_keys=True, indent=2, separators=(",", ": "), ensure_ascii=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse and validate a manifest dictionary; any problem is a BundleError."""
        try:
            if data.get("format") != MANIFEST_FORMAT:
                raise BundleError(f"unsupported manifest format {data.get('format')!r}")
            parts = tuple(_partition(p) for p in data["partitions"])
            manifest = cls(
                name=str(data["name"]),
                version=int(data["version"]),
                classes=tuple(str(c) for c in data["classes"]),
                input=InputSpec(
                    shape=tuple(int(d) for d in data["input"]["shape"]),
                    scale=float(data["input"]["scale"]),
                    offset=float(data["input"]["offset"]),
                ),
                partitions=parts,
                metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
                rollback_of=None if data.get("rollback_of") is None else int(data["rollback_of"]),
                mode=_one_of(data.get("mode", PARTITIONED), MODES, "mode"),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed manifest: {exc!r}") from None
        tiers = tuple(p.tier for p in manifest.partitions)
        if tiers != TIERS:
            raise BundleError(f"manifest partitions must be {TIERS}, got {tiers}")
        if manifest.version < 1:
            raise BundleError("manifest version must be >= 1")
        if manifest.rollback_of is not None and manifest.rollback_of <= manifest.version:
            raise BundleError(
                f"rollback_of ({manifest.rollback_of}) must be newer than the version ({manifest.version})"
            )
        problems = []
        for p, nxt in zip(manifest.partitions, (*manifest.partitions[1:], None), strict=True):
            if p.logits.shape != (len(manifest.classes),):
                problems.append(f"{p.tier} logits shape {p.logits.shape} != ({len(manifest.classes)},)")
            if manifest.forwards_input:
                if p.features is not None or p.input.shape != manifest.input.shape:
                    problems.append(f"{p.tier} model must take the raw input {manifest.input.shape}, no cut")
            elif nxt is not None and (p.features is None or p.features.shape != nxt.input.shape):
                problems.append(f"{p.tier} features do not match the {nxt.tier} partition's input")
            if not (math.isfinite(p.exit.threshold) and p.exit.threshold >= 0 and p.exit.temperature > 0):
                problems.append(f"{p.tier} exit needs a finite threshold >= 0 and a temperature > 0")
            for name, _ in p.files:
                if name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name:
                    problems.append(f"{p.tier} file {name!r} must be a plain file name inside the bundle")
        if problems:
            raise BundleError("invalid manifest: " + "; ".join(problems))
        return manifest


def _tensor(d: dict[str, Any]) -> TensorSpec:
    return TensorSpec(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d.get("dtype", "float32")))


def _partition(d: dict[str, Any]) -> PartitionSpec:
    return PartitionSpec(
        tier=str(d["tier"]),
        file=str(d["file"]),
        sha256=str(d["sha256"]),
        input=_tensor(d["input"]),
        logits=_tensor(d["logits"]),
        exit=ExitSpec(**d["exit"]),
        features=_tensor(d["features"]) if d.get("features") else None,
        cache=CacheSpec(**d["cache"]) if d.get("cache") else None,
        unknown=_unknown(d["unknown"]) if d.get("unknown") else None,
        drift=_drift(d["drift"]) if d.get("drift") else None,
        encoding=Encoding(d.get("encoding", "float32")).value,
        precision=_one_of(d.get("precision", "float32"), PRECISIONS, "precision"),
    )


def _unknown(d: dict[str, Any]) -> UnknownSpec:
    spec = UnknownSpec(**d)
    _one_of(spec.score, FAMILIARITY_SCORES, "familiarity score")
    if not (math.isfinite(spec.threshold) and spec.temperature > 0 and 0 < spec.known_fpr < 1):
        raise BundleError(f"unknown-input rule needs a finite threshold and a temperature > 0, got {spec}")
    if (spec.score == "mahalanobis") != (spec.statistics is not None):
        raise BundleError("an unknown-input rule has statistics exactly when its score is mahalanobis")
    return spec


def _drift(d: dict[str, Any]) -> DriftSpec:
    spec = DriftSpec(**d)
    spec = DriftSpec(
        float(spec.confidence_mean),
        float(spec.confidence_std),
        float(spec.device_share),
        float(spec.unknown_share),
        int(spec.samples),
    )
    shares = (spec.confidence_mean, spec.device_share, spec.unknown_share)
    if not (all(0.0 <= v <= 1.0 for v in shares) and 0.0 <= spec.confidence_std <= 1.0 and spec.samples >= 0):
        raise BundleError(f"drift reference needs means and shares in [0, 1] and a std in [0, 1], got {spec}")
    return spec


def _one_of(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise BundleError(f"unknown {what} {value!r} (known: {', '.join(allowed)})")
    return str(value)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    def file(self, tier: str) -> Path:
        return self.path / self.manifest.partition(tier).file


def load_bundle(
    path: str | Path,
    tiers: tuple[str, ...] = TIERS,
    *,
    public_key: PublicKeySource | None = None,
    min_version: int | None = None,
) -> Bundle:
    """Read and verify a bundle; only the files of ``tiers`` need to be present.

    With ``public_key`` (a key or its PEM file) ``manifest.sig`` must verify over the exact
    manifest bytes before they are parsed (:class:`~edgecascade.device_sdk.errors.SignatureError`), so
    every sha256 checked below is one the cloud signed. With ``min_version`` (the running
    version) an older bundle is refused (:class:`~edgecascade.device_sdk.errors.RollbackError`) unless
    its manifest is a rollback whose ``rollback_of`` reaches the running version.
    """
    root = Path(path)
    try:
        raw = (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} in {root}") from None
    if public_key is not None:
        verify_manifest(root, raw, public_key)
    try:
        data = json.loads(raw.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{root / MANIFEST}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{root / MANIFEST}: expected a JSON object")
    manifest = Manifest.from_dict(data)
    allowed_back = manifest.rollback_of is not None and manifest.rollback_of >= (min_version or 0)
    if min_version is not None and manifest.version < min_version and not allowed_back:
        raise RollbackError(
            f"bundle {root} is version {manifest.version}, older than the running version "
            f"{min_version}, and its manifest is not a rollback from version {min_version} or newer"
        )
    for tier in tiers:
        for name, sha256 in manifest.partition(tier).files:
            if not (root / name).is_file():
                raise BundleError(f"bundle {root} is missing {name}")
            if sha256_file(root / name) != sha256:
                raise BundleError(f"{name} does not match its sha256 in the manifest")
    return Bundle(root, manifest)


def check_classes_grow(old: Sequence[str], new: Sequence[str]) -> tuple[str, ...]:
    """The classes ``new`` adds to ``old``; :class:`ClassListError` unless ``new`` is ``old`` followed
    by zero or more new names.

    A label is an index into the class list, so a version may only append classes: a
    shrunk, renamed or reordered list would give stored labels, caches and apps another
    meaning for the same index.
    """
    old, new = tuple(old), tuple(new)
    if new[: len(old)] != old:
        raise ClassListError(f"class list {list(new)} does not begin with the running classes {list(old)}")
    added = new[len(old) :]
    if len(set(new)) != len(new):
        raise ClassListError(f"class list {list(new)} names a class twice")
    return added


def write_manifest(path: str | Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` into the bundle directory ``path`` atomically."""
    atomic_write(Path(path) / MANIFEST, manifest.to_json().encode())


def sign_bundle(path: str | Path, private_key: PrivateKeySource) -> Path:
    """Verify a bundle's files against its manifest, then write ``manifest.sig``; returns its path.

    A manifest not in canonical form (hand-edited) is rewritten canonically first, so the
    signed bytes are exactly what :meth:`Manifest.to_json` gives for what the runtime parses.
    """
    root = Path(path)
    key = load_private_key(private_key)  # a bad key fails before anything is written
    bundle = load_bundle(root)  # every file present and matching its sha256
    canonical = bundle.manifest.to_json().encode()
    if (root / MANIFEST).read_bytes() != canonical:
        logger.info("rewriting %s in canonical form before signing", root / MANIFEST)
        atomic_write(root / MANIFEST, canonical)
    target = root / SIGNATURE
    atomic_write(target, sign_manifest(canonical, key))
    return target


def load_verified_update(
    path: str | Path,
    public_key: PublicKeySource,
    running_version: int,
    tiers: tuple[str, ...] = TIERS,
) -> Bundle:
    """A new bundle for a node that already runs ``running_version``, fully verified, or an error.

    Signature, every file's sha256 and the version rule (no older version unless the signed
    manifest is a rollback reaching ``running_version``) are all checked before the bundle
    is returned. Nothing is changed on a failure, so the caller keeps serving its current
    bundle; only after this returns may it swap.
    """
    if public_key is None:
        raise ConfigError("an update must be verified: a public key is required")
    return load_bundle(path, tiers, public_key=public_key, min_version=running_version)
