"""Datasets of the tutorial models (the "Data" section of TUTORIAL_MODELS.md).

    load(kind, root=None) -> (train_dataset, test_dataset, description)

``kind`` is a model's ``Recipe.data`` (one of :data:`KINDS`). With ``root=None`` a built-in
default that needs no files is used; ``description`` says which, so nobody mistakes it for the
real data set. With ``root`` the real files are read from that folder; nothing is downloaded.

Every dataset is a ``torch.utils.data.TensorDataset`` of (inputs, targets), N samples:

    linear_regression       inputs [N, 3] float32,            targets [N, 1] float32
    logistic_clouds         inputs [N, 2] float32,            targets [N, 1] float32 in {0, 1}
    table                   inputs [N, F] float32 (standardised), targets [N, 1] float32 in {0, 1}
    mnist, fashion_mnist    inputs [N, 1, 28, 28] float32,    targets [N] int64 in 0..9
    cifar10                 inputs [N, 3, 32, 32] float32,    targets [N] int64 in 0..9

Pixels: MNIST normalised with mean 0.1307 and std 0.3081 (as mnist_cnn's course does),
Fashion-MNIST scaled to [0, 1] (``ToTensor``, as Dive-into-DL does), CIFAR-10 to [-1, 1].
"""

import gzip
import os
import pickle
import struct

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

KINDS = ("linear_regression", "logistic_clouds", "table", "mnist", "fashion_mnist", "cifar10")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_SCALING = {
    "mnist": f"normalised with mean {MNIST_MEAN}, std {MNIST_STD}",
    "fashion_mnist": "pixels scaled to [0, 1]",
    "cifar10": "normalised to [-1, 1]",
}
_DATA_SEED = 0  # built-in sets and train/test splits are fixed, whatever the training seed
_TEST_FRACTION = 0.2  # of the tables and of the digits, which come as one set

# ----------------------------------------------------------------------------- MNIST (IDX) --

