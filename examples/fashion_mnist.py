"""Fashion-MNIST test images for the examples, read with numpy alone (no TensorFlow).

From Debian's ``dataset-fashion-mnist`` files (a directory of gzip IDX files) or from an
``.npz`` with ``x`` (uint8 images) and ``y`` (labels) arrays. Not an example itself: the
scripts beside it import it.
"""

from __future__ import annotations

import argparse
import gzip
import zlib
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def add_data_arguments(parser: argparse.ArgumentParser, n: int) -> None:
    """``--data`` (a directory of IDX files or an .npz) and ``-n`` (how many images)."""
    parser.add_argument(
        "--data",
        type=Path,
        default=DEBIAN_DIR,
        help="Fashion-MNIST directory (t10k-*-ubyte.gz) or an .npz with x and y arrays (default %(default)s)",
    )
    parser.add_argument("-n", type=int, default=n, help="how many test images to use (default %(default)s)")


def load_test_images(source: Path, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test images (uint8, N x 28 x 28) and labels (int64); ValueError says what is wrong."""
    if n is not None and n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    if source.suffix == ".npz":
        try:
            with np.load(source) as data:
                images, labels = data["x"], data["y"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{source}: not an .npz with x and y arrays ({exc})") from None
    elif source.is_dir():
        images = _idx(source / "t10k-images-idx3-ubyte.gz", magic=2051, ndim=3)
        labels = _idx(source / "t10k-labels-idx1-ubyte.gz", magic=2049, ndim=1)
    else:
        raise ValueError(
            f"no Fashion-MNIST at {source}: apt-get install dataset-fashion-mnist, or pass --data file.npz"
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(
            f"{source}: expected uint8 images N x H x W and N labels, got {images.shape}, {labels.shape}"
        )
    return images[:n], labels[:n].astype(np.int64)


def _idx(path: Path, *, magic: int, ndim: int) -> np.ndarray:
    """A gzip IDX file (big-endian header: magic, then one uint32 per dimension) as uint8."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: too short for an IDX file")
    head = np.frombuffer(data[: 4 + 4 * ndim], dtype=">u4")
    shape = tuple(int(d) for d in head[1:])
    if int(head[0]) != magic or len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise ValueError(f"{path}: not an IDX file of {ndim} dimension(s)")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
