"""A site's local data: both forms read alike, every malformed input refused by name, the hold-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecascade.device_sdk.errors import DatasetError
from edgecascade.federation.site_data import (
    check_input_shape,
    class_folder,
    load_labelled_examples,
    load_site_data,
    save_site_data,
    split_holdout,
)

CLASSES = ("T-shirt/top", "Trouser", "Pullover")


def _data(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 5), dtype=np.uint8), np.arange(n, dtype=np.int64) % len(CLASSES)


def _png(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path, format="PNG")


# --- the npz form ---


def test_npz_round_trip(tmp_path: Path) -> None:
    x, y = _data()
    path = save_site_data(tmp_path / "site.npz", x, y.astype(np.uint8))
    x2, y2 = load_site_data(path, CLASSES)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.dtype == np.uint8 and y2.dtype == np.int64
    assert path.stat().st_mode & 0o077 == 0  # the site's private data: owner only


def test_npz_with_channel_axis_and_raw_float_values(tmp_path: Path) -> None:
    x, y = _data()
    np.savez(tmp_path / "site.npz", x=x[..., None].astype(np.float32), y=y)
    x2, _ = load_site_data(tmp_path / "site.npz", CLASSES)
    assert x2.shape == (12, 6, 5, 1) and x2.dtype == np.uint8
    np.testing.assert_array_equal(x2[..., 0], x)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": _data()[0]}, "missing arrays ['y']"),
        ({"images": _data()[0], "labels": _data()[1]}, "missing arrays ['x', 'y']"),
        ({"x": _data()[0], "y": _data()[1][:-1]}, "12 images but 11 labels"),
        ({"x": _data()[0], "y": np.array([0, 1, 3] * 4)}, "4 labels outside [0, 3)"),
        ({"x": _data()[0], "y": np.array([0, -1, 2] * 4)}, "labels must be >= 0"),
        ({"x": _data()[0], "y": _data()[1].astype(np.float32)}, "labels must be a 1-d integer array"),
        ({"x": _data()[0], "y": np.eye(3, dtype=np.int64)[_data()[1]]}, "labels must be a 1-d integer array"),
        ({"x": _data()[0], "y": np.array(["0", "1", "2"] * 4)}, "labels must be a 1-d integer array"),
        ({"x": np.zeros((0, 6, 5), np.uint8), "y": np.zeros(0, np.int64)}, "no examples"),
        ({"x": np.zeros((12, 30), np.uint8), "y": _data()[1]}, "must be (N, H, W) or (N, H, W, C)"),
        ({"x": _data()[0] / 255.0, "y": _data()[1]}, "look normalised"),
        ({"x": _data()[0] * 2.0, "y": _data()[1]}, "raw values in [0, 255]"),
        ({"x": np.full((12, 6, 5), "a"), "y": _data()[1]}, "images must be numeric"),
    ],
)
def test_npz_refusals(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "site.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds loosely
    with pytest.raises(DatasetError) as info:
        load_site_data(path, CLASSES)
    assert message in str(info.value) and str(path) in str(info.value)


def test_npz_object_array_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "site.npz"
    x, y = _data()
    np.savez(path, x=np.array(list(x), dtype=object), y=y)
    with pytest.raises(DatasetError, match="object \\(pickled\\) array"):
        load_site_data(path, CLASSES)


def test_missing_path_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_site_data(tmp_path / "nowhere.npz", CLASSES)
    single = tmp_path / "single.npy"
    np.save(single, _data()[0])
    with pytest.raises(DatasetError, match="got a single array"):
        load_site_data(single, CLASSES)
    text = tmp_path / "notes.npz"
    text.write_text("not numpy")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_site_data(text, CLASSES)


def test_save_refuses_what_load_would(tmp_path: Path) -> None:
    x, y = _data()
    with pytest.raises(DatasetError, match="12 images but 5 labels"):
        save_site_data(tmp_path / "site.npz", x, y[:5])
    assert not (tmp_path / "site.npz").exists()


# --- the folder form ---


def test_folder_of_class_folders(tmp_path: Path) -> None:
    x, _ = _data(4)
    _png(tmp_path / class_folder("T-shirt/top") / "a.png", x[0])
    _png(tmp_path / "Pullover" / "b.png", x[1])
    _png(tmp_path / "Pullover" / "c.PNG", x[2])
    _png(tmp_path / "Pullover" / "d.png", x[3], mode="1")  # a bilevel image reads as grey
    (tmp_path / "Pullover" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "README.txt").write_text("labelled by the line supervisor")
    loaded, labels = load_site_data(tmp_path, CLASSES)
    assert class_folder("T-shirt/top") == "T-shirt_top"
    assert loaded.shape == (4, 6, 5) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(labels, [2, 2, 2, 0])  # folders in name order, files in name order
    np.testing.assert_array_equal(loaded[3], x[0])
    np.testing.assert_array_equal(loaded[0], x[1])
    assert set(np.unique(loaded[2])) <= {0, 255}


def test_folder_of_colour_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    _png(tmp_path / "Trouser" / "a.png", rgb[0])
    _png(tmp_path / "Trouser" / "b.png", rgb[1])
    x, y = load_site_data(tmp_path, CLASSES)
    assert x.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(x, rgb)
    np.testing.assert_array_equal(y, [1, 1])


def test_folder_refusals(tmp_path: Path) -> None:
    x, _ = _data(3)
    _png(tmp_path / "Sneaker" / "a.png", x[0])
    with pytest.raises(DatasetError, match="'Sneaker' is named after no class"):
        load_site_data(tmp_path, CLASSES)
    (tmp_path / "Sneaker" / "a.png").unlink()
    (tmp_path / "Sneaker").rmdir()

    (tmp_path / "Trouser").mkdir()
    with pytest.raises(DatasetError, match="no PNG images"):
        load_site_data(tmp_path, CLASSES)

    Image.fromarray(x[0]).save(tmp_path / "Trouser" / "a.jpg", format="JPEG")
    with pytest.raises(DatasetError, match="only PNG images"):
        load_site_data(tmp_path, CLASSES)
    (tmp_path / "Trouser" / "a.jpg").rename(tmp_path / "Trouser" / "a.png")
    with pytest.raises(DatasetError, match="a JPEG image; only PNG"):
        load_site_data(tmp_path, CLASSES)

    (tmp_path / "Trouser" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match="not a readable PNG"):
        load_site_data(tmp_path, CLASSES)

    _png(tmp_path / "Trouser" / "a.png", x[0])
    _png(tmp_path / "Trouser" / "b.png", x[1][:4])
    with pytest.raises(DatasetError, match=r"shape \(4, 5\), but the first one is \(6, 5\)"):
        load_site_data(tmp_path, CLASSES)

    _png(tmp_path / "Trouser" / "b.png", (x[1].astype(np.uint16) * 200).astype(np.uint16))
    with pytest.raises(DatasetError, match="is not 8-bit"):
        load_site_data(tmp_path, CLASSES)


def test_classes_sharing_a_folder_name_refused(tmp_path: Path) -> None:
    _png(tmp_path / "a_b" / "x.png", _data(1)[0][0])
    with pytest.raises(DatasetError, match="share folder a_b"):
        load_site_data(tmp_path, ("a/b", "a_b"))


def test_no_classes_refused(tmp_path: Path) -> None:
    save_site_data(tmp_path / "site.npz", *_data())
    with pytest.raises(DatasetError, match="no classes"):
        load_site_data(tmp_path / "site.npz", ())


# --- the model's input shape ---


def test_check_input_shape() -> None:
    x, _ = _data()
    same = check_input_shape(x[..., None], (6, 5, 1))
    assert same.shape == (12, 6, 5, 1)
    added = check_input_shape(x, (6, 5, 1))
    assert added.shape == (12, 6, 5, 1)
    np.testing.assert_array_equal(added[..., 0], x)
    assert check_input_shape(x, (6, 5)).shape == (12, 6, 5)
    for wrong in [(5, 6, 1), (6, 5, 3), (28, 28, 1), (6,)]:
        with pytest.raises(DatasetError, match=r"site images have shape \(6, 5\), but the model takes"):
            check_input_shape(x, wrong)
    with pytest.raises(DatasetError, match="model takes"):
        check_input_shape(np.zeros((2, 6, 5, 3), np.uint8), (6, 5, 1))


# --- the hold-out split ---


def test_split_holdout_sizes_strata_and_determinism() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [60, 30, 10])
    x = np.arange(100)[:, None, None] * np.ones((1, 2, 2), np.int64)  # image i holds i: traceable
    (x_tr, y_tr), (x_ho, y_ho) = split_holdout(x, y, 0.2, seed=7)
    assert (len(y_tr), len(y_ho)) == (80, 20)
    np.testing.assert_array_equal(np.bincount(y_ho), [12, 6, 2])  # each class gives its share
    ids = np.concatenate([x_tr[:, 0, 0], x_ho[:, 0, 0]])
    np.testing.assert_array_equal(np.sort(ids), np.arange(100))  # every example once
    np.testing.assert_array_equal(y[x_ho[:, 0, 0]], y_ho)  # labels stay with their images
    again = split_holdout(x, y, 0.2, seed=7)
    np.testing.assert_array_equal(again[1][0], x_ho)
    other = split_holdout(x, y, 0.2, seed=8)
    assert not np.array_equal(other[1][0], x_ho)
    shuffled = rng.permutation(100)
    assert len(split_holdout(x[shuffled], y[shuffled], 0.2, seed=7)[1][1]) == 20


def test_split_holdout_edges() -> None:
    x, y = _data(10)
    (x_tr, _), (x_ho, y_ho) = split_holdout(x, y, 0.0, seed=0)
    assert len(y_ho) == 0 and x_ho.shape == (0, 6, 5)
    np.testing.assert_array_equal(x_tr, x)
    assert len(split_holdout(x, y, 0.01, seed=0)[1][1]) == 1  # a positive fraction holds out something
    assert len(split_holdout(x, y, 0.99, seed=0)[0][1]) == 1  # and leaves something to train on
    total = [len(split_holdout(x, y, f, seed=0)[1][1]) for f in (0.1, 0.3, 0.5)]
    assert total == [1, 3, 5]
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(x, y, 1.0, seed=0)
    with pytest.raises(ValueError, match="10 examples but y has 9"):
        split_holdout(x, y[:9], 0.1, seed=0)


# --- the examples labelled for the site in the cloud ---


def test_labelled_examples_add_what_fits_and_never_stop_a_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x, _ = _data(6)
    path = tmp_path / "labelled.npz"
    np.savez(path, x=x, y=np.array([0, 1, 2, 5, 1, 7]), ids=np.array([f"e{i}" for i in range(6)]))
    found = load_labelled_examples(path, CLASSES)
    assert found is not None
    assert found[1].tolist() == [0, 1, 2, 1] and (found[0] == x[[0, 1, 2, 4]]).all()
    assert "2 examples labelled with classes the model does not have yet" in caplog.text

    assert load_labelled_examples(tmp_path / "none.npz", CLASSES) is None  # not fetched yet
    np.savez(path, x=x, y=np.array([5] * 6))
    assert load_labelled_examples(path, CLASSES) is None  # nothing usable is none
    for bad in (b"not an archive", None):
        if bad is None:
            np.savez(path, x=x, y=np.arange(5))  # 6 images, 5 labels
        else:
            path.write_bytes(bad)
        caplog.clear()
        assert load_labelled_examples(path, CLASSES) is None
        assert "labelled examples left out" in caplog.text
    np.savez(path, x=np.array([object()] * 6, dtype=object), y=np.arange(6))
    assert load_labelled_examples(path, CLASSES) is None  # never unpickled
