"""Site overlays: one site's own exit thresholds for one model version, signed by the cloud.

A manifest's exit thresholds are fitted on the training distribution and serve every site.
A site whose inputs differ (another camera, other light) may be served better by
thresholds fitted on its own audited examples: :class:`SiteOverlay` holds those exit
settings (:class:`~.bundle.ExitSpec` per tier it changes) for one model name and version,
with when and from how many examples they were fitted. :func:`apply_overlay` gives the
manifest with them in place (a pure function); the tier core uses it for the version the
overlay names and drops the overlay when a new version arrives.

An overlay is a canonical JSON file with a detached signature beside it (``<file>.sig``),
made with the same Ed25519 key as bundles but over ``CONTEXT + bytes`` with its own
context, so a bundle signature never passes for an overlay's or the other way round.
:func:`load_overlay` refuses an unsigned, forged or tampered overlay
(:class:`~edgecascade.device_sdk.errors.SignatureError`) and one for another model, another
version or a tier the manifest does not have (:class:`~edgecascade.device_sdk.errors.BundleError`).
A node that is configured with one (``[model] overlay``) reads it through
:class:`OverlayFile`: a refusal is a warning and a counter, and the node keeps the
manifest's thresholds.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import BundleError, ConfigError, EdgeCascadeError, SignatureError
from edgecascade.device_sdk.files import atomic_write
from edgecascade.device_sdk.model.bundle import TIERS, ExitSpec, Manifest
from edgecascade.device_sdk.model.signing import (
    ALGORITHM,
    PrivateKeySource,
    PublicKeySource,
    key_id,
    load_private_key,
    load_public_key,
)

logger = logging.getLogger(__name__)

OVERLAY_FORMAT = 1
CONTEXT = b"edgecascade site overlay v1\0"
SIGNATURE_SUFFIX = ".sig"
MAX_OVERLAY_BYTES = 64 * 1024  # a real one is well under 1 KiB
MAX_SIGNATURE_BYTES = 4096
SITE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a site may be called: the name of the token its uploads come with."""


