"""The ``edgecascade`` command line: one entry point, one subcommand per job.

Every subcommand is ``main(argv) -> int``-testable. Exit codes are those of
:mod:`edgecascade.device_sdk.errors`: 0 success, 1 failure, 2 bad usage or configuration, 3 model
problems, 4 broker or another tier unreachable. A flag means one thing in every subcommand:
``--model`` is a bundle directory, ``--checkpoint`` a Keras checkpoint, ``--report`` a JSON
report to write, ``--config`` the command's settings file, ``--out`` the directory it writes.
``gateway`` and ``cloud`` hand their arguments to the daemons' own parsers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgecascade.device_sdk.errors import ConfigError, EdgeCascadeError, exit_code
from edgecascade.device_sdk.model.bundle import Manifest
from edgecascade.tools import (
    bench_cli,
    broker_cli,
    cache_cli,
    certs_cli,
    federated_cli,
    retrain_cli,
    security_cli,
    site_cli,
    unknown_cli,
)

if TYPE_CHECKING:
    from edgecascade.training.data import Dataset

DEFAULT_MODEL = Path("artifacts/model")
DEFAULT_CHECKPOINT = Path("artifacts/checkpoint")
DEFAULT_LARGE = Path("artifacts/large")
DEFAULT_MODELS = Path("artifacts/models")  # the models mode's bundle
DEFAULT_MODELS_CHECKPOINT = Path("artifacts/models-checkpoint")
DAEMONS = ("gateway", "cloud")  # their arguments go to the daemons' own parsers


def _dataset(npz: str | None) -> Dataset:
    """The user's ``.npz`` dataset, or Fashion-MNIST."""
    from edgecascade.training.data import load_fashion_mnist, load_npz

    return load_npz(Path(npz)) if npz else load_fashion_mnist()


