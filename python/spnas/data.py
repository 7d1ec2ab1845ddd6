"""Search data: scikit-learn's bundled digits (the default, no download) or an image folder.

Both give a `Split` of (train, val) datasets returning (3, S, S) float tensors normalised to
[-1, 1] and integer labels. Batches are drawn in a deterministic order from (seed, epoch), and
every process of a distributed run takes its own slice of the same global batch, so a run
resumed from a checkpoint sees exactly the batches it would have seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import arrays
from .errors import SpnasError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at `indices`, as the DataLoader would collate them, in one
        gather instead of one __getitem__ per image (benchmarks/bench_data.py)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


class ArrayImages(TensorImages):
    """uint8 images (N, C, S, S), already at the run's size, as float (3, S, S) in [-1, 1]."""

    def __getitem__(self, i):
        x = self.images[i].float().div_(127.5).sub_(1.0)
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x, int(self.labels[i])

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = super().batch(indices)
        x = images.float().div_(127.5).sub_(1.0)
        x = x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
        return x, labels.long()


class FolderImages(torch.utils.data.Dataset):
    """(path, label) pairs decoded with PIL on access: RGB, shorter side resized to S, centre crop."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int):
        self.samples, self.image_size = samples, image_size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                s = self.image_size
                w, h = im.size
                scale = s / min(w, h)
                im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s))
                array = np.asarray(im, dtype=np.uint8).copy()
        except OSError as err:
            raise SpnasError(f"--data: cannot read image {path}: {err}") from None
        x = torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return x, label


@dataclass
class Split:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset          # carved from the training images: every choice uses it
    classes: list[str]
    description: str
    test: torch.utils.data.Dataset | None = None  # a data set's own test split: reported, never used


def kind(data: str | None) -> str:
    """"digits", "small" (an in-memory array data set: IDX, CIFAR) or "folder" (images)."""
    if data is None or data == "digits":
        return "digits"
    return "small" if arrays.resolve(data) is not None else "folder"


def array_split(data: str, image_size: int, val_fraction: float, seed: int) -> Split:
    """An array data set (arrays.py): validation carved from its training images, its test images
    kept apart, every image resized once to image_size."""
    folder = arrays.resolve(data)
    (x, y), test, fmt = arrays.read(folder)
    tr, va = _split_indices(y, val_fraction, seed)
    images = arrays.to_size(x, image_size)
    labels = torch.from_numpy(y)
    names = arrays.CLASS_NAMES.get(data) or [str(c) for c in range(int(y.max()) + 1)]
    test_set = None
    if test is not None:
        test_set = ArrayImages(arrays.to_size(test[0], image_size), torch.from_numpy(test[1]))
    return Split(ArrayImages(images[tr], labels[tr]), ArrayImages(images[va], labels[va]),
                 names, f"{data} ({fmt}, {folder}): {len(tr)} train / {len(va)} val"
                        + (f" / {len(test_set)} test (held out)" if test_set is not None else "")
                        + f", {image_size}px", test_set)


def _split_indices(labels: np.ndarray, val_fraction: float, seed: int):
    """A stratified train/val split that depends only on the labels and the seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


