"""Data sets: the embedded mnist5k, torchvision sets read from fake files, Data, augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weightgeo.data import DATASET_NAMES, Data, augment_batch, load_dataset
from weightgeo.data.testing import fake_cifar_checksums, write_fake_cifar, write_fake_mnist
from weightgeo.errors import WeightgeoError


@pytest.fixture(scope="module")
def mnist5k() -> tuple[Data, Data]:
    return load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")


def test_dataset_names() -> None:
    assert set(DATASET_NAMES) == {"mnist5k", "mnist", "fashion-mnist", "cifar10", "cifar100"}


def test_mnist5k_sizes_and_stratification(mnist5k: tuple[Data, Data]) -> None:
    train, test = mnist5k
    assert (len(train), len(test)) == (4000, 1000)
    assert train.x.shape == (4000, 1, 28, 28) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10
    assert train.name == "mnist5k"
    assert torch.equal(torch.bincount(train.y, minlength=10), torch.full((10,), 400))
    assert torch.equal(torch.bincount(test.y, minlength=10), torch.full((10,), 100))


def test_mnist5k_train_and_test_are_disjoint(mnist5k: tuple[Data, Data]) -> None:
    train, test = mnist5k
    train_rows = {row.numpy().tobytes() for row in train.x.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in test.x.flatten(1))


def test_mnist5k_split_is_fixed_whatever_the_global_seed(mnist5k: tuple[Data, Data]) -> None:
    import weightgeo.data.datasets as datasets

    datasets._mnist5k_arrays.cache_clear()
    torch.manual_seed(12345)
    again = load_dataset("mnist5k", "test")
    assert torch.equal(again.x, mnist5k[1].x) and torch.equal(again.y, mnist5k[1].y)


def test_mnist5k_is_normalised(mnist5k: tuple[Data, Data]) -> None:
    train, _ = mnist5k
    assert abs(train.x.mean().item()) < 0.05
    assert abs(train.x.std().item() - 1.0) < 0.05
    assert train.x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    assert train.x.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-5)


def test_unknown_name_and_split() -> None:
    with pytest.raises(WeightgeoError, match="unknown data set 'svhn'.*cifar10"):
        load_dataset("svhn")
    with pytest.raises(WeightgeoError, match="unknown split 'val'.*train, test"):
        load_dataset("mnist5k", "val")


@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist"])
def test_fake_mnist_loads_through_torchvision(tmp_path: Path, kind: str) -> None:
    root = write_fake_mnist(tmp_path, kind=kind, n_train=30, n_test=20, seed=3)
    folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[kind]
    assert (tmp_path / folder / "raw" / "train-images-idx3-ubyte").is_file()
    train = load_dataset(kind, "train", root=root)
    test = load_dataset(kind, "test", root=root)
    assert train.x.shape == (30, 1, 28, 28) and test.x.shape == (20, 1, 28, 28)
    assert train.name == kind and train.num_classes == 10
    assert train.y.dtype == torch.int64 and set(train.y.tolist()) == set(range(10))
    # The labels are the ones written: same seed, same data.
    again = load_dataset(kind, "train", root=write_fake_mnist(tmp_path / "b", kind, 30, 20, 3))
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


def test_fake_mnist_and_fashion_differ(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, "mnist", 20, 10)
    write_fake_mnist(tmp_path, "fashion-mnist", 20, 10)
    a = load_dataset("mnist", root=tmp_path)
    b = load_dataset("fashion-mnist", root=tmp_path)
    assert not torch.equal(a.x, b.x)


@pytest.mark.parametrize("kind, classes", [("cifar10", 10), ("cifar100", 100)])
def test_fake_cifar_loads_through_torchvision(tmp_path: Path, kind: str, classes: int) -> None:
    root = write_fake_cifar(tmp_path, kind=kind, n_train=23, n_test=11, seed=1)
    # torchvision checks the MD5 sums of the real CIFAR files; fake files cannot match them,
    # so the test relaxes that check to "the files exist" (see fake_cifar_checksums).
    with fake_cifar_checksums():
        train = load_dataset(kind, "train", root=root)
        test = load_dataset(kind, "test", root=root)
    assert train.x.shape == (23, 3, 32, 32) and test.x.shape == (11, 3, 32, 32)
    assert train.num_classes == classes and train.name == kind
    assert int(train.y.max()) < classes and train.y.dtype == torch.int64


def test_fake_cifar_channels_are_read_in_order(tmp_path: Path) -> None:
    import pickle

    root = write_fake_cifar(tmp_path, "cifar10", n_train=5, n_test=2)
    with (root / "cifar-10-batches-py" / "test_batch").open("rb") as handle:
        raw = pickle.load(handle, encoding="latin1")["data"]
    with fake_cifar_checksums():
        test = load_dataset("cifar10", "test", root=root)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    pixels = torch.from_numpy(raw).float().view(-1, 3, 32, 32) / 255
    assert torch.allclose(test.x, (pixels - mean) / std, atol=1e-5)


def test_checksums_are_restored_after_the_context(tmp_path: Path) -> None:
    from torchvision.datasets import CIFAR10

    before = [list(entry) for entry in CIFAR10.train_list]
    with fake_cifar_checksums():
        assert all(md5 is None for _, md5 in CIFAR10.train_list)
    assert [list(entry) for entry in CIFAR10.train_list] == before
    root = write_fake_cifar(tmp_path, "cifar10", 5, 2)
    with pytest.raises(WeightgeoError, match="incomplete or corrupted"):
        load_dataset("cifar10", root=root)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_missing_dataset_is_one_line_naming_the_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(WeightgeoError) as info:
        load_dataset(name, root=tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message
    assert f"{name} not found under {(tmp_path / 'empty').resolve()}" in message
    assert "--download" in message


def test_default_root_is_relative_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightgeoError, match=f"under {tmp_path.resolve() / 'data'};"):
        load_dataset("mnist")
    write_fake_mnist(tmp_path / "data", "mnist", 10, 10)
    assert len(load_dataset("mnist")) == 10


def make_data(n: int = 10) -> Data:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Data(x, torch.arange(n) % 3, 3, "toy")


def test_data_basics() -> None:
    data = make_data()
    assert len(data) == 10 and data.input_shape == (1, 2, 2)
    assert data.to("cpu") is data
    sub = data.subset([1, 3])
    assert sub.y.tolist() == [1, 0] and sub.num_classes == 3 and sub.name == "toy"
    assert len(data.subset(torch.tensor([True] * 4 + [False] * 6))) == 4
    assert len(data.subset(slice(2, 5))) == 3
    with pytest.raises(ValueError):
        Data(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), 2, "bad")


def test_batches_cover_an_epoch() -> None:
    data = make_data(10)
    ordered = list(data.batches(4, shuffle=False))
    assert [len(y) for _, y in ordered] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in ordered]), data.x)
    assert [len(y) for _, y in data.batches(4, drop_last=True)] == [4, 4]
    shuffled = list(data.batches(3, generator=torch.Generator().manual_seed(0)))
    xs = torch.cat([x[:, 0, 0, 0] for x, _ in shuffled])
    assert sorted(xs.tolist()) == list(range(10))
    # x and y stay paired, and the same generator seed gives the same order.
    ys = torch.cat([y for _, y in shuffled])
    assert torch.equal(ys, xs.long() % 3)
    again = list(data.batches(3, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shuffled, again))


def test_augment_batch_crops_and_flips() -> None:
    x = torch.randn(64, 3, 8, 8)
    out = augment_batch(x, generator=torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    # Every output image is some crop of its padded input, possibly mirrored.
    for i in range(len(x)):
        crops = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    same = augment_batch(x, generator=torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, same)
    assert not torch.equal(out, x)


def test_augment_batch_without_flip_or_padding_is_identity() -> None:
    x = torch.randn(5, 3, 4, 4)
    assert torch.equal(augment_batch(x, padding=0, flip=False), x)
