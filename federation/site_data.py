"""A site's own labelled examples for collaborative training: read, checked, split. They never leave the site.

Two forms, told apart by what the path is:

* **an ``.npz`` file** with ``x``, raw 0-255 images ``(N, H, W)`` or ``(N, H, W, C)``, and
  ``y``, integer labels ``(N,)`` indexing the model's class list. It is read with
  ``allow_pickle=False``: a file from elsewhere must not be able to run code.
* **a folder** with one sub-folder per class, named after the class (a ``/`` in a class
  name written as ``_``, see :func:`class_folder`), holding 8-bit PNG images of one size.
  Not every class needs a folder; hidden entries are skipped, loose files beside the class
  folders are skipped with a warning, any other file inside a class folder is refused
  (images in another format would otherwise silently not count). Reading PNGs needs
  Pillow, which the ``federated`` extra brings (through matplotlib).

Anything else is a :class:`~edgecascade.device_sdk.errors.DatasetError` that says what is
wrong: a site must learn at once that its data cannot be used, not fail a round later.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.errors import DatasetError, DependencyError
from edgecascade.device_sdk.files import atomic_write
from edgecascade.training.data import int_labels, raw_images

__all__ = [
    "check_input_shape",
    "class_folder",
    "load_labelled_examples",
    "load_site_data",
    "save_site_data",
    "split_holdout",
]

logger = logging.getLogger(__name__)

_GREY_MODES = frozenset({"1", "L", "LA"})  # read as (H, W)
_COLOUR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"})  # read as (H, W, 3)


def class_folder(name: str) -> str:
    """The sub-folder name of class ``name`` in the folder form (``T-shirt/top`` → ``T-shirt_top``)."""
    return name.replace("/", "_").replace("\\", "_")


def _paired(x: np.ndarray, y: np.ndarray, where: object) -> tuple[np.ndarray, np.ndarray]:
    """Raw images and integer labels, as many of each (any number, none too)."""
    x, y = raw_images(x, where), int_labels(y, where)
    if len(x) != len(y):
        raise DatasetError(f"{where}: {len(x)} images but {len(y)} labels")
    return x, y


def _checked(x: np.ndarray, y: np.ndarray, where: object) -> tuple[np.ndarray, np.ndarray]:
    x, y = _paired(x, y, where)
    if len(x) == 0:
        raise DatasetError(f"{where}: no examples")
    return x, y


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: expected an .npz archive with arrays x and y, got a single array")
        with loaded as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise DatasetError(f"{path}: missing arrays {sorted(missing)}; found {sorted(npz.files)}")
            return npz["x"], npz["y"]
    except ValueError as exc:  # an object (pickled) array, or no numpy format at all
        if "Object arrays" in str(exc):
            raise DatasetError(
                f"{path}: holds an object (pickled) array; only plain arrays are read"
            ) from None
        raise DatasetError(f"{path}: not a readable .npz archive: {exc}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DependencyError("Pillow", "federated") from exc
    return Image


def _read_png(path: Path, image_module: Any) -> np.ndarray:
    try:
        with image_module.open(path) as image:
            if image.format != "PNG":
                raise DatasetError(f"{path}: a {image.format} image; only PNG images are read")
            if image.mode in _GREY_MODES:
                image = image.convert("L")
            elif image.mode in _COLOUR_MODES:
                image = image.convert("RGB")
            else:
                raise DatasetError(f"{path}: image mode {image.mode} is not 8-bit grey or colour")
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not a readable PNG image: {exc}") from None


def _read_folder(root: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    index: dict[str, int] = {}
    for i, name in enumerate(classes):
        folder = class_folder(name)
        if folder in index:
            raise DatasetError(
                f"{root}: classes {classes[index[folder]]!r} and {name!r} share folder {folder}"
            )
        index[folder] = i
    image_module = _pillow()
    images: list[np.ndarray] = []
    labels: list[int] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            logger.warning("site data %s: skipping %s, which is not a class folder", root, entry.name)
            continue
        if entry.name not in index:
            raise DatasetError(
                f"{root}: folder {entry.name!r} is named after no class; expected some of {sorted(index)}"
            )
        for file in sorted(entry.iterdir()):
            if file.name.startswith("."):
                continue
            if not file.is_file() or file.suffix.lower() != ".png":
                raise DatasetError(f"{file}: only PNG images (*.png) may be in a class folder")
            image = _read_png(file, image_module)
            if images and image.shape != images[0].shape:
                raise DatasetError(
                    f"{file}: image of shape {image.shape}, but the first one is {images[0].shape}"
                )
            images.append(image)
            labels.append(index[entry.name])
    if not images:
        raise DatasetError(f"{root}: no PNG images in any class folder")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_site_data(path: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A site's labelled examples: uint8 images ``(N, H, W[, C])`` and int64 labels into ``classes``.

    ``path`` is an ``.npz`` file or a folder of class folders (see the module docstring).
    Every problem is a :class:`DatasetError`; a missing Pillow for the folder form is a
    :class:`~edgecascade.device_sdk.errors.DependencyError`.
    """
    path = Path(path)
    if not classes:
        raise DatasetError(f"{path}: the model has no classes to label examples with")
    if path.is_dir():
        x, y = _read_folder(path, classes)
    elif path.exists():
        x, y = _read_npz(path)
    else:
        raise DatasetError(f"site data {path} not found")
    x, y = _checked(x, y, path)
    if int(y.max()) >= len(classes):
        outside = int(np.count_nonzero(y >= len(classes)))
        raise DatasetError(
            f"{path}: {outside} labels outside [0, {len(classes)}) (largest {int(y.max())}); "
            f"the model has {len(classes)} classes"
        )
    logger.info(
        "site data %s: %d examples of shape %s, %d of %d classes present",
        path,
        len(x),
        x.shape[1:],
        len(np.unique(y)),
        len(classes),
    )
    return x, y


