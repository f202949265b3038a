"""fastops.data: the real file formats written here and read back, clear errors for missing
and corrupt files, and the built-in defaults."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from fastops import data
from fastops.data import MNIST_MEAN, MNIST_STD


def write_idx(path, array):
    """``array`` (uint8) as an IDX file, gzip-compressed when ``path`` ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder, train=7, test=5, suffix="", seed=0):
    """A small MNIST-format folder; returns {split: (pixels [N, 28, 28], labels [N])}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    written = {}
    for split, n, prefix in (("train", train, "train"), ("test", test, "t10k")):
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), pixels)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
        written[split] = pixels, labels
    return written


def write_cifar(folder, per_batch=3, seed=0, pickle_keys=bytes):
    """A small cifar-10-batches-py folder; returns (train pixels [N, 3072], labels, test ...)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {pickle_keys(b"data" if pickle_keys is bytes else "data"): pixels,
                 pickle_keys(b"labels" if pickle_keys is bytes else "labels"): labels,
                 pickle_keys(b"batch_label" if pickle_keys is bytes else "batch_label"): name}
        with open(os.path.join(folder, name), "wb") as file:
            pickle.dump(batch, file, protocol=2)
        batches[name] = pixels, labels
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return (np.concatenate([pixels for pixels, _ in train]),
            [label for _, labels in train for label in labels],
            *batches["test_batch"])


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("kind", ["mnist", "fashion_mnist"])
def test_idx_files_read_back(tmp_path, kind, suffix):
    written = write_mnist(tmp_path, suffix=suffix)
    train, test, description = data.load(kind, tmp_path)
    for dataset, (pixels, labels) in ((train, written["train"]), (test, written["test"])):
        inputs, targets = dataset.tensors
        expected = torch.from_numpy(pixels).float().unsqueeze(1) / 255
        if kind == "mnist":
            expected = (expected - MNIST_MEAN) / MNIST_STD
        assert inputs.shape == (len(labels), 1, 28, 28) and inputs.dtype == torch.float32
        torch.testing.assert_close(inputs, expected)
        assert targets.dtype == torch.int64 and targets.tolist() == labels.tolist()
    assert str(tmp_path) in description and "7 train / 5 test" in description


def test_idx_in_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", suffix=".gz")
    train, test, _ = data.load("fashion_mnist", tmp_path)
    assert (len(train), len(test)) == (7, 5)


def test_missing_idx_files_name_what_is_expected_and_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder .*nowhere does not exist"):
        data.load("mnist", tmp_path / "nowhere")
    write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=f"no t10k-labels-idx1-ubyte or "
                       f"t10k-labels-idx1-ubyte.gz in {tmp_path}.*train-images-idx3-ubyte"):
        data.load("mnist", tmp_path)


