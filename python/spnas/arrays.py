"""Small-image data sets held in memory as uint8 arrays: the IDX files of MNIST and
Fashion-MNIST, and CIFAR-10's python batches.

    spnas search --data fashion-mnist          # the Debian/Ubuntu package dataset-fashion-mnist
    spnas search --data DIR                    # DIR holds train-images-idx3-ubyte[.gz] ... or
                                               # CIFAR's data_batch_1..5 and test_batch

Read here, served by data.ArrayImages. Each gives the training images (from which the validation split is carved) and, kept apart,
the test images: nothing in a search or a training chooses anything on them.
"""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SpnasError

# Where Debian's and Ubuntu's dataset-fashion-mnist package puts the four IDX files.
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
NAMED = {"fashion-mnist": (FASHION_MNIST, "sudo apt-get install dataset-fashion-mnist")}
CLASS_NAMES = {"fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                  "Shirt", "Sneaker", "Bag", "Ankle boot"]}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def resolve(data: str) -> str | None:
    """The folder of an array data set named or given by --data, or None when `data` is an
    image folder instead. A name that is not installed is a one-line error saying how."""
    if data in NAMED:
        folder, install = NAMED[data]
        if not os.path.isdir(folder):
            raise SpnasError(f"--data {data}: not installed ({folder} is missing); install it with "
                             f"`{install}`, or pass the folder holding its files")
        return folder
    if os.path.isdir(data) and (_idx_path(data, IDX_FILES["train"][0])
                                or os.path.exists(os.path.join(data, CIFAR_TRAIN[0]))):
        return data
    return None


def _idx_path(folder: str, name: str) -> str | None:
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx")):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path
    return None


def read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST's format; gzipped or not): magic 0 0 <type> <dims>, big-endian sizes."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise SpnasError(f"--data: cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise SpnasError(f"--data: {path} is not an IDX file")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 0
    body = raw[4 + 4 * dims:]
    if len(body) != count * dtype.itemsize:
        raise SpnasError(f"--data: {path} holds {len(body)} bytes of data, its header says "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _idx_split(folder: str, which: str) -> tuple[np.ndarray, np.ndarray] | None:
    images_name, labels_name = IDX_FILES[which]
    images, labels = _idx_path(folder, images_name), _idx_path(folder, labels_name)
    if images is None and labels is None and which == "test":
        return None
    if images is None or labels is None:
        raise SpnasError(f"--data {folder}: {images_name} and {labels_name} must both be there")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise SpnasError(f"--data {folder}: {images_name} must be (N, H, W) images and "
                         f"{labels_name} N labels, got {x.shape} and {y.shape}")
    return x[:, None], y.astype(np.int64)


def _cifar_split(folder: str, names) -> tuple[np.ndarray, np.ndarray] | None:
    xs, ys = [], []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            if name == "test_batch":
                return None
            raise SpnasError(f"--data {folder}: CIFAR batch {name} is missing")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
            raise SpnasError(f"--data: {path} is not a CIFAR-10 python batch ({err})") from None
    return np.concatenate(xs), np.concatenate(ys)


def read(folder: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None, str]:
    """((train images, labels), (test images, labels) or None, a name): images uint8 (N, C, H, W)."""
    if _idx_path(folder, IDX_FILES["train"][0]):
        return _idx_split(folder, "train"), _idx_split(folder, "test"), "IDX"
    return _cifar_split(folder, CIFAR_TRAIN), _cifar_split(folder, ("test_batch",)), "CIFAR-10"


def to_size(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size), bilinear, in chunks (bounded memory)."""
    x = torch.from_numpy(np.array(images, copy=True))  # frombuffer arrays are read-only
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.clone()
    out = torch.empty(len(x), x.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, len(x), 4096):
        chunk = x[start:start + 4096].float()
        out[start:start + 4096] = F.interpolate(chunk, size=(size, size), mode="bilinear",
                                                align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    return out