_IDX_FILES = {  # split -> (images, labels), the names of the original distribution
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def read_idx(path, ndim):
    """An IDX file of unsigned bytes (raw, or gzip-compressed when ``path`` ends in .gz) as a
    uint8 array of ``ndim`` dimensions (images [N, rows, cols], labels [N])."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            content = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read the IDX file ({error})") from error
    magic = content[:4]
    expected_magic = bytes([0, 0, _IDX_UBYTE, ndim])
    if magic != expected_magic:
        raise ValueError(f"{path}: not an IDX file of {ndim}-d unsigned bytes: magic number "
                         f"{magic.hex()}, expected {expected_magic.hex()}")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(content)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    expected_size = header + int(np.prod(shape))
    if len(content) != expected_size:
        raise ValueError(f"{path}: {len(content)} bytes, but an IDX array of shape {shape} "
                         f"takes {expected_size}: the file is truncated or corrupt")
    return np.frombuffer(content, np.uint8, offset=header).reshape(shape)


def _find_idx(kind, root, name):
    """Path of the IDX file ``name`` (raw or .gz) in ``root`` or in torchvision's layout
    ``root/<MNIST|FashionMNIST>/raw``."""
    folders = [root, os.path.join(root, _TORCHVISION_FOLDERS[kind], "raw")]
    for folder in folders:
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    expected = ", ".join(f"{images}[.gz], {labels}[.gz]" for images, labels in _IDX_FILES.values())
    raise FileNotFoundError(f"{kind}: no {name} or {name}.gz in {' or '.join(folders)}; "
                            f"expected the IDX files {expected}")


def _idx_split(kind, root, split):
    """(pixels uint8 [N, 1, 28, 28], labels int64 [N], file names) of one split."""
    image_path, label_path = (_find_idx(kind, root, name) for name in _IDX_FILES[split])
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{image_path}: images of {images.shape[1:]} pixels, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} "
                         f"{len(labels)} labels")
    _check_labels(label_path, labels, 10)
    names = [os.path.basename(image_path), os.path.basename(label_path)]
    return images[:, None], labels.astype(np.int64), names


def _load_idx(kind, root):
    _require_folder(kind, root)
    train_pixels, train_labels, train_names = _idx_split(kind, root, "train")
    test_pixels, test_labels, test_names = _idx_split(kind, root, "test")
    title = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[kind]
    train = TensorDataset(_mnist_inputs(kind, _unit(train_pixels)), torch.from_numpy(train_labels))
    test = TensorDataset(_mnist_inputs(kind, _unit(test_pixels)), torch.from_numpy(test_labels))
    description = (f"{title} from {root} ({', '.join(train_names + test_names)}): "
                   f"{len(train)} train / {len(test)} test images 1x28x28, {_SCALING[kind]}")
    return train, test, description


def _unit(pixels):
    """uint8 ``pixels`` (read-only when read from a file) as float32 in [0, 1], without a
    float64 copy of the whole set."""
    return torch.from_numpy(pixels.astype(np.float32)).div_(255.0)


def _mnist_inputs(kind, unit_pixels):
    """``unit_pixels`` (float32 [N, 1, 28, 28] in [0, 1]) normalised, in place, the way
    ``kind``'s course does."""
    return unit_pixels.sub_(MNIST_MEAN).div_(MNIST_STD) if kind == "mnist" else unit_pixels


# ------------------------------------------------------------------- CIFAR-10 (python version) --

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_PIXELS = 3 * 32 * 32


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, strings, numpy arrays): a pickle
    can name any callable, and a data folder must not be able to run code."""

    # numpy.core in the original (numpy 1) files, numpy._core in batches pickled by numpy 2;
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    _ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"),
                          ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                          ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path):
    """One pickled CIFAR-10 batch as (pixels uint8 [N, 3, 32, 32], labels int64 [N])."""
    try:
        with open(path, "rb") as file:
            batch = _BatchUnpickler(file, encoding="bytes").load()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the CIFAR-10 batch ({error})") from error
    except Exception as error:  # pickle reports corruption as many different exception types
        raise ValueError(f"{path}: not a CIFAR-10 python batch (bad pickle: {error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch is a pickled dict, found "
                         f"{type(batch).__name__}")
    # Keys are bytes in the original (Python 2) files, str in batches pickled by Python 3.
    entries = {key.decode() if isinstance(key, bytes) else key: value
               for key, value in batch.items()}
    if "data" not in entries or "labels" not in entries:
        raise ValueError(f"{path}: a CIFAR-10 batch has 'data' and 'labels', found "
                         f"{sorted(entries)}")
    pixels, labels = entries["data"], np.asarray(entries["labels"])
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 2
            and pixels.shape[1] == _CIFAR_PIXELS):
        shape = getattr(pixels, "shape", None)
        raise ValueError(f"{path}: 'data' must be a uint8 array [N, {_CIFAR_PIXELS}], found "
                         f"{type(pixels).__name__} {shape}")
    if labels.shape != (len(pixels),):
        raise ValueError(f"{path}: {len(pixels)} images but 'labels' has shape {labels.shape}")
    _check_labels(path, labels, 10)
    return pixels.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar(root):
    _require_folder("cifar10", root)
    nested = os.path.join(root, _CIFAR_FOLDER)
    folder = nested if os.path.isdir(nested) else root
    names = _CIFAR_TRAIN + (_CIFAR_TEST,)
    missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"cifar10: {', '.join(missing)} missing in {folder}; expected the "
                                f"python version's {', '.join(names)} in {root} or {nested}")
    parts = [read_cifar_batch(os.path.join(folder, name)) for name in _CIFAR_TRAIN]
    train = _cifar_dataset(np.concatenate([pixels for pixels, _ in parts]),
                           np.concatenate([labels for _, labels in parts]))
    test = _cifar_dataset(*read_cifar_batch(os.path.join(folder, _CIFAR_TEST)))
    description = (f"CIFAR-10 from {folder} ({', '.join(names)}): {len(train)} train / "
                   f"{len(test)} test images 3x32x32, {_SCALING['cifar10']}")
    return train, test, description


def _cifar_dataset(pixels, labels):
    """TensorDataset of uint8 ``pixels`` [N, 3, 32, 32] mapped to [-1, 1] and ``labels`` [N]."""
    return TensorDataset(_unit(pixels).mul_(2.0).sub_(1.0), torch.from_numpy(labels))


# ------------------------------------------------------------------------------- CSV table --

_TABLE_FILES = ("diabetes.csv", "diabetes.csv.gz", "pima-indians-diabetes.csv")


def read_table(path):
    """A CSV of numeric feature columns and a last 0/1 label column (an optional header line
    of column names is skipped) as (features float32 [N, F], labels float32 [N])."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as file:
            first_line = file.readline()
        has_header = not _is_numeric_row(first_line)
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, skiprows=int(has_header), ndmin=2)
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the CSV file ({error})") from error
    except ValueError as error:  # a cell that is no number, rows of different lengths
        raise ValueError(f"{path}: not a numeric CSV table ({error})") from error
    if table.shape[0] == 0 or table.shape[1] < 2:
        raise ValueError(f"{path}: expected rows of numeric features and a last 0/1 label column, "
                         f"found a table of shape {table.shape}")
    features, labels = table[:, :-1], table[:, -1]
    _check_labels(path, labels, 2)
    return features, labels


