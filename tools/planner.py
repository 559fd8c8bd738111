"""``edgecascade plan``: measure where the network can be cut, then pick the cuts for a deployment.

Profiling (:mod:`edgecascade.tools.cut_profile`) times every trunk segment and exit head of a trained
Keras checkpoint here, in LiteRT, and measures the exit rates on test images; the cost
model (:mod:`edgecascade.tools.cut_cost`) then scales the compute to each tier's hardware, adds the
links, and ranks every cut pair by expected latency per input. Bad arguments are refused
before the model is even loaded (exit code 2), with every problem in one message.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.wire.codec import Encoding
from edgecascade.tools.cut_cost import Deployment, PairCost, Plan, Profile, plan_cuts, resolve_encodings

DEFAULT_SAMPLES = 200
_DEPLOYMENT_HELP = {
    "device_factor": "device compute time / this machine's",
    "gateway_factor": "gateway compute time / this machine's",
    "cloud_factor": "cloud compute time / this machine's",
    "uplink_mbps": "device → gateway bandwidth, Mbit/s",
    "uplink_ms": "device → gateway round-trip time, ms",
    "backhaul_mbps": "gateway → cloud bandwidth, Mbit/s",
    "backhaul_ms": "gateway → cloud round-trip time, ms",
}


def add_plan_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], default_checkpoint: Path
) -> None:
    """Register ``plan`` on the ``edgecascade`` subcommand parser."""
    defaults = Deployment()
    p = sub.add_parser(
        "plan",
        help="profile the cut points here and pick the cuts for a device, links and a cloud",
        description=(
            "Times each trunk segment of a trained checkpoint on this machine (LiteRT, one thread), "
            "measures exit rates on test images, and ranks every pair of cuts by expected latency "
            "per input. Defaults: a Raspberry Pi 4 class device, a Jetson-class gateway on Wi-Fi, "
            "a WAN link to a server."
        ),
    )
    p.add_argument(
        "--checkpoint", default=str(default_checkpoint), help="Keras checkpoint dir (default %(default)s)"
    )
    hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}  # the old spellings, still accepted
    p.add_argument("--model", dest="checkpoint", **hidden)  # type: ignore[arg-type]
    p.add_argument("--data", help=".npz with x_test (or x) images (default: Fashion-MNIST's test split)")
    p.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help="inputs timed per segment (default %(default)s)"
    )
    for field, text in _DEPLOYMENT_HELP.items():
        flag = "--" + field.replace("_", "-")
        p.add_argument(
            flag, type=float, default=getattr(defaults, field), help=f"{text} (default %(default)s)"
        )
    p.add_argument(
        "--encoding",
        action="append",
        default=[],
        metavar="[CUT=]ENC",
        help="float32, float16, int8 or 1bit, for every cut or for the named one (repeatable); "
        "default: the trained cuts' own encodings, else 1bit where the cut is binarised, else int8",
    )
    p.add_argument("--top", type=int, help="print only the N fastest pairs, fastest first")
    p.add_argument("--report", metavar="PATH", help="also write the profile and every pair's cost as JSON")
    p.add_argument("--json", dest="report", **hidden)  # type: ignore[arg-type]
    p.set_defaults(func=run_plan)


def parse_encodings(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``(encoding for every cut, {cut: encoding})`` from ``--encoding`` values ``ENC`` or ``CUT=ENC``."""
    everywhere: str | None = None
    per_cut: dict[str, str] = {}
    for value in values:
        cut, sep, encoding = value.rpartition("=")
        if sep:
            per_cut[cut] = encoding
        else:
            everywhere = encoding
    return everywhere, per_cut


def _deployment(args: argparse.Namespace) -> Deployment:
    return Deployment(**{field: getattr(args, field) for field in _DEPLOYMENT_HELP})


def _check_args(args: argparse.Namespace) -> Deployment:
    """The deployment, or one :class:`ConfigError` listing every impossible argument."""
    problems = []
    deployment = None
    try:
        deployment = _deployment(args)
    except ConfigError as exc:
        problems += exc.problems
    everywhere, per_cut = parse_encodings(args.encoding)
    known = [e.value for e in Encoding]
    problems += [
        f"unknown encoding {e!r} (encodings: {', '.join(known)})"
        for e in (everywhere, *per_cut.values())
        if e is not None and e not in known
    ]
    if args.samples < 1:
        problems.append(f"--samples must be ≥ 1, got {args.samples}")
    if args.top is not None and args.top < 1:
        problems.append(f"--top must be ≥ 1, got {args.top}")
    if not Path(args.checkpoint).is_dir():
        problems.append(f"no Keras checkpoint directory {args.checkpoint}; run 'edgecascade train' first")
    if problems or deployment is None:
        raise ConfigError(problems)
    return deployment


def _test_images(data: str | None) -> np.ndarray:
    from edgecascade.training.data import load_fashion_mnist, load_npz

    dataset = load_npz(Path(data)) if data else load_fashion_mnist()
    return dataset.x_test


def _stderr(line: str) -> None:
    print(f"edgecascade plan: {line}", file=sys.stderr, flush=True)


def _trained_encodings(trained: Any, profile: Profile) -> dict[str, str]:
    """The encodings the model was trained for at today's cuts (``cut1_encoding`` …), where they apply."""
    chosen = {}
    for point in profile.points:
        configured = (
            getattr(trained.config.model, f"{point.current}_encoding", None) if point.current else None
        )
        if configured is not None and str(configured) in point.bytes:
            chosen[point.name] = str(configured)
    return chosen


