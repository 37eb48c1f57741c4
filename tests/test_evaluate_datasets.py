"""Datasets: Fashion-MNIST IDX files, scikit-learn digits, ImageFolder layouts, random real subsets."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from ddpipe.evaluate.datasets import (
    FASHION_MNIST_DIR, Split, SplitDataset, eval_transform, list_datasets, load_dataset, read_idx, real_subset,
    train_transform,
)
from ddpipe.evaluate.errors import DatasetNotFoundError, EvaluateError, UnknownDatasetError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


HAVE_FMNIST = os.path.isdir(FASHION_MNIST_DIR) and any(f.startswith("train-images") for f in os.listdir(FASHION_MNIST_DIR))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_and_split(digits):
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert len(digits.train) + len(digits.test) == 1797
    assert digits.train.images.dtype == np.uint8 and digits.train.images.shape[1:] == (8, 8, 1)
    assert digits.train.labels.dtype == np.int64 and set(digits.test.labels.tolist()) == set(range(10))
    assert (digits.num_classes, digits.in_chans, digits.input_size, digits.hflip) == (10, 1, 8, False)
    # uint8 = round(v * 255 / 16), and the indices point back into scikit-learn's order
    np.testing.assert_array_equal(digits.test.images[..., 0], np.rint(ref.images[digits.test.indices] * 255 / 16))
    np.testing.assert_array_equal(digits.test.labels, ref.target[digits.test.indices])
    # stratified: every class has ~20% of its images in test; the split is deterministic
    counts = digits.test.class_counts(10) / np.bincount(ref.target)
    assert np.all(np.abs(counts - 0.2) < 0.01)
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.test.indices, digits.test.indices)
    assert not set(digits.train.indices) & set(digits.test.indices)


@pytest.mark.skipif(not HAVE_FMNIST, reason=f"Fashion-MNIST IDX files absent from {FASHION_MNIST_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_files():
    ds = load_dataset("fashion-mnist")
    assert ds.train.images.shape == (60000, 28, 28, 1) and ds.test.images.shape == (10000, 28, 28, 1)
    assert ds.train.images.dtype == np.uint8 and ds.train.images.flags.writeable
    np.testing.assert_array_equal(ds.train.class_counts(10), [6000] * 10)
    np.testing.assert_array_equal(ds.test.class_counts(10), [1000] * 10)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert abs(ds.mean[0] - 0.286) < 0.002 and abs(ds.std[0] - 0.353) < 0.002
    assert ds.source.startswith(FASHION_MNIST_DIR)


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_from_data_root_raw_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout below --data-root
    raw.mkdir(parents=True)
    tr, te = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    _write_idx(str(raw / "train-images-idx3-ubyte"), tr)
    _write_idx(str(raw / "train-labels-idx1-ubyte.gz"), np.arange(30) % 10)
    _write_idx(str(raw / "t10k-images-idx3-ubyte.gz"), te)
    _write_idx(str(raw / "t10k-labels-idx1-ubyte"), np.arange(10))
    ds = load_dataset("fashion-mnist", data_root=str(tmp_path))
    np.testing.assert_array_equal(ds.train.images[..., 0], tr)
    np.testing.assert_array_equal(ds.test.labels, np.arange(10))


def test_missing_fashion_mnist_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", data_root=str(tmp_path))
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "--data-root" in msg and "--download" in msg and "\n" not in msg


def test_bad_idx_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(EvaluateError, match="not a readable IDX"):
        read_idx(str(p))


def test_unknown_dataset_suggests_names():
    with pytest.raises(UnknownDatasetError, match="did you mean fashion-mnist"):
        load_dataset("fashion-mnst")
    assert {"fashion-mnist", "digits", "imagefolder:<path>"} <= set(list_datasets())


def _png(path, size, value):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_imagefolder_imagenet_layout(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(("n01", "n02")):
            for i in range(n):
                _png(str(tmp_path / split / wnid / f"img{i}.JPEG.png"), 40, 10 * c + i)
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classes == ["n01", "n02"] and ds.num_classes == 2 and (ds.input_size, ds.eval_resize) == (224, 256)
    assert len(ds.train) == 6 and len(ds.test) == 4 and not ds.train.in_memory
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 0, 1, 1, 1])
    assert ds.train.image(4).shape == (40, 40, 3) and ds.train.image(4)[0, 0, 0] == 11
    x, y = SplitDataset(ds.test, eval_transform(ds))[3]
    assert tuple(x.shape) == (3, 224, 224) and y == 1
    assert load_dataset(str(tmp_path)).classes == ds.classes  # a plain path works too


def test_imagefolder_tiny_imagenet_layout(tmp_path):
    for c, wnid in enumerate(("n01", "n02", "n03")):
        for i in range(2):
            _png(str(tmp_path / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"), 64, c)
    os.makedirs(tmp_path / "val" / "images")
    rows = []
    for i, wnid in enumerate(("n03", "n01")):
        _png(str(tmp_path / "val" / "images" / f"val_{i}.JPEG"), 64, 0)
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (tmp_path / "val" / "val_annotations.txt").write_text("".join(rows))
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.notes["layout"] == "tiny-imagenet" and ds.input_size == 64 and ds.num_classes == 3
    np.testing.assert_array_equal(ds.test.labels, [2, 0])
    x, _ = SplitDataset(ds.train, train_transform(ds))[0]
    assert tuple(x.shape) == (3, 64, 64)


def test_imagefolder_without_val_is_clear(tmp_path):
    _png(str(tmp_path / "train" / "a" / "x.png"), 8, 0)
    with pytest.raises(DatasetNotFoundError, match="has no val folder"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_real_subset_is_seeded_and_class_major(digits):
    a = real_subset(digits, ipc=5, seed=1)
    np.testing.assert_array_equal(a.labels, np.repeat(np.arange(10), 5))
    np.testing.assert_array_equal(a.images, digits.train.images[np.searchsorted(digits.train.indices, a.indices)])
    np.testing.assert_array_equal(real_subset(digits, 5, seed=1).indices, a.indices)
    assert not np.array_equal(real_subset(digits, 5, seed=2).indices, a.indices)
    with pytest.raises(EvaluateError, match="fewer than ipc=1000"):
        real_subset(digits, ipc=1000)


def test_arrays_feed_the_pipeline_array_source(digits):
    from ddpipe.pipeline import ArraySource

    src = ArraySource(digits.train.images, digits.train.labels, name="digits")
    assert len(src) == len(digits.train) and src.array(0, channels=1).shape[:2] == (8, 8)


def test_transforms_give_normalised_float(digits):
    x, y = SplitDataset(digits.train, train_transform(digits))[0]
    assert x.dtype.is_floating_point and tuple(x.shape) == (1, 8, 8) and y == digits.train.labels[0]
    x, _ = SplitDataset(digits.test, eval_transform(digits))[0]
    expected = (digits.test.images[0, ..., 0] / 255.0 - digits.mean[0]) / digits.std[0]
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_split_validation():
    with pytest.raises(ValueError):
        Split(np.zeros(3), images=np.zeros((2, 8, 8, 1), np.uint8))