def _train_large(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edgecascade.training.config import load_train_config
    from edgecascade.training.large import LargeConfig, train_large

    if args.quick or args.teacher:
        raise ConfigError("--preset large takes no --quick or --teacher")
    config = load_train_config(args.config, LargeConfig()) if args.config else LargeConfig()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("train_subset", args.subset)) if v is not None}
    try:
        config = replace(config, **overrides)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = Path(args.out if args.out != str(DEFAULT_MODEL) else DEFAULT_LARGE)
    large = train_large(config, _dataset(args.data), progress=True)
    large.save(out)
    print(
        f"large model saved to {out} ({large.model.count_params():,} parameters, {large.train_seconds:.0f} s)"
    )
    for key, value in sorted(large.metrics.items()):
        print(f"  {key}: {value:.4f}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from edgecascade.training.config import TrainConfig, load_train_config
    from edgecascade.training.export import train_and_export

    if args.preset == "large":
        return _train_large(args)
    config = TrainConfig.quick() if args.quick else TrainConfig()
    if args.config:
        config = load_train_config(args.config, config)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("train_subset", args.subset)) if v is not None}
    if overrides:
        from dataclasses import replace

        try:
            config = replace(config, **overrides)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if args.preset == "models":  # its own defaults: the partitioned bundle stays where it is
        args.out = str(DEFAULT_MODELS) if args.out == str(DEFAULT_MODEL) else args.out
        args.checkpoint = (
            str(DEFAULT_MODELS_CHECKPOINT) if args.checkpoint == str(DEFAULT_CHECKPOINT) else args.checkpoint
        )
    large = None
    if args.preset == "models" or args.teacher:
        from edgecascade.training.large import load_large

        large = load_large(args.teacher or DEFAULT_LARGE)
    manifest = train_and_export(
        config,
        Path(args.out),
        dataset=_dataset(args.data),
        version=args.model_version,
        progress=True,
        checkpoint_dir=args.checkpoint,
        large=large,
        mode="models" if args.preset == "models" else "partitioned",
    )
    _print_manifest(manifest, args.out)
    print(f"Keras checkpoint saved to {args.checkpoint}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from edgecascade.training.export import export_bundle
    from edgecascade.training.train import load_trained, training_split

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        print(f"edgecascade: no checkpoint in {checkpoint}; run 'edgecascade train' first", file=sys.stderr)
        return 1
    trained = load_trained(checkpoint)
    x_train, _, x_val, y_val = training_split(trained.config, _dataset(args.data))
    manifest = export_bundle(
        trained,
        Path(args.out),
        version=args.model_version,
        classes=trained.classes,
        representative=x_train,
        holdout=(x_val, y_val),
    )
    _print_manifest(manifest, args.out)
    return 0


def _print_manifest(manifest: Manifest, out: str) -> None:
    print(f"exported {manifest.name} v{manifest.version} to {out}")
    for part in manifest.partitions:
        print(f"  {part.tier:<8} {part.file:<16} exit threshold {part.exit.threshold:.4f}")
    for key, value in sorted(manifest.metrics.items()):
        print(f"  {key}: {value:.4f}")


def _demo(args: argparse.Namespace) -> int:
    from edgecascade.tools.demo import DEFAULT_SITE, run_demo

    if args.site and not args.serve:
        raise ConfigError("--site is where --serve keeps the stack; add --serve")
    report = run_demo(
        Path(args.model),
        limit=args.limit,
        report_path=Path(args.report) if args.report else None,
        predictions_path=Path(args.predictions) if args.predictions else None,
        retrain=args.retrain,
        progress=not args.no_progress,
        caches=args.caches,
        serve_site=Path(args.site or DEFAULT_SITE) if args.serve else None,
    )
    if args.serve:  # every process of the stack must have stopped cleanly too
        return 0 if report["n"] and not any(report["exit_codes"].values()) else 1
    return 0 if report["n"] else 1


def _gateway(args: argparse.Namespace) -> int:
    from edgecascade.edge_gateway.__main__ import main as gateway_main

    return gateway_main(args.rest)


def _cloud(args: argparse.Namespace) -> int:
    from edgecascade.cloud_service.__main__ import main as cloud_main

    return cloud_main(args.rest)


def _model_version(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-version", type=int, default=1, help="model version written to the manifest (default 1)"
    )
    p.add_argument("--version", dest="model_version", type=int, help=argparse.SUPPRESS)  # the old name


def _package_version() -> str:
    try:
        return importlib.metadata.version("edgecascade")
    except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecascade", description="Device-edge-cloud collaborative inference."
    )
    parser.add_argument(
        "--log-level", help="logging level for the command (default WARNING; the daemons' default INFO)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the multi-exit model and export a bundle")
    p.add_argument("--out", default=str(DEFAULT_MODEL), help="bundle directory (default %(default)s)")
    p.add_argument("--data", help=".npz file with x and y arrays (default: Debian's Fashion-MNIST)")
    p.add_argument("--quick", action="store_true", help="the quicker preset the demo uses")
    p.add_argument(
        "--preset",
        choices=("cascade", "large", "models"),
        default="cascade",
        help="cascade: the partitioned multi-exit model as a bundle (default); large: the large "
        f"cloud model alone, a checkpoint written to --out (default {DEFAULT_LARGE}); models: a "
        "models-mode bundle, small device and medium gateway models under the large one "
        f"(default --out {DEFAULT_MODELS}, --checkpoint {DEFAULT_MODELS_CHECKPOINT})",
    )
    p.add_argument(
        "--teacher",
        help="large-model checkpoint (from --preset large): the exits learn its soft targets; "
        f"--preset models uses it as the cloud's model (default {DEFAULT_LARGE})",
    )
    p.add_argument(
        "--config", help="TOML file of training settings; its [model] table sets the network's shape"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    _model_version(p)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="Keras checkpoint dir (%(default)s)")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="export a bundle from a Keras checkpoint written by train")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="(default %(default)s)")
    p.add_argument("--out", default=str(DEFAULT_MODEL), help="bundle directory (default %(default)s)")
    _model_version(p)
    p.add_argument("--data", help=".npz the checkpoint was trained on (default: Fashion-MNIST)")
    p.set_defaults(func=_export)

    p = sub.add_parser("demo", help="run the whole stack on this machine and print a report")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="bundle directory; trained if missing")
    p.add_argument("--report", help="also write the report as JSON here")
    p.add_argument("--predictions", help="write one JSON line per input here")
    p.add_argument("--limit", type=int, help="stream only the first N test images")
    p.add_argument("--retrain", action="store_true", help="train a new model even if one exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--caches", action="store_true", help="turn on the device and gateway neural caches")
    p.add_argument(
        "--serve",
        action="store_true",
        help="after the report, keep the stack up with an example device provisioned for "
        "examples/device_predict.py, until Ctrl-C or SIGTERM",
    )
    p.add_argument(
        "--site", help="where --serve keeps the stack and the device's files (default artifacts/demo-site)"
    )
    p.set_defaults(func=_demo)

    cache_cli.register(sub, str(DEFAULT_MODEL))
    bench = bench_cli.register(sub, str(DEFAULT_MODEL), str(DEFAULT_CHECKPOINT))
    certs_cli.register(sub, bench)

    from edgecascade.tools.planner import add_plan_command

    add_plan_command(sub, DEFAULT_CHECKPOINT)

    security_cli.register(sub)
    retrain_cli.register(sub)
    broker_cli.register(sub)
    site_cli.register(sub)
    unknown_cli.register(sub)
    federated_cli.register(sub)
    for name, func, text in (
        ("gateway", _gateway, "run the gateway daemon (edgecascade gateway --help for its options)"),
        ("cloud", _cloud, "run the cloud service (edgecascade cloud --help for its options)"),
    ):
        # no options of its own (not even -h): everything after the name is the daemon's
        p = sub.add_parser(name, help=text, add_help=False)
        p.set_defaults(func=func, rest=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in DAEMONS:
        if args.log_level and "--log-level" not in rest:  # `edgecascade --log-level X gateway ...`
            rest = ["--log-level", args.log_level, *rest]
        args.rest = rest
    else:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        logging.basicConfig(
            level=(args.log_level or "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s"
        )
        if logging.getLogger().level > logging.INFO:  # TensorFlow's C++ info chatter, unless asked for
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return int(args.func(args))
    except EdgeCascadeError as exc:
        print(f"edgecascade: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
