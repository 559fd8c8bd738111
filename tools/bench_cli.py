"""``edgecascade bench …``: the benchmarks, each writing a JSON report and printing a short table."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecascade.device_sdk.cache import load_embedder
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.tools import (
    bench_cloud,
    bench_gateway,
    bench_load,
    bench_metrics,
    bench_scaleout,
    bench_soak,
    cache_cli,
)


def _bench_accuracy(args: argparse.Namespace) -> int:
    from edgecascade.tools.bench_accuracy import (
        bench_accuracy,
        format_accuracy_report,
        open_bundles,
        plot_sweep,
    )
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    models_bundle = Path(args.models_bundle) if args.models_bundle else None
    bundle, other, hint = open_bundles(Path(args.model), models_bundle)
    if hint:
        print(hint)
    data = load_fashion_mnist()
    n = args.n or len(data.x_test)
    report = bench_accuracy(bundle, data.x_test[:n], data.y_test[:n], other)
    plot = Path(args.plot or (Path(args.report).with_suffix(".png") if args.report else "bench-accuracy.png"))
    plot_sweep(report, plot)
    report["plot"] = str(plot)
    print(format_accuracy_report(report))
    print_report(f"accuracy against offload share plotted to {plot}", report, args.report)
    return 0


def _bench_drift(args: argparse.Namespace) -> int:
    from edgecascade.tools.bench_drift import DriftOptions, bench_drift, format_drift_report
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    options = DriftOptions(
        before=args.before,
        after=args.after,
        original=args.original,
        epochs=args.epochs,
        replay_size=args.replay_size,
        test_size=args.test_size,
        val_size=args.val_size,
        min_holdout=args.min_holdout,
        min_gain=args.min_gain,
        tolerance=args.tolerance,
        audit_rate=args.audit_rate,
        progress=not args.no_progress,
    )
    data = load_fashion_mnist()
    workdir = Path(args.workdir) if args.workdir else None
    report = bench_drift(Path(args.model), Path(args.checkpoint), data.x_test, data.y_test, options, workdir)
    print_report(format_drift_report(report), report, args.report)
    return 0 if report["job"]["state"] == "succeeded" else 1


def _bench_cache(args: argparse.Namespace) -> int:
    from edgecascade.tools.bench_cache import bench_index, format_cache_report, index_crossover
    from edgecascade.tools.bench_stream import bench_cache_stream
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    model = Path(args.model)
    bundle = load_bundle(model)
    if any(bundle.manifest.partition(t).cache is None for t in ("device", "gateway")):
        print("the bundle has no calibrated cache settings; calibrating on validation data")
        cache_cli.calibrate(model)
        bundle = load_bundle(model)
    data = load_fashion_mnist()
    features = run_partitions(bundle, data.x_train).features[0]  # the device cache's keys
    sizes = tuple(int(s) for s in args.sizes.split(","))
    index = bench_index(load_embedder(bundle, "device")(features), sizes=sizes)
    report = {
        "index": index,
        "index_crossover": index_crossover(index),
        "stream": bench_cache_stream(
            model, data.x_test, data.y_test, n=args.n, repeat_share=args.repeat_share, seed=args.seed
        ),
    }
    print_report(format_cache_report(report), report, args.report)
    return 0


def _bench_federated(args: argparse.Namespace) -> int:
    import tempfile

    from edgecascade.tools.bench_federated import FederatedOptions, bench_federated, format_federated_report
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    options = FederatedOptions(
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        strategy=args.strategy,
        compression=args.compression,
        downlink=args.downlink,
        round_timeout=args.round_timeout,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="bench-federated-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = bench_federated(load_fashion_mnist(), workdir, options, progress=not args.no_progress)
    print_report(format_federated_report(report), report, args.report)
    return 0


def _bench_novelty(args: argparse.Namespace) -> int:
    import tempfile

    from edgecascade.tools.bench_novelty import NoveltyOptions, bench_novelty, format_novelty_report
    from edgecascade.tools.bench_novelty_classes import JobOptions
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    options = NoveltyOptions(
        unknown_classes=tuple(c.strip() for c in args.unknown_classes.split(",")),
        unknown_share=args.unknown_share,
        epochs=args.epochs,
        seed=args.seed,
        train_subset=args.subset,
        learn=not args.no_retrain,
        job=JobOptions(
            epochs=args.retrain_epochs, replay_size=args.replay_size, hard_weight=args.hard_weight
        ),
    )
    with tempfile.TemporaryDirectory(prefix="bench-novelty-") as tmp:
        workdir = Path(args.workdir or tmp)
        try:
            report = bench_novelty(load_fashion_mnist(), workdir, options, progress=not args.no_progress)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    print_report(format_novelty_report(report), report, args.report)
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], default_model: str, default_checkpoint: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``bench`` and its subcommands; returns them so other modules add theirs."""
    p = sub.add_parser("bench", help="benchmarks; results as JSON")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser(
        "cache", help="exact vs HNSW index by size, and a stream of repeats through the cascade"
    )
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument(
        "--sizes", default="1000,5000,10000,20000,50000,100000", help="index sizes (default %(default)s)"
    )
    p.add_argument("--n", type=int, default=5000, help="stream length (default %(default)s)")
    p.add_argument("--repeat-share", type=float, default=0.3, help="share of near-duplicates (%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_bench_cache)
    p = bench.add_parser(
        "accuracy",
        help="device-only, gateway-only, cloud-only and the cascade on the test set, partitioned "
        "and models mode side by side; sweep",
    )
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument(
        "--models-bundle",
        help="the bundle of the other inference mode (default artifacts/models; skipped if missing)",
    )
    p.add_argument("--report", help="write the JSON report here (the plot beside it, as .png)")
    p.add_argument("--plot", help="where to save the accuracy against offload share plot (PNG)")
    p.add_argument("--n", type=int, default=0, help="use the first N test images (default: all)")
    p.set_defaults(func=_bench_accuracy)
    p = bench.add_parser(
        "federated", help="collaborative training over 8 label-skewed sites, with sites killed and slow"
    )
    p.add_argument("--rounds", type=int, default=8, help="federated rounds (default %(default)s)")
    p.add_argument(
        "--local-epochs", type=int, default=1, help="epochs per site per round (default %(default)s)"
    )
    p.add_argument(
        "--strategy",
        default="fedavg",
        choices=("fedavg", "fedprox", "trimmed_mean", "median"),
        help="aggregation",
    )
    p.add_argument(
        "--compression", default="int8", choices=("none", "float16", "int8"), help="update encoding"
    )
    p.add_argument(
        "--downlink", default="float16", choices=("float32", "float16"), help="how the model goes down"
    )
    p.add_argument(
        "--round-timeout", type=float, default=240.0, help="seconds a round waits (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the run's files here (default: a temporary directory)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_bench_federated)

    p = bench.add_parser(
        "novelty", help="train without some classes, stream them in: how well unknown inputs are told"
    )
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument(
        "--unknown-classes", default="Bag,Ankle boot", help="classes held out of training (%(default)s)"
    )
    p.add_argument("--unknown-share", type=float, default=0.1, help="their share of the stream (%(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (%(default)s)")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the trained model here (default: a temporary directory)")
    p.add_argument(
        "--no-retrain", action="store_true", help="stop after scoring: no grouping, naming or retraining"
    )
    p.add_argument("--retrain-epochs", type=int, default=5, help="the retraining job's epochs (%(default)s)")
    p.add_argument(
        "--replay-size", type=int, default=12000, help="original images the job replays (%(default)s)"
    )
    p.add_argument(
        "--hard-weight", type=float, default=10.0, help="loss weight of a labelled example (%(default)s)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_bench_novelty)
    p = bench.add_parser(
        "drift", help="a shifted stream through the live stack: before, retrain on it, roll out, after"
    )
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--checkpoint", default=default_checkpoint, help="its Keras checkpoint (%(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--workdir", help="keep the stack's state and logs here (default: a temporary directory)")
    p.add_argument("--before", type=int, default=2000, help="shifted images before retraining (%(default)s)")
    p.add_argument("--after", type=int, default=2000, help="fresh shifted images after it (%(default)s)")
    p.add_argument("--original", type=int, default=10000, help="original test images, offline (%(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (%(default)s)")
    p.add_argument("--replay-size", type=int, default=12000, help="original images replayed (%(default)s)")
    p.add_argument(
        "--test-size", type=int, default=5000, help="original test images of the gate (%(default)s)"
    )
    p.add_argument(
        "--val-size", type=int, default=3000, help="validation images for calibration (%(default)s)"
    )
    p.add_argument("--min-holdout", type=int, default=20, help="the gate's minimum held-out examples")
    p.add_argument("--min-gain", type=float, default=0.5, help="the gate's minimum gain in points")
    p.add_argument("--tolerance", type=float, default=1.0, help="points an exit may lose on original data")
    p.add_argument(
        "--audit-rate",
        type=float,
        default=0.1,
        help="share of inputs the device keeps at random (%(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_bench_drift)
    bench_gateway.register(bench, default_model)
    bench_load.register(bench, default_model)
    bench_cloud.register(bench, default_model)
    bench_metrics.register(bench, default_model)
    bench_scaleout.register(bench, default_model)
    bench_soak.register(bench, default_model)
    return bench
