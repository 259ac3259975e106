"""cluctl.data: registry, digits split, CIFAR/npz readers, task helpers. No network."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from cluctl.data import (
    DATASET_NAMES,
    class_order,
    clear_cache,
    digits_split,
    load_dataset,
    task_classes,
    task_indices,
)
from cluctl.errors import NotFound, UsageError


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and text
    return text


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes(digits):
    assert digits.name == "digits"
    assert digits.x_train.shape == (1350, 1, 8, 8)
    assert digits.x_test.shape == (447, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10 and digits.default_tasks == 5
    assert len(digits.mean) == len(digits.std) == 1


def test_digits_split_fixed_and_stratified():
    from sklearn.datasets import load_digits

    y = load_digits().target
    tr, te = digits_split(y)
    assert len(tr) == 1350 and len(te) == 447
    assert tr[:10].tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert te[:10].tolist() == [3, 13, 19, 26, 32, 36, 39, 41, 42, 47]
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
    assert not set(tr) & set(te) and len(set(tr) | set(te)) == len(y)
    n_tr, n_all = np.bincount(y[tr], minlength=10), np.bincount(y, minlength=10)
    assert n_tr.tolist() == [134, 137, 133, 137, 136, 137, 136, 134, 131, 135]
    assert np.all(np.abs(n_tr / n_all - 0.75) < 0.01)
    # independent of any global seed
    np.random.seed(7)
    torch.manual_seed(7)
    tr2, te2 = digits_split(y)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)


def test_digits_normalised_with_train_stats(digits):
    x = digits.x_train.double()
    assert abs(x.mean().item()) < 1e-5
    assert abs(x.std(unbiased=False).item() - 1) < 1e-4
    # test set uses the training statistics: un-normalising gives back [0, 1] pixels
    raw = digits.x_test * digits.std[0] + digits.mean[0]
    assert raw.min().item() > -1e-5 and raw.max().item() < 1 + 1e-5
    assert abs(digits.x_test.mean().item()) < 0.1


def test_digits_fingerprint_stable_and_cached(digits):
    assert digits.fingerprint == "3530671c3eb07bc8cc638dea6ca4c6384333a3b01951386cefdfaa453adb67d2"
    assert load_dataset("digits") is digits
    assert load_dataset(" Digits ") is digits


def test_unknown_dataset():
    with pytest.raises(UsageError) as ei:
        load_dataset("mnist")
    msg = one_line(ei.value)
    assert "mnist" in msg and DATASET_NAMES in msg
    with pytest.raises(UsageError):
        load_dataset("npz:")


# ---------------------------------------------------------------- tasks


def test_class_order():
    a = class_order(10, 0)
    assert a == class_order(10, 0) and sorted(a) == list(range(10))
    assert a == torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert class_order(10, 1) != a
    torch.manual_seed(123)  # global RNG does not matter
    assert class_order(10, 0) == a


def test_task_classes_and_indices():
    order = [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]
    assert task_classes(order, 5, 0) == [4, 1]
    assert task_classes(order, 5, 4) == [6, 2]
    assert task_classes(order, 2, 1) == [9, 0, 8, 6, 2]
    assert task_classes(order, 1, 0) == order
    with pytest.raises(UsageError) as ei:
        task_classes(order, 5, 7, dataset="digits")
    assert one_line(ei.value) == "task 7 is out of range: digits has 5 tasks (0..4)"
    with pytest.raises(UsageError):
        task_classes(order, 5, -1)
    with pytest.raises(UsageError) as ei:
        task_classes(order, 3, 0)
    assert "1, 2, 5, 10" in one_line(ei.value)

    y = torch.tensor([0, 3, 1, 3, 2, 0, 1])
    idx = task_indices(y, [3, 0])
    assert idx.dtype == torch.int64 and idx.tolist() == [0, 1, 3, 5]
    assert task_indices(y, torch.tensor([9])).tolist() == []


def test_digits_tasks_cover_everything(digits):
    order = class_order(digits.num_classes, 3)
    seen = torch.cat([task_indices(digits.y_train, task_classes(order, 5, t)) for t in range(5)])
    assert sorted(seen.tolist()) == list(range(len(digits.y_train)))


# ---------------------------------------------------------------- CIFAR fixtures


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # the official files are protocol-2 pickles


def write_cifar100(root: Path, n_train=6, n_test=4):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    xtr, xte = _images(n_train, 1), _images(n_test, 2)
    ytr = [(7 * i) % 100 for i in range(n_train)]
    yte = [(99 - 3 * i) for i in range(n_test)]
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        _dump(folder / name, {"filenames": [f"img{i}.png" for i in range(len(y))], "batch_label": name,
                              "fine_labels": y, "coarse_labels": [c // 5 for c in y], "data": x})
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                            "coarse_label_names": [f"s{i}" for i in range(20)]})
    return xtr, np.array(ytr), xte, np.array(yte)


def write_cifar10(root: Path, per_batch=2, n_test=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = _images(per_batch, 10 + b)
        y = [(b + i) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{b}", {"batch_label": f"batch {b}", "labels": y, "data": x,
                                           "filenames": ["f"] * per_batch})
        xs.append(x)
        ys += y
    xte = _images(n_test, 20)
    yte = [9 - i for i in range(n_test)]
    _dump(folder / "test_batch", {"batch_label": "test", "labels": yte, "data": xte, "filenames": ["f"] * n_test})
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch})
    return np.concatenate(xs), np.array(ys), xte, np.array(yte)


def _unnormalise(ds, x):
    mean = torch.tensor(ds.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float64).view(1, -1, 1, 1)
    return (x.double() * std + mean) * 255


def _torchvision_reads(cls, root, train):
    """The fixture through torchvision's own reader (md5 checks bypassed)."""
    class Unchecked(cls):
        def _check_integrity(self):
            return True

        def _load_meta(self):
            self.classes = []

    d = Unchecked(str(root), train=train, download=False)
    return d.data, np.array(d.targets)