def test_corrupt_idx_files(tmp_path):
    write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    content = images.read_bytes()
    images.write_bytes(b"\x00\x00\x08\x01" + content[4:])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: not an IDX file .* magic "
                                         "number 00000801, expected 00000803"):
        data.load("mnist", tmp_path)
    images.write_bytes(content[:-10])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: 5494 bytes, but an IDX array "
                                         r"of shape \(7, 28, 28\) takes 5504"):
        data.load("mnist", tmp_path)
    images.write_bytes(content)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(6, np.uint8))
    with pytest.raises(ValueError, match="holds 7 images but .*train-labels-idx1-ubyte 6 labels"):
        data.load("mnist", tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(7, 10, np.uint8))
    with pytest.raises(ValueError, match="labels must be integers in 0..9, found 10"):
        data.load("mnist", tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: cannot read the IDX file"):
        data.load("mnist", tmp_path)


@pytest.mark.parametrize("pickle_keys", [bytes, str])
@pytest.mark.parametrize("nested", [True, False])
def test_cifar_batches_read_back(tmp_path, nested, pickle_keys):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    train_pixels, train_labels, test_pixels, test_labels = write_cifar(folder,
                                                                       pickle_keys=pickle_keys)
    train, test, description = data.load("cifar10", tmp_path)
    for dataset, pixels, labels in ((train, train_pixels, train_labels),
                                    (test, test_pixels, test_labels)):
        inputs, targets = dataset.tensors
        expected = torch.from_numpy(pixels).float().reshape(-1, 3, 32, 32) / 127.5 - 1
        torch.testing.assert_close(inputs, expected)
        assert inputs.min() >= -1 and inputs.max() <= 1
        assert targets.tolist() == labels
    assert "15 train / 3 test" in description


def test_missing_cifar_batches(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="data_batch_4 missing in .*cifar-10-batches-py; "
                                                "expected the python version's data_batch_1"):
        data.load("cifar10", tmp_path)


def test_corrupt_cifar_batches(tmp_path):
    write_cifar(tmp_path)
    batch = tmp_path / "data_batch_2"
    batch.write_bytes(b"garbage that is no pickle")
    with pytest.raises(ValueError, match="data_batch_2: not a CIFAR-10 python batch .bad pickle"):
        data.load("cifar10", tmp_path)
    with open(batch, "wb") as file:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, file)
    with pytest.raises(ValueError, match="data_batch_2: 2 images but 'labels' has shape"):
        data.load("cifar10", tmp_path)
    with open(batch, "wb") as file:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, file)
    with pytest.raises(ValueError, match=r"'data' must be a uint8 array \[N, 3072\]"):
        data.load("cifar10", tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    with open(tmp_path / "test_batch", "wb") as file:
        pickle.dump({b"data": Payload()}, file)
    with pytest.raises(ValueError, match="test_batch: .*refusing to load posix.mkdir"):
        data.load("cifar10", tmp_path)
    assert not marker.exists()


def write_table(path, rows, header=True):
    lines = (["preg,glucose,bp,skin,insulin,bmi,pedigree,age,outcome"] if header else [])
    lines += [",".join(str(v) for v in row) for row in rows]
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as file:
        file.write("\n".join(lines) + "\n")


def pima_rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.integers(0, 200, (n, 8))
    labels = np.arange(n) % 2
    return np.concatenate([features, labels[:, None]], axis=1)


@pytest.mark.parametrize("name,header", [("diabetes.csv", True), ("diabetes.csv.gz", False),
                                         ("pima-indians-diabetes.csv", False)])
def test_csv_table_read_back(tmp_path, name, header):
    rows = pima_rows()
    write_table(tmp_path / name, rows, header)
    train, test, description = data.load("table", tmp_path)
    assert (len(train), len(test)) == (32, 8)
    inputs = train.tensors[0]
    assert inputs.shape == (32, 8) and train.tensors[1].shape == (32, 1)
    torch.testing.assert_close(inputs.mean(0), torch.zeros(8), atol=1e-5, rtol=0)  # standardised
    # every row comes back, with its own label (standardisation is per column and monotonic)
    restored = torch.cat([train.tensors[1], test.tensors[1]]).squeeze(1)
    assert sorted(restored.tolist()) == sorted(rows[:, -1].tolist())
    assert train.tensors[1].mean().item() == 0.5  # stratified split
    assert "32 train / 8 test rows of 8 standardised features" in description
    assert data.load("table", tmp_path / name)[2] == description  # the file itself


def test_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of diabetes.csv, diabetes.csv.gz, "
                                                "pima-indians-diabetes.csv in"):
        data.load("table", tmp_path)
    rows = pima_rows().astype(object)
    rows[3, 2] = "n/a"
    write_table(tmp_path / "diabetes.csv", rows)
    with pytest.raises(ValueError, match="diabetes.csv: not a numeric CSV table"):
        data.load("table", tmp_path)
    rows = pima_rows()
    rows[5, -1] = 2
    write_table(tmp_path / "diabetes.csv", rows)
    with pytest.raises(ValueError, match="diabetes.csv: labels must be integers in 0..1, "
                                         "found 2.0"):
        data.load("table", tmp_path)


def test_built_in_defaults():
    expected = {  # kind: (train size, test size, input shape, target shape, target values)
        "linear_regression": (1000, 200, (3,), (1,), None),
        "logistic_clouds": (200, 200, (2,), (1,), {0.0, 1.0}),
        "table": (455, 114, (30,), (1,), {0.0, 1.0}),
        "mnist": (1437, 360, (1, 28, 28), (), set(range(10))),
        "fashion_mnist": (1437, 360, (1, 28, 28), (), set(range(10))),
        "cifar10": (10000, 2000, (3, 32, 32), (), set(range(10))),
    }
    for kind, (n_train, n_test, input_shape, target_shape, targets) in expected.items():
        train, test, description = data.load(kind)
        assert (len(train), len(test)) == (n_train, n_test), kind
        for dataset in (train, test):
            inputs, labels = dataset.tensors
            assert inputs.shape[1:] == input_shape and inputs.dtype == torch.float32, kind
            assert labels.shape[1:] == target_shape, kind
            if targets is not None:
                assert set(labels.unique().tolist()) == targets, kind
        assert "built-in" in description, kind
        if kind not in ("linear_regression", "logistic_clouds"):
            assert "NOT" in description  # a stand-in, said so
    mnist, fashion = data.load("mnist")[0].tensors[0], data.load("fashion_mnist")[0].tensors[0]
    assert fashion.min() == 0 and fashion.max() == 1
    torch.testing.assert_close(mnist, (fashion - MNIST_MEAN) / MNIST_STD)
    assert fashion[:, :, :4].abs().sum() == 0  # the digit sits in the centre, as in MNIST
    cifar = data.load("cifar10")[0].tensors[0]
    assert cifar.min() == -1 and cifar.max() == 1


def test_defaults_are_fixed():
    first, second = data.load("cifar10")[1], data.load("cifar10")[1]
    assert torch.equal(first.tensors[0], second.tensors[0])


def test_linear_regression_default_follows_the_formula():
    train = data.load("linear_regression")[0]
    x, y = train.tensors
    residual = y - (x @ torch.tensor([[-6.0], [3.2], [10.5]]) + 1.7)
    assert residual.abs().max() < 0.05 and 0.005 < residual.std() < 0.02


def test_bad_kind_and_files_for_synthetic_sets(tmp_path):
    with pytest.raises(ValueError, match="unknown data kind 'imagenet'; expected one of"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="linear_regression: the course generates this data set"):
        data.load("linear_regression", tmp_path)
