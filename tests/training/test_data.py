"""Dataset loaders: IDX parsing and validation, user ``.npz`` files, the validation split."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.errors import DatasetError
from edgecascade.training.data import (
    FASHION_MNIST_CLASSES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    Dataset,
    load_fashion_mnist,
    load_npz,
    split_validation,
)


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def _write_gz(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data))


def _write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, rows, cols = images.shape
    _write_gz(
        root / f"{prefix}-images-idx3-ubyte.gz", _idx(IDX_IMAGES_MAGIC, (n, rows, cols), images.tobytes())
    )
    _write_gz(
        root / f"{prefix}-labels-idx1-ubyte.gz", _idx(IDX_LABELS_MAGIC, (len(labels),), labels.tobytes())
    )


@pytest.fixture
def idx_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    y_train = np.array([0, 1, 2, 3, 9, 5], dtype=np.uint8)
    _write_split(tmp_path, "train", x_train, y_train)
    _write_split(tmp_path, "t10k", x_train[:3], y_train[:3])
    return tmp_path, x_train, y_train


def test_idx_parse_synthetic(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, x, y = idx_root
    ds = load_fashion_mnist(root)
    assert ds.x_train.shape == (6, 5, 4, 1) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[..., 0], x)
    np.testing.assert_array_equal(ds.y_train, y)
    assert ds.x_test.shape == (3, 5, 4, 1)
    assert ds.classes == FASHION_MNIST_CLASSES
    assert ds.input_shape == (5, 4, 1) and ds.num_classes == 10


def test_missing_directory_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_missing_file(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = idx_root
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz not found"):
        load_fashion_mnist(root)


def test_wrong_magic(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, x, _ = idx_root
    _write_gz(root / "train-images-idx3-ubyte.gz", _idx(IDX_LABELS_MAGIC, (6, 5, 4), x.tobytes()))
    with pytest.raises(DatasetError, match="magic number 2049, expected 2051"):
        load_fashion_mnist(root)


def test_truncated_payload(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, x, _ = idx_root
    _write_gz(root / "train-images-idx3-ubyte.gz", _idx(IDX_IMAGES_MAGIC, (6, 5, 4), x.tobytes()[:-7]))
    with pytest.raises(DatasetError, match="needs"):
        load_fashion_mnist(root)


def test_header_whose_size_wraps_around_64_bits(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = idx_root  # 2**22 * 2**21 * 2**21 images = 2**64 bytes: 0 in int64 arithmetic
    _write_gz(root / "train-images-idx3-ubyte.gz", _idx(IDX_IMAGES_MAGIC, (2**22, 2**21, 2**21), b""))
    with pytest.raises(DatasetError, match="needs"):
        load_fashion_mnist(root)


def test_truncated_header(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = idx_root
    _write_gz(root / "train-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC.to_bytes(4, "big") + b"\0\0")
    with pytest.raises(DatasetError, match="truncated IDX header"):
        load_fashion_mnist(root)


def test_truncated_gzip_stream(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = idx_root
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DatasetError, match="gzip"):
        load_fashion_mnist(root)


def test_not_gzip(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = idx_root
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(DatasetError, match="gzip"):
        load_fashion_mnist(root)


def test_image_label_count_mismatch(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, y = idx_root
    _write_gz(root / "train-labels-idx1-ubyte.gz", _idx(IDX_LABELS_MAGIC, (5,), y[:5].tobytes()))
    with pytest.raises(DatasetError, match="6 images but 5 labels"):
        load_fashion_mnist(root)


def test_label_out_of_range(idx_root: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, y = idx_root
    bad = y.copy()
    bad[2] = 10
    _write_gz(root / "train-labels-idx1-ubyte.gz", _idx(IDX_LABELS_MAGIC, (6,), bad.tobytes()))
    with pytest.raises(DatasetError, match="out of range"):
        load_fashion_mnist(root)


def test_real_fashion_mnist(fmnist: Dataset) -> None:
    assert fmnist.x_train.shape == (60000, 28, 28, 1)
    assert fmnist.y_train.shape == (60000,)
    assert fmnist.x_test.shape == (10000, 28, 28, 1)
    assert fmnist.y_test.shape == (10000,)
    assert fmnist.x_train.dtype == np.uint8 and fmnist.y_test.dtype == np.int64
    assert set(np.unique(fmnist.y_train)) == set(range(10))
    assert np.bincount(fmnist.y_test).tolist() == [1000] * 10
    assert fmnist.classes[0] == "T-shirt/top" and fmnist.classes[9] == "Ankle boot"


# --- .npz ---------------------------------------------------------------------------------


def test_npz_adds_channel_and_default_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 3)
    ds = load_npz(path, test_fraction=0.25, seed=0)
    assert ds.x_train.shape == (15, 8, 8, 1) and ds.x_test.shape == (5, 8, 8, 1)
    assert ds.classes == ("0", "1", "2")
    assert ds.y_train.dtype == np.int64


def test_npz_explicit_test_split_and_class_names(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x = np.full((4, 6, 6, 3), 200.0, dtype=np.float32)
    np.savez(
        path,
        x=x,
        y=np.array([0, 1, 0, 1]),
        x_test=x[:2],
        y_test=np.array([1, 0]),
        classes=np.array(["a", "b"]),
    )
    ds = load_npz(path)
    assert ds.x_train.shape == (4, 6, 6, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (2, 6, 6, 3)
    assert ds.classes == ("a", "b")


def test_npz_rejects_pickled_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    objects = np.empty(3, dtype=object)
    objects[:] = [{"a": 1}, None, "x"]
    np.savez(path, x=objects, y=np.arange(3))
    with pytest.raises(DatasetError, match="non-pickled"):
        load_npz(path)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 8, 8), np.uint8)}, "missing arrays"),
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.arange(3)}, "4 images but 3 labels"),
        ({"x": np.zeros((4, 8), np.uint8), "y": np.arange(4)}, "images must be"),
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4)}, "integer array"),
        ({"x": np.full((4, 8, 8), 300.0), "y": np.arange(4)}, r"\[0, 255\]"),
        ({"x": np.full((4, 8, 8), 9.0), "y": np.array([0, 1, -1, 0])}, ">= 0"),
        ({"x": np.full((4, 8, 8), 0.5), "y": np.arange(4)}, "normalised"),
    ],
)
def test_npz_validation(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    with pytest.raises(DatasetError, match=message):
        load_npz(path)


def test_npz_rejects_plain_npy_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2)))
    with pytest.raises(DatasetError, match="single array"):
        load_npz(path)
    with pytest.raises(DatasetError, match="not found"):
        load_npz(tmp_path / "missing.npz")


# --- validation split ----------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete() -> None:
    x = np.arange(100).reshape(100, 1)
    y = np.arange(100)
    a = split_validation(x, y, 0.2, seed=3)
    b = split_validation(x, y, 0.2, seed=3)
    c = split_validation(x, y, 0.2, seed=4)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    x_tr, y_tr, x_val, y_val = a
    assert len(x_val) == 20 and len(x_tr) == 80
    assert set(y_tr.tolist()).isdisjoint(y_val.tolist())
    assert sorted([*y_tr.tolist(), *y_val.tolist()]) == list(range(100))
    np.testing.assert_array_equal(x_val[:, 0], y_val)  # pairs stay together
    assert not np.array_equal(c[3], y_val)


def test_split_edge_cases() -> None:
    x, y = np.zeros((3, 1)), np.arange(3)
    assert len(split_validation(x, y, 0.0, 0)[2]) == 0
    assert len(split_validation(x, y, 0.01, 0)[2]) == 1  # a requested split is never empty
    with pytest.raises(ValueError):
        split_validation(x, y, 1.0, 0)
    with pytest.raises(ValueError):
        split_validation(x, y[:2], 0.5, 0)