def test_cifar100_fixture(tmp_path):
    from torchvision.datasets import CIFAR100

    xtr, ytr, xte, yte = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_root=str(tmp_path))
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.default_tasks == 20
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    # pixel (image 2, channel 1, row 5, col 7) is byte 1024 + 5*32 + 7 of row 2
    assert round(_unnormalise(ds, ds.x_train)[2, 1, 5, 7].item()) == xtr[2, 1024 + 5 * 32 + 7]
    assert torch.allclose(_unnormalise(ds, ds.x_test), torch.from_numpy(xte.reshape(-1, 3, 32, 32)).double(), atol=1e-3)
    per_channel = ds.x_train.double().mean(dim=(0, 2, 3))
    assert per_channel.abs().max().item() < 1e-5
    # same arrays as torchvision's reader (which gives N x H x W x C)
    tv_x, tv_y = _torchvision_reads(CIFAR100, tmp_path, train=True)
    assert np.array_equal(tv_x.transpose(0, 3, 1, 2), xtr.reshape(-1, 3, 32, 32))
    assert tv_y.tolist() == ytr.tolist()
    assert load_dataset("cifar100", data_root=str(tmp_path)) is ds


def test_cifar10_fixture(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    xtr, ytr, xte, yte = write_cifar10(tmp_path)
    monkeypatch.setenv("CLUCTL_DATA", str(tmp_path))
    ds = load_dataset("cifar10")  # root from $CLUCTL_DATA
    assert ds.num_classes == 10 and ds.default_tasks == 5
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert round(_unnormalise(ds, ds.x_train)[9, 2, 31, 0].item()) == xtr[9, 2048 + 31 * 32]
    tv_x, tv_y = _torchvision_reads(CIFAR10, tmp_path, train=False)
    assert np.array_equal(tv_x.transpose(0, 3, 1, 2), xte.reshape(-1, 3, 32, 32))
    assert tv_y.tolist() == yte.tolist()


def test_cifar_missing(tmp_path):
    with pytest.raises(NotFound) as ei:
        load_dataset("cifar100", data_root=str(tmp_path / "nowhere"))
    msg = one_line(ei.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in msg and "--download" in msg
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(NotFound) as ei:
        load_dataset("cifar10", data_root=str(tmp_path))
    assert "data_batch_3" in one_line(ei.value)


def test_cifar_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(NotFound) as ei:
        load_dataset("cifar10", data_root=str(tmp_path), download=True)
    msg = one_line(ei.value)
    assert "could not download CIFAR-10" in msg and str(tmp_path) in msg


def test_cifar_corrupt_files(tmp_path):
    write_cifar100(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:500])
    with pytest.raises(UsageError) as ei:
        load_dataset("cifar100", data_root=str(tmp_path))
    assert str(train) in one_line(ei.value) and "corrupt" in str(ei.value)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    _dump(train, {"data": Evil(), "fine_labels": []})
    with pytest.raises(UsageError) as ei:
        load_dataset("cifar100", data_root=str(tmp_path))
    assert "refusing" in one_line(ei.value)

    _dump(train, {"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]})
    with pytest.raises(UsageError) as ei:
        load_dataset("cifar100", data_root=str(tmp_path))
    assert "N x 3072" in one_line(ei.value)

    _dump(train, {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]})
    with pytest.raises(UsageError) as ei:
        load_dataset("cifar100", data_root=str(tmp_path))
    assert "0..99" in one_line(ei.value)


# ---------------------------------------------------------------- npz


def _valid_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.integers(0, 256, size=(12, 6, 5, 3), dtype=np.uint8),  # channels-last
        y_train=np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]),
        x_test=rng.integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8),
        y_test=np.array([3, 2, 1, 0]),
    )