def digits(image_size: int, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's 1797 8x8 handwritten digits, grey -> RGB, bilinearly resized to S x S."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.mul_(2).sub_(1).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(bunch.target, dtype=torch.long)
    tr, va = _split_indices(bunch.target, val_fraction, seed)
    return Split(TensorImages(x[tr], y[tr]), TensorImages(x[va], y[va]),
                 [str(i) for i in range(10)],
                 f"digits (scikit-learn): {len(tr)} train / {len(va)} val, {image_size}px")


def _scan_classes(root: str, flag: str) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise SpnasError(f"{flag} {root}: no class folders (expected {root}/<class>/<image files>)")
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise SpnasError(f"{flag} {root}: class folder {name!r} has no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(os.path.join(folder, f), label) for f in files]
    return classes, samples


def _check_readable(samples: list[tuple[str, int]], flag: str) -> None:
    """Open the header of the first image of each class: catches a wrong folder early."""
    try:
        from PIL import Image
    except ImportError:
        raise SpnasError(f"{flag}: reading image folders needs Pillow (pip install pillow)") from None
    seen = set()
    for path, label in samples:
        if label in seen:
            continue
        seen.add(label)
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # PIL raises several types for broken files
            raise SpnasError(f"{flag}: cannot read image {path}: {err}") from None


def image_folder(root: str, image_size: int, val_fraction: float = 0.2, seed: int = 0,
                 flag: str = "--data") -> Split:
    """ImageFolder layout: ROOT/<class>/<images>, or ROOT/train/<class>/... + ROOT/val/<class>/..."""
    if not os.path.exists(root):
        raise SpnasError(f"{flag} {root}: no such directory")
    if not os.path.isdir(root):
        raise SpnasError(f"{flag} {root}: not a directory")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        classes, train = _scan_classes(train_dir, flag)
        val_classes, val = _scan_classes(val_dir, flag)
        if val_classes != classes:
            raise SpnasError(f"{flag} {root}: train/ and val/ have different class folders")
    else:
        classes, samples = _scan_classes(root, flag)
        labels = np.array([label for _, label in samples])
        tr, va = _split_indices(labels, val_fraction, seed)
        train, val = [samples[i] for i in tr], [samples[i] for i in va]
    if len(classes) < 2:
        raise SpnasError(f"{flag} {root}: needs at least 2 class folders, found {len(classes)}")
    _check_readable(train + val, flag)
    return Split(FolderImages(train, image_size), FolderImages(val, image_size), classes,
                 f"{root}: {len(classes)} classes, {len(train)} train / {len(val)} val, {image_size}px")


def load(data: str | None, image_size: int, val_fraction: float = 0.2, seed: int = 0) -> Split:
    if image_size < 8:
        raise SpnasError(f"--image-size must be >= 8, got {image_size}")
    if not 0.0 < val_fraction < 1.0:
        raise SpnasError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    which = kind(data)
    if which == "digits":
        return digits(image_size, val_fraction, seed)
    if which == "small":
        return array_split(data, image_size, val_fraction, seed)
    return image_folder(data, image_size, val_fraction, seed)


def epoch_batches(n: int, batch: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's batches for one epoch: a permutation fixed by (seed, epoch), cut into global
    batches of batch*world (the last partial one dropped); rank r takes slice r of each."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    global_batch = batch * world
    steps = n // global_batch
    return [perm[s * global_batch + rank * batch: s * global_batch + (rank + 1) * batch]
            for s in range(steps)]


def loader(dataset, batches: list[list[int]], workers: int = 0):
    """(images, labels) per batch of indices. In-memory data sets gather whole batches here
    (worker processes would only add copies); others decode per image, in `workers` processes."""
    if hasattr(dataset, "batch"):
        return (dataset.batch(b) for b in batches)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers)


def augment(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Random shifted crop (reflect padding of size/8) and optional horizontal flip, per image.

    Drawn from torch's global generator, which the loop seeds per step: resumable. A light stand-in
    for the Inception crop of the authors' ImageNet pipeline, done on the batch (any device).
    """
    if mode == "none":
        return x
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    # the draws on the CPU (the same on any device), then one gather on x's device: no loop
    # over images, no host sync
    dy = torch.randint(0, 2 * pad + 1, (n,))
    dx = torch.randint(0, 2 * pad + 1, (n,))
    flip = torch.rand(n) < 0.5 if mode == "flip-crop" else torch.zeros(n, dtype=torch.bool)
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(0), cols) + dx[:, None]     # (n, w)
    rows = torch.arange(h) + dy[:, None]                                     # (n, h)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(n, 1, h * w)
    index = index.to(x.device, non_blocking=True).expand(n, c, h * w)
    out = padded.contiguous().reshape(n, c, -1).gather(2, index).reshape(n, c, h, w)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def default_augment(data: str | None) -> str:
    """none on the digits (a flipped digit is another digit or none), flip-crop on real images."""
    return "none" if kind(data) == "digits" else "flip-crop"