def load_labelled_examples(path: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The examples the cloud's people labelled for this site (``edgecascade site examples``), or None.

    They only add to the site's own data, so nothing here stops a round: a missing file is
    None (the site has not fetched any), an unreadable one is a warning and None, and
    examples labelled with a class the site's model does not have yet (one named after it
    was made) are left out with a warning. An empty file is ``None`` too.
    """
    path = Path(path)
    if not path.exists():
        logger.info("no labelled examples at %s; training on the site's own data only", path)
        return None
    try:
        x, y = _paired(*_read_npz(path), path)
    except DatasetError as exc:
        logger.warning("labelled examples left out: %s", exc)
        return None
    known = y < len(classes)
    if not known.all():
        logger.warning(
            "%s: %d examples labelled with classes the model does not have yet are left out",
            path,
            int(np.count_nonzero(~known)),
        )
        x, y = x[known], y[known]
    return (x, y) if len(y) else None


def check_input_shape(x: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """``x`` if its images have the model's input shape ``expected`` (no batch axis), else a DatasetError.

    Grey images stored without their channel axis (``(N, 28, 28)`` for ``(28, 28, 1)``)
    get it added: both forms of the same data are accepted.
    """
    expected = tuple(int(d) for d in expected)
    if tuple(x.shape[1:]) == expected:
        return x
    if expected and expected[-1] == 1 and tuple(x.shape[1:]) == expected[:-1]:
        return x[..., np.newaxis]
    raise DatasetError(f"site images have shape {tuple(x.shape[1:])}, but the model takes {expected}")


def split_holdout(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_holdout, y_holdout))``: the held-out slice the site evaluates models on.

    Each class is shuffled with ``seed`` and gives about ``fraction`` of its examples (the
    total is ``round(N * fraction)``, shared out by largest remainder, so the held-out
    label mix follows the site's), the same split for the same data and seed. With
    ``fraction`` 0 the hold-out is empty; with a positive one and at least two examples
    both parts are non-empty. Both keep the examples' original order.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n = len(y)
    total = round(n * fraction)
    if fraction > 0 and n >= 2:
        total = min(max(total, 1), n - 1)
    labels, counts = np.unique(y, return_counts=True)
    quotas = counts * (total / n) if n else counts.astype(float)
    take = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - take), kind="stable")  # largest remainders first, ties by label
    take[order[: total - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label, k in zip(labels, take, strict=True):
        members = np.flatnonzero(y == label)
        held.append(rng.permutation(members)[:k])
    mask = np.zeros(n, dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return (x[~mask], y[~mask]), (x[mask], y[mask])


def save_site_data(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write ``x`` and ``y`` in the ``.npz`` form :func:`load_site_data` reads; returns ``path``.

    The arrays are checked as on reading (a file that cannot be loaded is never written),
    and the file is replaced atomically and readable by its owner only: it is the site's
    private data.
    """
    path = Path(path)
    x, y = _checked(np.asarray(x), np.asarray(y), path)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    atomic_write(path, buffer.getvalue(), mode=0o600)
    logger.info("wrote site data %s: %d examples", path, len(x))
    return path