@dataclass(frozen=True)
class SiteOverlay:
    """The exit settings one site uses for one model version in place of the manifest's.

    ``exits`` maps a tier to its :class:`ExitSpec` (only the tiers it changes); ``examples``
    is how many of the site's labelled examples they were fitted on, ``fitted_at`` when
    (unix time), ``metrics`` what the fit measured on them (accuracy, device share).
    """

    model: str
    version: int
    site: str
    exits: dict[str, ExitSpec]
    examples: int = 0
    fitted_at: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    format: int = OVERLAY_FORMAT

    def matches(self, manifest: Manifest) -> bool:
        """True when this overlay was made for ``manifest``'s model name and version."""
        return self.model == manifest.name and self.version == manifest.version

    def to_json(self) -> str:
        """Canonical JSON, the bytes that are signed (sorted keys, fixed layout, ASCII only)."""
        data = dataclasses.asdict(self)
        return json.dumps(data, sort_keys=True, indent=2, separators=(",", ": "), ensure_ascii=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> SiteOverlay:
        """Parse and check an overlay dictionary on its own; any problem is a BundleError."""
        if not isinstance(data, dict):
            raise BundleError("an overlay must be a JSON object")
        if data.get("format") != OVERLAY_FORMAT:
            raise BundleError(f"unsupported overlay format {data.get('format')!r}")
        try:
            exits = data["exits"]
            if not isinstance(exits, dict):
                raise TypeError("exits must be an object")
            overlay = cls(
                model=_text(data["model"]),
                version=_integer(data["version"]),
                site=_text(data["site"]),
                exits={_text(tier): _exit(spec) for tier, spec in exits.items()},
                examples=_integer(data.get("examples", 0)),
                fitted_at=float(data.get("fitted_at", 0.0)),
                metrics={_text(k): float(v) for k, v in dict(data.get("metrics", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed overlay: {exc!r}") from None
        problems = []
        if overlay.version < 1:
            problems.append("version must be >= 1")
        if not SITE_NAME.fullmatch(overlay.site):
            problems.append(f"site must be 1-64 of [A-Za-z0-9_.-], got {overlay.site!r}")
        if overlay.examples < 0 or not math.isfinite(overlay.fitted_at):
            problems.append("examples must be >= 0 and fitted_at a finite time")
        for tier, spec in overlay.exits.items():
            if tier not in TIERS:
                problems.append(f"unknown tier {tier!r} (known: {', '.join(TIERS)})")
            if not (math.isfinite(spec.threshold) and spec.threshold >= 0):
                problems.append(f"{tier} exit needs a finite threshold >= 0, got {spec.threshold}")
            if not (math.isfinite(spec.temperature) and spec.temperature > 0):
                problems.append(f"{tier} exit needs a finite temperature > 0, got {spec.temperature}")
        if problems:
            raise BundleError("invalid overlay: " + "; ".join(problems))
        return overlay


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _exit(spec: Any) -> ExitSpec:
    if not isinstance(spec, dict):
        raise TypeError(f"an exit must be an object, got {spec!r}")
    return ExitSpec(
        threshold=float(spec["threshold"]),
        temperature=float(spec.get("temperature", 1.0)),
        score=_text(spec.get("score", "max_prob")),
    )


def check_overlay(overlay: SiteOverlay, manifest: Manifest) -> None:
    """Refuse (BundleError) an overlay that is not for ``manifest``: another model or version,
    a tier it has not, or an exit on another confidence score than the manifest's."""
    if overlay.model != manifest.name or overlay.version != manifest.version:
        raise BundleError(
            f"the overlay for site {overlay.site!r} is for model {overlay.model!r} v{overlay.version}, "
            f"not {manifest.name!r} v{manifest.version}"
        )
    tiers = {p.tier: p for p in manifest.partitions}
    for tier, spec in overlay.exits.items():
        if tier not in tiers:
            raise BundleError(f"the overlay changes the {tier!r} exit, which the manifest does not have")
        if spec.score != tiers[tier].exit.score:
            wanted = tiers[tier].exit.score
            raise BundleError(
                f"the overlay's {tier} exit thresholds {spec.score!r}, the manifest's {wanted!r}"
            )


def apply_overlay(manifest: Manifest, overlay: SiteOverlay | None) -> Manifest:
    """``manifest`` with ``overlay``'s exit settings in place of its own (itself when None).

    Pure: the manifest is not changed. An overlay that is not for this manifest is a
    BundleError (:func:`check_overlay`).
    """
    if overlay is None:
        return manifest
    check_overlay(overlay, manifest)
    partitions = tuple(
        dataclasses.replace(p, exit=overlay.exits[p.tier]) if p.tier in overlay.exits else p
        for p in manifest.partitions
    )
    return dataclasses.replace(manifest, partitions=partitions)


# ----------------------------------------------------------------------------- signing
def signature_path(path: str | Path) -> Path:
    """Where the detached signature of the overlay file ``path`` lives: ``<path>.sig``."""
    target = Path(path)
    return target.with_name(target.name + SIGNATURE_SUFFIX)


def sign_overlay(overlay_bytes: bytes, private_key: PrivateKeySource) -> bytes:
    """The content of an overlay's signature file for these exact bytes (the bundle format)."""
    key = load_private_key(private_key)
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(CONTEXT + overlay_bytes)).decode("ascii"),
    }
    return (json.dumps(record, sort_keys=True, indent=2) + "\n").encode()


def verify_overlay(overlay_bytes: bytes, signature: bytes, public_key: PublicKeySource) -> None:
    """Check a signature file's content over ``overlay_bytes`` with the trusted key, or SignatureError."""
    key = load_public_key(public_key)
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"an overlay signature is at most {MAX_SIGNATURE_BYTES} bytes")
    try:
        record = json.loads(signature.decode())
        algorithm, signer = record["algorithm"], record["key_id"]
        raw = base64.b64decode(record["signature"], validate=True)
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, binascii.Error) as exc:
        raise SignatureError(f"malformed overlay signature ({exc!r})") from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"unsupported overlay signature algorithm {algorithm!r}")
    if signer != key_id(key):
        raise SignatureError(f"the overlay was signed with key {signer!r}; this node trusts {key_id(key)!r}")
    try:
        key.verify(raw, CONTEXT + overlay_bytes)
    except InvalidSignature:
        raise SignatureError("the overlay's signature does not match: it was changed after signing") from None