def _is_numeric_row(line):
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True


def _find_table(root):
    if os.path.isfile(root):
        return root
    _require_folder("table", root)
    for name in _TABLE_FILES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"table: none of {', '.join(_TABLE_FILES)} in {root}; expected a CSV "
                            "of numeric features and a last 0/1 label column (the Pima diabetes "
                            "table), or give the CSV file itself")


def _table_datasets(features, labels):
    """Stratified train/test split of a binary table, features standardised with the training
    split's mean and std (the raw Pima columns span 0..846, too wide for sigmoid layers)."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=_TEST_FRACTION, random_state=_DATA_SEED, stratify=labels)
    scaler = StandardScaler().fit(train_x)

    def dataset(x, y):
        inputs = torch.from_numpy(scaler.transform(x).astype(np.float32))
        return TensorDataset(inputs, torch.from_numpy(y.astype(np.float32)).unsqueeze(1))

    return dataset(train_x, train_y), dataset(test_x, test_y)


def _load_table(root):
    path = _find_table(root)
    train, test = _table_datasets(*read_table(path))
    description = (f"table from {path}: {len(train)} train / {len(test)} test rows of "
                   f"{train.tensors[0].shape[1]} standardised features, 0/1 label")
    return train, test, description


# ------------------------------------------------------------------------ built-in defaults --

def _default_linear_regression():
    """The d2l synthetic regression: x ~ N(0, 1)^3, y = x . [-6, 3.2, 10.5] + 1.7 + N(0, 0.01)."""
    generator = torch.Generator().manual_seed(_DATA_SEED)
    weight, bias = torch.tensor([[-6.0], [3.2], [10.5]]), 1.7

    def draw(n):
        x = torch.randn(n, 3, generator=generator)
        return TensorDataset(x, x @ weight + bias + 0.01 * torch.randn(n, 1, generator=generator))

    train, test = draw(1000), draw(200)
    return train, test, ("built-in synthetic linear regression (the course's own data): "
                         "y = x . [-6, 3.2, 10.5] + 1.7 + N(0, 0.01), 1000 train / 200 test")


def _default_logistic_clouds():
    """Two Gaussian clouds of 100 points each: N(1.7, 1) + 1 labelled 0, N(-1.7, 1) + 1
    labelled 1 (the video course's data)."""
    generator = torch.Generator().manual_seed(_DATA_SEED)

    def draw():
        clouds = [torch.normal(mean, 1.0, (100, 2), generator=generator) + 1
                  for mean in (1.7, -1.7)]
        labels = torch.cat([torch.zeros(100, 1), torch.ones(100, 1)])
        return TensorDataset(torch.cat(clouds), labels)

    train, test = draw(), draw()
    return train, test, ("built-in synthetic two Gaussian clouds (the course's own data): "
                         "means (2.7, 2.7) -> 0 and (-0.7, -0.7) -> 1, std 1, 200 train / 200 test")


def _default_table():
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    train, test = _table_datasets(table.data.astype(np.float32), table.target.astype(np.float32))
    return train, test, (f"built-in default: scikit-learn's breast cancer table (NOT the Pima "
                         f"diabetes CSV; give a data path for that): {len(train)} train / "
                         f"{len(test)} test rows of {train.tensors[0].shape[1]} standardised "
                         "features, 0/1 label")


def _default_digits(kind):
    """scikit-learn's 1,797 real 8x8 handwritten digits as 1x28x28 images: scaled up to the
    20x20 box that MNIST digits fill and centred in 28x28, as MNIST's were."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images).to(torch.float32).div_(16.0).unsqueeze(1)
    large = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp_(0, 1)
    images = _mnist_inputs(kind, F.pad(large, (4, 4, 4, 4)))
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=_TEST_FRACTION, random_state=_DATA_SEED, stratify=labels)
    title = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[kind]
    return TensorDataset(train_x, train_y), TensorDataset(test_x, test_y), (
        f"built-in default: scikit-learn's 8x8 handwritten digits resized to 1x28x28 (NOT "
        f"{title}; give a data folder for that): {len(train_y)} train / {len(test_y)} test, "
        f"{_SCALING[kind]}")


def _default_cifar10(train_size=10000, test_size=2000):
    """A synthetic but learnable 10-class 3x32x32 image set. Each class is a smooth colour
    pattern (5x5 colours upsampled to 40x40) that shares 70% of its colours with the others;
    each image is a randomly placed 32x32 window of its class pattern, varied by contrast,
    brightness, a horizontal flip and strong pixel noise. cifar_net's recipe (2 epochs) reaches
    about 75% on it, not 100%: comparisons of builds stay meaningful."""
    generator = torch.Generator().manual_seed(_DATA_SEED)
    shared = torch.rand(1, 3, 5, 5, generator=generator)
    coarse = 0.7 * shared + 0.3 * torch.rand(10, 3, 5, 5, generator=generator)
    patterns = F.interpolate(coarse, size=(40, 40), mode="bicubic", align_corners=False)

    def draw(n):
        labels = torch.randint(0, 10, (n,), generator=generator)
        left, top = (torch.randint(0, 9, (n,), generator=generator).tolist() for _ in range(2))
        images = torch.stack([patterns[label, :, y:y + 32, x:x + 32]
                              for label, x, y in zip(labels.tolist(), left, top, strict=True)])
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
        brightness = 0.2 * torch.randn(n, 1, 1, 1, generator=generator)
        images = (images - 0.5) * contrast + 0.5 + brightness
        flip = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
        images = torch.where(flip, images.flip(-1), images)
        images += 0.5 * torch.randn(images.shape, generator=generator)
        return TensorDataset(images.clamp_(0, 1).mul_(2).sub_(1), labels)

    train, test = draw(train_size), draw(test_size)
    return train, test, (f"built-in default: synthetic 10-class 3x32x32 colour patterns (NOT "
                         f"CIFAR-10; give a data folder for that): {train_size} train / "
                         f"{test_size} test, {_SCALING['cifar10']}")


# ----------------------------------------------------------------------------- entry point --

def load(kind, root=None):
    """(train_dataset, test_dataset, description) of ``kind`` (see the module docstring for the
    tensors): the real files under ``root``, or the built-in default when ``root`` is None.
    Missing files raise FileNotFoundError naming the files expected and where; corrupt files
    raise ValueError naming the file."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {list(KINDS)}")
    if root is None:
        if kind in ("mnist", "fashion_mnist"):
            return _default_digits(kind)
        defaults = {"linear_regression": _default_linear_regression,
                    "logistic_clouds": _default_logistic_clouds,
                    "table": _default_table, "cifar10": _default_cifar10}
        return defaults[kind]()
    root = os.fspath(root)
    if kind in ("linear_regression", "logistic_clouds"):
        raise ValueError(f"{kind}: the course generates this data set, it has no files; "
                         f"leave the data folder out (got {root!r})")
    if kind == "table":
        return _load_table(root)
    if kind == "cifar10":
        return _load_cifar(root)
    return _load_idx(kind, root)


def _require_folder(kind, root):
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{kind}: data folder {root} does not exist")


def _check_labels(path, labels, classes):
    """Labels must be the integers 0..classes-1."""
    valid = (labels >= 0) & (labels < classes) & (labels == np.floor(labels))
    if not np.all(valid):
        raise ValueError(f"{path}: labels must be integers in 0..{classes - 1}, found "
                         f"{labels[~valid][0].item()}")
