"""Datasets for training: Fashion-MNIST from Debian's IDX files, or a user's ``.npz``.

Every loader returns the same :class:`Dataset` (uint8 images with a channel axis, int64
labels) and validates what it reads, so a truncated or foreign file fails with a
:class:`~edgecascade.device_sdk.errors.DatasetError` that says what is wrong instead of a numpy
traceback deep inside training. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecascade.device_sdk.errors import DatasetError

logger = logging.getLogger(__name__)

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
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
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
_INSTALL_HINT = "install it with: apt-get install dataset-fashion-mnist"


@dataclass(frozen=True)
class Dataset:
    """Train and test splits: images uint8 ``(N, H, W, C)``, labels int64 ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, without the batch axis."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; {_INSTALL_HINT}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: not a readable gzip file: {exc}") from None


def _header(data: bytes, path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    """Validate an IDX header and return its dimensions."""
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: IDX magic number {found}, expected {magic}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = head + math.prod(dims)  # Python ints: a forged header cannot wrap around to a small size
    if len(data) != expected:
        raise DatasetError(f"{path}: {len(data)} bytes, but header {dims} needs {expected}")
    return dims


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 image file (gzip) as uint8 ``(N, rows, cols, 1)``."""
    data = _read_gz(path)
    n, rows, cols = _header(data, path, IDX_IMAGES_MAGIC, 3)
    if rows < 1 or cols < 1:
        raise DatasetError(f"{path}: invalid image size {rows}x{cols}")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols, 1).copy()


def read_idx_labels(path: Path, num_classes: int | None = None) -> np.ndarray:
    """An IDX1 label file (gzip) as int64 ``(N,)``; checks labels < ``num_classes`` if given."""
    data = _read_gz(path)
    _header(data, path, IDX_LABELS_MAGIC, 1)
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        raise DatasetError(f"{path}: label {int(labels.max())} out of range for {num_classes} classes")
    return labels


def _split(root: Path, prefix: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx_images(root / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx_labels(root / f"{prefix}-labels-idx1-ubyte.gz", num_classes)
    if len(x) != len(y):
        raise DatasetError(f"{root}: {prefix} has {len(x)} images but {len(y)} labels")
    return x, y


def load_fashion_mnist(root: str | Path = FASHION_MNIST_ROOT) -> Dataset:
    """Fashion-MNIST from the four gzip IDX files in ``root`` (Debian's layout)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST directory {root} does not exist; {_INSTALL_HINT}")
    x_train, y_train = _split(root, "train", len(FASHION_MNIST_CLASSES))
    x_test, y_test = _split(root, "t10k", len(FASHION_MNIST_CLASSES))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{root}: train images {x_train.shape[1:]} but test images {x_test.shape[1:]}")
    logger.info("loaded Fashion-MNIST from %s: %d train, %d test", root, len(x_train), len(x_test))
    return Dataset(x_train, y_train, x_test, y_test, FASHION_MNIST_CLASSES)


def raw_images(x: np.ndarray, where: object) -> np.ndarray:
    """``x`` as uint8 ``(N, H, W[, C])``: numeric, finite, raw 0-255 values (not normalised)."""
    if x.ndim not in (3, 4) or min(x.shape[1:]) < 1:
        raise DatasetError(f"{where}: images must be (N, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if (
        x.dtype == np.bool_
        or not np.issubdtype(x.dtype, np.number)
        or np.issubdtype(x.dtype, np.complexfloating)
    ):
        raise DatasetError(f"{where}: images must be numeric, got dtype {x.dtype}")
    if x.size and (not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 255):
        raise DatasetError(f"{where}: images must hold raw values in [0, 255]")
    if x.size and np.issubdtype(x.dtype, np.floating) and x.max() <= 1.0:
        raise DatasetError(
            f"{where}: images look normalised to [0, 1]; store raw 0-255 values "
            "(the model's input spec applies the scaling)"
        )
    return np.rint(x).astype(np.uint8)


def int_labels(y: np.ndarray, where: object) -> np.ndarray:
    """``y`` as int64 ``(N,)``; refuses floats, booleans, one-hot rows and negative labels."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where}: labels must be a 1-d integer array, got {y.dtype} {y.shape}")
    if y.size and int(y.min()) < 0:
        raise DatasetError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def _images(x: np.ndarray, path: Path) -> np.ndarray:
    x = raw_images(x, path)
    return x[..., np.newaxis] if x.ndim == 3 else x


def load_npz(
    path: str | Path,
    classes: tuple[str, ...] | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """A user's dataset from an ``.npz`` with ``x`` (N,H,W[,C]) in [0,255] and ``y`` (N,) integers.

    If the file also has ``x_test``/``y_test`` they form the test split; otherwise
    ``test_fraction`` of the samples is held out (deterministically by ``seed``). Class
    names come from ``classes``, else a ``classes`` string array in the file, else ``"0"``,
    ``"1"``, … . Pickled (object) arrays are refused: an ``.npz`` from elsewhere must not
    be able to run code.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: expected an .npz archive with arrays x and y, got a single array")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise DatasetError(f"{path} not found") from None
    except ValueError as exc:  # object arrays without allow_pickle, or not an npz at all
        raise DatasetError(f"{path}: cannot read as a plain (non-pickled) .npz: {exc}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise DatasetError(f"{path}: missing arrays {sorted(missing)}; found {sorted(arrays)}")
    x, y = _images(arrays["x"], path), int_labels(arrays["y"], path)
    if len(x) != len(y):
        raise DatasetError(f"{path}: {len(x)} images but {len(y)} labels")
    if "x_test" in arrays and "y_test" in arrays:
        x_test, y_test = _images(arrays["x_test"], path), int_labels(arrays["y_test"], path)
        if len(x_test) != len(y_test) or x_test.shape[1:] != x.shape[1:]:
            raise DatasetError(f"{path}: x_test {x_test.shape} / y_test {y_test.shape} do not match x")
        x_train, y_train = x, y
    else:
        x_train, y_train, x_test, y_test = split_validation(x, y, test_fraction, seed)
    if classes is None:
        if "classes" in arrays:
            classes = tuple(str(c) for c in arrays["classes"].tolist())
        else:
            top = max(int(y_train.max(initial=-1)), int(y_test.max(initial=-1)))
            classes = tuple(str(i) for i in range(top + 1))
    top_label = max(int(y_train.max(initial=-1)), int(y_test.max(initial=-1)))
    if top_label >= len(classes):
        raise DatasetError(f"{path}: label {top_label} out of range for {len(classes)} classes")
    logger.info("loaded %s: %d train, %d test, %d classes", path, len(x_train), len(x_test), len(classes))
    return Dataset(x_train, y_train, x_test, y_test, tuple(classes))


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of the samples: ``(x_tr, y_tr, x_val, y_val)``, same split for same seed.

    The held-out part is a seeded random permutation (not stratified); with a fraction > 0
    and at least two samples both parts are non-empty.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n = len(x)
    n_val = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[tr], y[tr], x[val], y[val]