def run_plan(args: argparse.Namespace) -> int:
    """Check the arguments, profile the checkpoint, print the ranked pairs and write the JSON."""
    deployment = _check_args(args)  # before TensorFlow is imported: a typo costs nothing
    everywhere, per_cut = parse_encodings(args.encoding)

    from edgecascade.tools.cut_profile import profile_trunk, trace_trunk
    from edgecascade.training.train import load_trained

    trained = load_trained(Path(args.checkpoint))
    trunk = trace_trunk((trained.device, trained.gateway, trained.cloud))
    unknown = [
        f"unknown cut {name!r} (cuts: {', '.join(trunk.names)})"
        for name in per_cut
        if name not in trunk.names
    ]
    if unknown:
        raise ConfigError(unknown)
    images = _test_images(args.data)
    if tuple(images.shape[1:]) != tuple(trained.input_spec.shape):
        raise ConfigError(f"images are {images.shape[1:]}, the model takes {tuple(trained.input_spec.shape)}")
    profile = profile_trunk(trunk, trained, images, samples=args.samples, progress=_stderr)
    encodings = resolve_encodings(profile.points, everywhere, per_cut, _trained_encodings(trained, profile))
    plan = plan_cuts(profile, deployment, encodings)
    print(format_plan(plan, profile, top=args.top))
    if args.report:
        from edgecascade.tools.report import write_json

        write_json(Path(args.report), plan_to_dict(plan, profile))
        print(f"plan written to {args.report}")
    return 0


def plan_to_dict(plan: Plan, profile: Profile) -> dict[str, Any]:
    """The profile, the deployment, the encodings and every pair's cost, JSON-ready."""
    return {"profile": asdict(profile), **asdict(plan)}


def _points_table(plan: Plan, profile: Profile) -> list[str]:
    width = max(len(p.name) for p in profile.points)
    lines = [
        f"  {'cut point':<{width}}  {'stage':<8} {'shape':<12} {'encoding':<8} {'bytes':>7}  {'ms here':>8}"
    ]
    for p in profile.points:
        enc = plan.encodings[p.name]
        mark = f"  ({p.current})" if p.current else ""
        shape = "x".join(map(str, p.shape))
        size = p.bytes[enc]
        lines.append(
            f"  {p.name:<{width}}  {p.stage:<8} {shape:<12} {enc:<8} {size:>7}  {p.segment_ms:>8.4f}{mark}"
        )
    return lines


def _exits_line(profile: Profile) -> str:
    """Where each early exit branches off and what share of all inputs it answers."""
    survival = profile.survival
    parts = [
        f"{e.name} at {profile.points[e.position].name if e.position >= 0 else 'the input'} "
        f"({profile.exit_score} ≥ {e.threshold:g}) answers {survival[k] - survival[k + 1]:.1%}"
        for k, e in enumerate(profile.exits)
    ]
    return "  exits: " + ("; ".join(parts) if parts else "none before the final one")


def _pair_row(pair: PairCost, plan: Plan, width: int) -> str:
    mark = ("*" if pair is plan.best else " ") + ("=" if pair.current else " ")
    return (
        f"{mark} {pair.cut1:<{width}} {pair.cut2:<{width}} {pair.device_ms:>9.3f} {pair.gateway_ms:>9.3f} "
        f"{pair.cloud_ms:>9.3f} {pair.to_gateway:>6.1%} {pair.to_cloud:>7.1%} {pair.uplink_bytes:>9.1f} "
        f"{pair.backhaul_bytes:>9.1f} {pair.expected_ms:>9.3f}"
    )


def format_plan(plan: Plan, profile: Profile, top: int | None = None) -> str:
    """The cut points, then one row per cut pair (``*`` best, ``=`` today's cuts), then the verdict."""
    d = plan.deployment
    lines = [
        f"{len(profile.points)} cut points, timed here on {profile.samples} inputs each (LiteRT, 1 thread); "
        f"exit rates on {profile.exit_samples} inputs; envelope header {profile.header_bytes} bytes",
        *_points_table(plan, profile),
        _exits_line(profile),
        "",
        f"device x{d.device_factor:g}, gateway x{d.gateway_factor:g}, cloud x{d.cloud_factor:g}; "
        f"uplink {d.uplink_mbps:g} Mbit/s + {d.uplink_ms:g} ms, backhaul {d.backhaul_mbps:g} Mbit/s + "
        f"{d.backhaul_ms:g} ms",
        "tier ms: per input the tier runs; bytes and expect ms: expected per input; * best, = today",
    ]
    width = max(6, *(len(p.name) for p in profile.points))
    lines.append(
        f"   {'cut1':<{width}} {'cut2':<{width}} {'device ms':>9} {'gw ms':>9} {'cloud ms':>9} {'->gw':>6} "
        f"{'->cloud':>7} {'up B/in':>9} {'back B/in':>9} {'expect ms':>9}"
    )
    pairs = sorted(plan.pairs, key=lambda p: p.expected_ms)[:top] if top else plan.pairs
    lines += [_pair_row(pair, plan, width) for pair in pairs]
    best = plan.best
    lines.append(f"best: cut after {best.cut1} and {best.cut2}, {best.expected_ms:.3f} ms expected per input")
    if plan.current is not None:
        now = plan.current
        lines.append(
            f"today: cut after {now.cut1} and {now.cut2}, {now.expected_ms:.3f} ms expected per input"
        )
    return "\n".join(lines)
