"""Array data sets: IDX (MNIST-style, gzipped or not), CIFAR-10 python batches, and the
Debian package's Fashion-MNIST by name."""

import gzip
import os
import pickle

import numpy as np
import pytest

from spnas import arrays, data
from spnas.cli import main
from spnas.errors import SpnasError


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(raw)


def idx_folder(root, n_train=40, n_test=10, compress=True):
    rng = np.random.default_rng(0)
    root.mkdir()
    ext = ".gz" if compress else ""
    for which, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 256, (n, 28, 28)) // 4 + labels[:, None, None] * 40
        write_idx(root / f"{which}-images-idx3-ubyte{ext}", images, compress)
        write_idx(root / f"{which}-labels-idx1-ubyte{ext}", labels, compress)
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder(tmp_path, compress):
    root = idx_folder(tmp_path / "mnist", compress=compress)
    assert data.kind(str(root)) == "small"
    split = data.load(str(root), 16, val_fraction=0.25, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (32, 8, 10)
    x, y = split.train[0]
    assert x.shape == (3, 16, 16) and -1.0 <= x.min() and x.max() <= 1.0 and 0 <= y < 4
    # validation is carved from the training images, the test images are kept apart
    assert split.classes == ["0", "1", "2", "3"]


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(SpnasError, match="not an IDX file"):
        arrays.read_idx(str(bad))
    write_idx(bad, np.zeros((4, 2, 2)), compress=False)
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(SpnasError, match="bytes of data"):
        arrays.read_idx(str(bad))


def test_cifar_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                 b"labels": list(range(8))}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    split = data.load(str(root), 32, val_fraction=0.25, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (32, 8, 8)
    x, _ = split.val[0]
    assert x.shape == (3, 32, 32)


def test_named_set_not_installed(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(arrays.NAMED, "fashion-mnist", (str(tmp_path / "absent"), "apt-get install x"))
    assert main(["search", "--data", "fashion-mnist", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "apt-get install x" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not os.path.isdir(arrays.FASHION_MNIST), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_search_runs(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--data", "fashion-mnist", "--epochs", "1", "--steps-per-epoch", "2",
                 "--dropout-epochs", "0", "--width-mult", "0.25", "--image-size", "16",
                 "--no-progress", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "48000 train / 12000 val / 10000 test (held out)" in out
    assert (run / "arch.json").exists()


def test_train_reports_test_accuracy_once(tmp_path, capsys):
    from spnas.space import SPNASNET_100, Architecture
    root = idx_folder(tmp_path / "mnist", n_train=64, n_test=16)
    arch = tmp_path / "arch.json"
    Architecture(list(SPNASNET_100)).save(str(arch))
    assert main(["train", str(arch), "--data", str(root), "--image-size", "8", "--epochs", "1",
                 "--batch-size", "16", "--no-progress", "--run-dir", str(tmp_path / "t")]) == 0
    assert "test accuracy of those weights" in capsys.readouterr().out
    records = (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "test"' in r for r in records) == 1


@pytest.mark.parametrize("kind", ["array", "tensor"])
def test_loader_gathers_batches_as_the_dataloader_collates_them(kind):
    import torch
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (50,), generator=g)
    if kind == "array":  # uint8 grey images, widened to 3 channels in [-1, 1]
        dataset = data.ArrayImages(torch.randint(0, 256, (50, 1, 6, 6), generator=g,
                                                 dtype=torch.uint8), labels)
    else:
        dataset = data.TensorImages(torch.randn(50, 3, 6, 6, generator=g), labels)
    batches = [[3, 1, 4, 1, 5], [9, 2, 6], [49, 0]]
    want = list(torch.utils.data.DataLoader(dataset, batch_sampler=batches))
    got = list(data.loader(dataset, batches))
    assert len(got) == len(want) == 3
    for (x, y), (wx, wy) in zip(got, want):
        assert x.dtype == wx.dtype and y.dtype == wy.dtype and torch.equal(x, wx) and torch.equal(y, wy)