def test_npz_valid(tmp_path):
    arrays = _valid_arrays()
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    ds = load_dataset(f"npz:{path}")
    assert ds.name == f"npz:{path}"
    assert ds.input_shape == (3, 6, 5) and ds.num_classes == 4 and ds.default_tasks == 2
    back = _unnormalise(ds, ds.x_train)
    assert torch.allclose(back, torch.from_numpy(arrays["x_train"].transpose(0, 3, 1, 2)).double(), atol=1e-3)
    assert ds.y_test.tolist() == [3, 2, 1, 0]
    assert load_dataset(f"npz:{path}") is ds

    # same bytes elsewhere -> same fingerprint; one pixel changed -> different
    other = tmp_path / "copy.npz"
    np.savez(other, **arrays)
    assert load_dataset(f"npz:{other}").fingerprint == ds.fingerprint
    arrays["x_train"][0, 0, 0, 0] ^= 1
    changed = tmp_path / "changed.npz"
    np.savez(changed, **arrays)
    assert load_dataset(f"npz:{changed}").fingerprint != ds.fingerprint


def test_npz_layouts(tmp_path):
    y = np.array([0, 1, 2, 0, 1, 2])
    cases = {
        "flat": (np.random.rand(6, 64), (1, 1, 64)),
        "hw": (np.random.rand(6, 8, 9).astype(np.float32), (1, 8, 9)),
        "nchw": (np.random.rand(6, 3, 8, 8), (3, 8, 8)),
    }
    for name, (x, shape) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2].astype(np.float64))
        ds = load_dataset(f"npz:{path}")
        assert ds.input_shape == shape and ds.num_classes == 3 and ds.default_tasks == 3, name


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_key", "missing key(s) y_test"),
        ("truncated", "corrupt or truncated"),
        ("object", "object array"),
        ("length", "12 samples but y_train has 11"),
        ("nan", "NaN"),
        ("not_zip", "not an .npz archive"),
        ("empty", "empty"),
        ("negative", "negative labels"),
        ("fractional", "non-integer labels"),
        ("gap", "class(es) 2 never occur"),
        ("shapes", "x_test samples"),
        ("npy", "single .npy array"),
    ],
)
def test_npz_malformed(tmp_path, case, expect):
    path = tmp_path / f"{case}.npz"
    a = _valid_arrays()
    if case == "missing_key":
        del a["y_test"]
    elif case == "object":
        a["y_train"] = np.array([object()] * 12, dtype=object)
    elif case == "length":
        a["y_train"] = a["y_train"][:11]
    elif case == "nan":
        a["x_test"] = a["x_test"].astype(np.float32)
        a["x_test"][1, 2, 3, 0] = np.nan
    elif case == "negative":
        a["y_test"] = np.array([0, -1, 1, 2])
    elif case == "fractional":
        a["y_test"] = np.array([0, 1.5, 1, 2])
    elif case == "gap":
        a["y_train"] = np.where(a["y_train"] == 2, 1, a["y_train"])
    elif case == "shapes":
        a["x_test"] = a["x_test"][:, :5]
    if case == "not_zip":
        path.write_text("hello, not a zip\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "npy":
        with open(path, "wb") as fh:
            np.save(fh, a["x_train"])
    else:
        np.savez(path, **a)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UsageError) as ei:
        load_dataset(f"npz:{path}")
    msg = one_line(ei.value)
    assert str(path) in msg and expect in msg, msg


def test_npz_missing_file(tmp_path):
    with pytest.raises(NotFound) as ei:
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    assert str(tmp_path / "absent.npz") in one_line(ei.value)


def test_clear_cache(digits):
    clear_cache()
    again = load_dataset("digits")
    assert again is not digits and again.fingerprint == digits.fingerprint
    assert torch.equal(again.x_train, digits.x_train)
