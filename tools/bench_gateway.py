"""``edgecascade bench gateway``: the gateway's request path in one process, µs per request.

Builds encrypted requests as devices would (cut-1 features of test images, sealed with a
throw-away device key), then times :meth:`GatewayService.decide` on micro-batches of the
daemon's size and :meth:`GatewayService.forward` on what it forwards, against a stub cloud
that answers at once. So the number is the gateway's own work per request: parse, decrypt
and replay check, partition 2, exit, cache, the cloud's envelope, the reply sealed; no
broker and no network (those are the live stack's, not this path's).
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import open_cache
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import DeviceCrypto, device_pair_keys
from edgecascade.edge_gateway.cloud_link import CloudLink
from edgecascade.edge_gateway.crypto import GatewayCrypto, GatewayKeyring
from edgecascade.edge_gateway.messages import Message
from edgecascade.edge_gateway.replay import ReplayWindows
from edgecascade.edge_gateway.service import Forward, GatewayService

if TYPE_CHECKING:
    from edgecascade.edge_gateway.shared_replay import SharedReplayStore

DEVICE = "bench-device"


class EchoCloud(CloudLink):
    """Answers every forwarded request at once with a fixed result: the cloud costs nothing here."""

    def __init__(self, classes: int) -> None:
        probs = np.full(classes, 0.5 / classes, np.float32)
        probs[0] += 0.5
        self._body = wire.encode_result(wire.Result(0, probs, wire.Tier.CLOUD))

    def infer(self, envelope: bytes) -> bytes:
        header = wire.envelope_from_bytes(envelope).header
        return wire.envelope_to_bytes(wire.Envelope(header.reply(wire.MessageType.RESULT), self._body))


def sealed_requests(
    bundle: Bundle, images: np.ndarray, windows: ReplayWindows | None = None
) -> tuple[GatewayCrypto, Callable[[], list[Message]]]:
    """A gateway's crypto, and the images as one device sends them to it (features, sealed).

    Each call of the function seals them again with fresh sequence numbers: the gateway
    refuses replays.
    """
    gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    keyring = GatewayKeyring(gateway_key)
    keyring.add(DEVICE, 1, device_key.public_key())
    device = DeviceCrypto(DEVICE, {1: device_pair_keys(device_key, gateway_key.public_key(), DEVICE, 1)})
    features = run_partitions(bundle, images).features[0]  # cut 1, or in the models mode the input
    bodies = [codec.encode_features(f, bundle.manifest.partition("device").encoding) for f in features]
    seq = itertools.count(1)
    version = bundle.manifest.version

    def requests() -> list[Message]:
        header = functools.partial(wire.Header, wire.MessageType.INFER_REQUEST, DEVICE, version)
        return [Message(device.seal(wire.Envelope(header(next(seq)), body)), DEVICE) for body in bodies]

    return GatewayCrypto(keyring, window=1024, windows=windows), requests


def bench_gateway(
    bundle: Bundle,
    images: np.ndarray,
    *,
    batch: int = 32,
    runs: int = 5,
    cache: bool = False,
    replay_shared: str = "",
) -> dict[str, Any]:
    """Median µs per request over ``runs`` passes of every image through the gateway's request path.

    With ``replay_shared`` (a database URL) the replay windows are kept there, as a share group's.
    """
    windows: SharedReplayStore | None = None
    if replay_shared:
        from edgecascade.edge_gateway.shared_replay import SharedReplayStore  # SQLAlchemy: only here

        windows = SharedReplayStore(replay_shared, 1024)
    crypto, requests = sealed_requests(bundle, images, windows)
    service = GatewayService(
        bundle,
        EchoCloud(len(bundle.manifest.classes)),
        crypto=crypto,
        cache=open_cache(bundle, "gateway") if cache else None,
    )

    def serve(messages: list[Message]) -> int:
        replies = 0
        for start in range(0, len(messages), batch):
            for decision in service.decide(messages[start : start + batch]):
                reply = service.forward(decision) if isinstance(decision, Forward) else decision
                replies += reply is not None
        return replies

    serve(requests()[:batch])  # the first calls pay for set-up, not per request
    per_request = []
    for _ in range(runs):
        messages = requests()
        started = time.perf_counter()
        replies = serve(messages)
        per_request.append((time.perf_counter() - started) / len(messages) * 1e6)
        assert replies == len(messages), "every request is answered"
    crypto.close()
    counters = dict(service.counters)
    served = counters.get("requests", 0)
    return {
        "n": len(images),
        "batch": batch,
        "runs": runs,
        "cache": cache,
        "replay": windows.url if windows is not None else "memory",
        "us_per_request": round(statistics.median(per_request), 1),
        "us_per_request_runs": [round(us, 1) for us in per_request],
        "share": {
            key.removeprefix("answered_"): round(value / served, 4)
            for key, value in sorted(counters.items())
            if key.startswith("answered_")
        },
        "forwarded_share": round(counters.get("forwarded", 0) / served, 4),
        "bytes_in_per_request": round(counters.get("bytes_in", 0) / served, 1),
    }


def format_gateway_report(report: dict[str, Any]) -> str:
    runs = ", ".join(f"{us:.0f}" for us in report["us_per_request_runs"])
    share = ", ".join(f"{tier} {value:.1%}" for tier, value in report["share"].items())
    return "\n".join(
        [
            f"gateway request path: {report['us_per_request']:.1f} µs per request "
            f"(median of {report['runs']} runs of {report['n']}: {runs}), "
            f"micro-batches of {report['batch']}, cache {'on' if report['cache'] else 'off'}, "
            f"replay windows in {report.get('replay', 'memory')}",
            f"answered: {share}; {report['bytes_in_per_request']:.0f} bytes in per request",
        ]
    )


def _run(args: Any) -> int:
    from edgecascade.device_sdk.model.bundle import load_bundle
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    images = load_fashion_mnist().x_test[: args.n]
    report = bench_gateway(
        load_bundle(args.model),
        images,
        batch=args.batch,
        runs=args.runs,
        cache=args.cache,
        replay_shared=args.replay_shared,
    )
    text = format_gateway_report(report)
    if args.replay_shared:  # and the replay check alone: local windows against the shared store
        from edgecascade.edge_gateway.shared_replay import SharedReplayStore
        from edgecascade.tools.bench_replay import bench_replay, format_replay_report

        report["replay_check"] = bench_replay({"shared": lambda: SharedReplayStore(args.replay_shared, 1024)})
        text += "\n" + format_replay_report(report["replay_check"])
    print_report(text, report, args.report)
    return 0


def register(bench: Any, default_model: str) -> None:
    """Add ``gateway`` to ``edgecascade bench``."""
    p = bench.add_parser("gateway", help="the gateway's request path in one process: µs per request")
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--n", type=int, default=2000, help="test images per run (default %(default)s)")
    p.add_argument("--runs", type=int, default=5, help="timed runs, the median reported (%(default)s)")
    p.add_argument("--batch", type=int, default=32, help="micro-batch size, as the daemon's max_batch")
    p.add_argument("--cache", action="store_true", help="with the gateway cache")
    p.add_argument(
        "--replay-shared",
        default="",
        metavar="URL",
        help="keep the replay windows in this database (sqlite:///file or postgresql://...)",
    )
    p.set_defaults(func=_run)
