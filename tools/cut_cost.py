"""The cut-point cost model: which pair of cuts (device | gateway | cloud) is fastest for a link.

Pure Python and numpy over a measured :class:`Profile` (no TensorFlow), so a plan for
another link or other hardware is recomputed in milliseconds, and the model is tested on
hand-made profiles. :mod:`.cut_profile` measures a profile; :mod:`.planner` is
the ``edgecascade plan`` command.

The model is Neurosurgeon's (Kang et al., ASPLOS 2017) with early exits. For cuts
``c1 ≤ c2`` the device runs the trunk up to ``c1``, the gateway from ``c1`` to ``c2``, the
cloud the rest; an exit head runs on the tier that holds the trunk point it branches from,
and the inputs it answers go no further. Per input::

    expected_ms = device
                + to_gateway × (bytes(c1) / uplink + uplink RTT + gateway)
                + to_cloud   × (bytes(c2) / backhaul + backhaul RTT + cloud)

where each tier's time is its compute measured here times its speed factor, and
``to_gateway`` (``to_cloud``) is the share of inputs no exit on the device (or the
gateway) answered. The replies are a few dozen bytes and are not counted apart from the
round-trip times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.wire.codec import Encoding, encoded_size

TYPICAL_DEVICE_ID = "device-0001"
"""Device id assumed for the envelope header (its length is part of every message's bytes)."""
_NAMES = frozenset(e.value for e in Encoding)


@dataclass(frozen=True)
class CutPoint:
    """A trunk tensor the network can be cut after, and what it costs to get there and send it.

    ``bytes`` maps each applicable encoding to the envelope size of one input's tensor
    (header + tensor body); ``1bit`` is only present when the tensor is binarised.
    """

    name: str  # the Keras layer (or operation) that produces the tensor
    stage: str  # the stage model it lives in today: device, gateway or cloud
    shape: tuple[int, ...]  # one input's tensor, without the batch axis
    segment_ms: float  # median latency here of the trunk from the previous point to this one
    bytes: Mapping[str, int]
    binarised: bool = False
    current: str | None = None  # "cut1"/"cut2" where today's stages end


@dataclass(frozen=True)
class ExitPoint:
    """An early exit head: where it branches off the trunk and what it costs to run."""

    name: str
    position: int  # index of the CutPoint it branches from; -1: the input itself
    ms: float
    threshold: float  # on Profile.exit_score


@dataclass(frozen=True)
class Profile:
    """What :func:`plan_cuts` needs about a network, measured once on one machine.

    ``survival[k]`` is the share of inputs that none of the first ``k`` early exits (in
    trunk order) answers, so ``survival[0] == 1``.
    """

    points: tuple[CutPoint, ...]
    head_ms: float  # the last point to the final logits, always in the cloud
    exits: tuple[ExitPoint, ...]
    survival: tuple[float, ...]
    samples: int = 0  # inputs timed per segment
    exit_samples: int = 0  # inputs the exit rates were measured on
    header_bytes: int = 0  # envelope overhead included in every CutPoint.bytes value
    exit_score: str = "max_prob"  # the confidence score the exit thresholds apply to

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a profile needs at least one cut point")
        if len(self.survival) != len(self.exits) + 1 or not math.isclose(self.survival[0], 1.0):
            raise ValueError("survival needs one share per early exit after survival[0] == 1")
        positions = [e.position for e in self.exits]
        if positions != sorted(positions) or any(not -1 <= p < len(self.points) for p in positions):
            raise ValueError(f"exit positions {positions} are not in trunk order within the points")

    def index(self, name: str) -> int:
        """Position of the cut point called ``name``."""
        for i, point in enumerate(self.points):
            if point.name == name:
                return i
        raise KeyError(name)


@dataclass(frozen=True)
class Deployment:
    """Where the tiers run and how they are linked, relative to the machine that was profiled.

    Factors multiply the compute time measured here (8.0: eight times slower). Bandwidths
    are in Mbit/s, round-trip times in ms. Impossible values raise one :class:`ConfigError`
    naming every problem.
    """

    device_factor: float = 8.0  # a Raspberry Pi 4 class CPU, one thread
    gateway_factor: float = 1.0  # a Jetson-class gateway's CPU is about this machine
    cloud_factor: float = 0.5  # a server core
    uplink_mbps: float = 20.0  # device → gateway: Wi-Fi, what one client gets in practice
    uplink_ms: float = 5.0
    backhaul_mbps: float = 50.0  # gateway → cloud: a WAN uplink
    backhaul_ms: float = 40.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("device_factor", "gateway_factor", "cloud_factor", "uplink_mbps", "backhaul_mbps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name.replace('_', '-')} must be a positive number, got {value}")
        for name in ("uplink_ms", "backhaul_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name.replace('_', '-')} must be ≥ 0, got {value}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class PairCost:
    """One cut pair under one deployment; times in ms, bytes per input (expected over inputs)."""

    cut1: str
    cut2: str
    device_ms: float  # compute on the device, every input
    gateway_ms: float  # compute on the gateway, per input that reaches it
    cloud_ms: float  # compute in the cloud, per input that reaches it
    to_gateway: float  # share of inputs sent over the uplink
    to_cloud: float  # share of inputs sent over the backhaul
    uplink_bytes: float
    backhaul_bytes: float
    expected_ms: float
    current: bool = False


@dataclass(frozen=True)
class Plan:
    """Every cut pair's cost, the best pair, and today's pair (None if it is not a candidate)."""

    deployment: Deployment
    encodings: Mapping[str, str]
    pairs: tuple[PairCost, ...]
    best: PairCost
    current: PairCost | None


def envelope_overhead(device_id: str = TYPICAL_DEVICE_ID) -> int:
    """Bytes an envelope adds to its body (header + body length) for messages from ``device_id``."""
    header = wire.Header(wire.MessageType.INFER_REQUEST, device_id, model_version=1)
    return len(wire.envelope_to_bytes(wire.Envelope(header, b"")))


def cut_bytes(shape: tuple[int, ...], binarised: bool, overhead: int) -> dict[str, int]:
    """Envelope bytes of one input's tensor of ``shape`` under each encoding that applies to it."""
    return {
        enc.value: encoded_size(enc, shape) + overhead
        for enc in Encoding
        if enc is not Encoding.BITS or binarised
    }


def survival_shares(confidences: Sequence[np.ndarray], thresholds: Sequence[float]) -> tuple[float, ...]:
    """Share of inputs left after each prefix of early exits (an exit answers where score ≥ threshold).

    ``confidences[k]`` holds every input's confidence score at early exit ``k`` (trunk order).
    """
    if len(confidences) != len(thresholds):
        raise ValueError("need one threshold per early exit")
    n = len(confidences[0]) if confidences else 0
    pending = np.ones(n, dtype=bool)
    shares = [1.0]
    for conf, threshold in zip(confidences, thresholds, strict=True):
        pending &= np.asarray(conf) < threshold
        shares.append(float(pending.mean()) if n else 1.0)
    return tuple(shares)


def default_encoding(point: CutPoint) -> str:
    """1 bit per value where the cut is binarised (exact there), else int8."""
    return Encoding.BITS.value if point.binarised else Encoding.INT8.value


def resolve_encodings(
    points: Sequence[CutPoint],
    everywhere: str | None = None,
    per_cut: Mapping[str, str] | None = None,
    preferred: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Each cut point's encoding, first that applies of: ``per_cut[name]``, ``everywhere``,
    ``preferred[name]`` (e.g. what the model was trained for), :func:`default_encoding`.

    An unknown cut name or encoding, or 1 bit on a cut that is not binarised, is a
    :class:`ConfigError` naming every problem.
    """
    per_cut, preferred = dict(per_cut or {}), dict(preferred or {})
    names = [p.name for p in points]
    requested = sorted({e for e in (everywhere, *per_cut.values()) if e is not None} - _NAMES)
    problems = [f"unknown encoding {e!r} (encodings: {', '.join(sorted(_NAMES))})" for e in requested]
    problems += [f"unknown cut {name!r} (cuts: {', '.join(names)})" for name in per_cut if name not in names]
    encodings: dict[str, str] = {}
    for point in points:
        choice = per_cut.get(point.name)
        if choice in _NAMES and choice not in point.bytes:
            problems.append(f"{choice} does not apply to cut {point.name!r}: its values are not all ±1")
        options = [e for e in (choice, everywhere, preferred.get(point.name)) if e and e in point.bytes]
        encodings[point.name] = options[0] if options else default_encoding(point)
    if problems:
        raise ConfigError(problems)
    return encodings


def _transfer_ms(size: int, mbps: float) -> float:
    return size * 8 / (mbps * 1000.0)


def pair_cost(
    profile: Profile, deployment: Deployment, encodings: Mapping[str, str], i: int, j: int
) -> PairCost:
    """The cost of cutting after ``points[i]`` (device | gateway) and ``points[j]`` (gateway | cloud)."""
    if not 0 <= i <= j < len(profile.points):
        raise ValueError(f"need 0 ≤ c1 ≤ c2 < {len(profile.points)}, got {i}, {j}")
    seg = [p.segment_ms for p in profile.points]
    exits_dev = [e for e in profile.exits if e.position <= i]
    exits_gw = [e for e in profile.exits if i < e.position <= j]
    exits_cloud = [e for e in profile.exits if e.position > j]
    device = (sum(seg[: i + 1]) + sum(e.ms for e in exits_dev)) * deployment.device_factor
    gateway = (sum(seg[i + 1 : j + 1]) + sum(e.ms for e in exits_gw)) * deployment.gateway_factor
    cloud = (sum(seg[j + 1 :]) + profile.head_ms + sum(e.ms for e in exits_cloud)) * deployment.cloud_factor
    to_gateway = profile.survival[len(exits_dev)]
    to_cloud = profile.survival[len(exits_dev) + len(exits_gw)]
    c1, c2 = profile.points[i], profile.points[j]
    up, back = c1.bytes[encodings[c1.name]], c2.bytes[encodings[c2.name]]
    expected = (
        device
        + to_gateway * (_transfer_ms(up, deployment.uplink_mbps) + deployment.uplink_ms + gateway)
        + to_cloud * (_transfer_ms(back, deployment.backhaul_mbps) + deployment.backhaul_ms + cloud)
    )
    return PairCost(
        cut1=c1.name,
        cut2=c2.name,
        device_ms=device,
        gateway_ms=gateway,
        cloud_ms=cloud,
        to_gateway=to_gateway,
        to_cloud=to_cloud,
        uplink_bytes=to_gateway * up,
        backhaul_bytes=to_cloud * back,
        expected_ms=expected,
        current=c1.current == "cut1" and c2.current == "cut2",
    )


def plan_cuts(profile: Profile, deployment: Deployment, encodings: Mapping[str, str] | None = None) -> Plan:
    """Cost every cut pair ``c1 ≤ c2`` and pick the one with the lowest expected latency.

    Ties go to fewer bytes on the links, then to the earlier pair.
    """
    chosen = dict(encodings) if encodings is not None else resolve_encodings(profile.points)
    n = len(profile.points)
    pairs = tuple(pair_cost(profile, deployment, chosen, i, j) for i in range(n) for j in range(i, n))
    best = min(pairs, key=lambda p: (p.expected_ms, p.uplink_bytes + p.backhaul_bytes))
    current = next((p for p in pairs if p.current), None)
    return Plan(deployment, chosen, pairs, best, current)