def write_overlay(path: str | Path, overlay: SiteOverlay, private_key: PrivateKeySource) -> Path:
    """Write ``overlay`` (canonical JSON) to ``path`` and its signature beside it; returns ``path``.

    The signature is written first and the overlay last (each atomically), so a reader
    never sees a new overlay with no signature; one that reads between the two writes sees
    the old overlay with the new signature and refuses it, then reads again later.
    """
    content = overlay.to_json().encode()
    signature = sign_overlay(content, private_key)  # a bad key fails before anything is written
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(signature_path(target), signature)
    atomic_write(target, content)
    return target


def parse_overlay(content: bytes, signature: bytes | None, public_key: PublicKeySource) -> SiteOverlay:
    """An overlay from its bytes and its signature file's, verified before it is parsed."""
    if signature is None:
        raise SignatureError("the overlay is not signed: no signature file")
    if len(content) > MAX_OVERLAY_BYTES:
        raise BundleError(f"an overlay is at most {MAX_OVERLAY_BYTES} bytes")
    verify_overlay(content, signature, public_key)
    try:
        data = json.loads(content.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"the overlay is not valid JSON: {exc}") from None
    return SiteOverlay.from_dict(data)


def read_overlay(path: str | Path, public_key: PublicKeySource) -> SiteOverlay:
    """Read and verify the overlay file ``path`` (its signature ``<path>.sig``), for any manifest."""
    target = Path(path)
    content = _read(target, MAX_OVERLAY_BYTES, "overlay")
    if content is None:
        raise BundleError(f"no overlay file {target}")
    return parse_overlay(content, _read(signature_path(target), MAX_SIGNATURE_BYTES, "signature"), public_key)


def load_overlay(path: str | Path, public_key: PublicKeySource, manifest: Manifest) -> SiteOverlay:
    """The verified overlay at ``path`` if it is for ``manifest``; SignatureError or BundleError if not."""
    overlay = read_overlay(path, public_key)
    check_overlay(overlay, manifest)
    return overlay


def _read(path: Path, limit: int, what: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            content = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    if len(content) > limit:
        raise BundleError(f"{path}: larger than {limit} bytes, not an overlay {what}")
    return content


# ----------------------------------------------------------------------------- nodes
@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: ``overlay`` names a site overlay file (``edgecascade site thresholds`` writes
    it; its signature is ``<file>.sig``), verified with the node's verify key at start and on
    every model swap. A missing or refused one is logged and counted, and the node keeps the
    manifest's thresholds."""

    overlay: Path | None = None


class OverlayFile:
    """A node's configured overlay: read and verified again for each model version it serves."""

    def __init__(self, path: str | Path, public_key: PublicKeySource | None) -> None:
        if public_key is None:
            raise ConfigError("model.overlay needs the cloud's verify key: an overlay must be signed")
        self.path = Path(path)
        self.public_key = load_public_key(public_key)

    def load(self, manifest: Manifest, counters: Counters | None = None) -> SiteOverlay | None:
        """The overlay for ``manifest``, or None (logged, counted ``overlay_refused``) when it
        is missing, unsigned, forged, tampered or made for another model or version."""
        try:
            overlay = load_overlay(self.path, self.public_key, manifest)
        except EdgeCascadeError as exc:
            logger.warning(
                "site overlay %s refused for model v%d, keeping the manifest's thresholds: %s",
                self.path,
                manifest.version,
                exc,
            )
            if counters is not None:
                counters.add("overlay_refused")
            return None
        age = max(0.0, time.time() - overlay.fitted_at)
        logger.info(
            "site %s overlay applies to model v%d: exits %s (fitted on %d examples, %.0f s ago)",
            overlay.site,
            overlay.version,
            {tier: spec.threshold for tier, spec in overlay.exits.items()},
            overlay.examples,
            age,
        )
        if counters is not None:
            counters.add("overlay_applied")
        return overlay
