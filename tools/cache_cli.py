"""``edgecascade calibrate-cache``: fit the neural caches' hit rule on validation data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecascade.training.cache_embedding import DEFAULT_DIM as DEFAULT_KEY_DIM

if TYPE_CHECKING:
    from edgecascade.training.cache_calibration import Precision


def calibration_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training images, validation images and labels of the default training run's split."""
    from edgecascade.training.config import TrainConfig
    from edgecascade.training.data import load_fashion_mnist
    from edgecascade.training.train import training_split

    x_train, _, x_val, y_val = training_split(TrainConfig(), load_fashion_mnist())
    return x_train, x_val, y_val


def calibrate(model: Path, precision: Precision | None = None, dim: int = DEFAULT_KEY_DIM) -> None:
    """Calibrate the caches of the bundle at ``model`` in place and print what was chosen."""
    from edgecascade.training.cache_calibration import Precision, calibrate_cache

    x_train, x_val, y_val = calibration_data()
    manifest = calibrate_cache(
        model, x_val, y_val, fit_images=x_train, precision=precision or Precision(), dim=dim
    )
    for part in manifest.partitions:
        if part.cache is not None:
            c = part.cache
            print(
                f"{part.tier:<8} cache: tau {c.tau:.4f}, {c.k}-NN with {c.min_votes} votes; near-duplicate "
                f"hit rate {c.hit_rate:.2%}, accuracy vs the tiers' answers {c.accuracy_ratio:.4f}; "
                f"keeps own exits below {c.keep_exits_below:.2f}"
            )


def _calibrate_command(args: argparse.Namespace) -> int:
    from edgecascade.training.cache_calibration import Precision

    precision = Precision(
        target_ratio=args.target, repeat_share=args.repeat_share, max_unrelated_loss=args.max_unrelated_loss
    )
    calibrate(Path(args.model), precision, args.key_dim)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_model: str) -> None:
    p = sub.add_parser("calibrate-cache", help="calibrate the neural caches' hit rule on validation data")
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument(
        "--target", type=float, default=0.99, help="cache/tier accuracy ratio to keep (default %(default)s)"
    )
    p.add_argument(
        "--repeat-share",
        type=float,
        default=0.3,
        help="expected share of near-duplicate inputs, weighing the two kinds of query (default %(default)s)",
    )
    p.add_argument(
        "--max-unrelated-loss",
        type=float,
        default=0.02,
        help="answers the cache may make wrong among inputs that repeat nothing (default %(default)s)",
    )
    p.add_argument(
        "--key-dim", type=int, default=DEFAULT_KEY_DIM, help="length of the cache keys (default %(default)s)"
    )
    p.set_defaults(func=_calibrate_command)
