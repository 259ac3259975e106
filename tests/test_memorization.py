"""Memorization scores (SPEC §5): import, Feldman & Zhang estimator, confidence proxy, cache, CLI."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cluctl.buffers import memorization as M
from cluctl.cli.memorize import app
from cluctl.data import load_dataset
from cluctl.errors import CluctlError, NotFound, UsageError
from cluctl.store import Store

TINY = dict(model="mlp", width=16, epochs=1, lr=0.05, batch_size=64, threads=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def store(tmp_path):
    return Store.open(tmp_path / "store")


def _labels(ds) -> np.ndarray:
    return ds.y_train.numpy().copy()


def _one_line_error(excinfo, *needles):
    text = str(excinfo.value)
    assert "\n" not in text
    for n in needles:
        assert n in text, text
    return text


# ---------------------------------------------------------------- import


def test_import_good_file_round_trips(tmp_path, store, digits):
    n = len(digits.y_train)
    mem = np.random.default_rng(0).random(n).astype(np.float32)
    path = tmp_path / "fz.npz"
    np.savez(path, tr_mem=mem, tr_labels=_labels(digits))
    oid = M.import_scores(store, path, digits)
    scores, meta = M.load_scores(store, oid, dataset=digits)
    assert scores.dtype == np.float64 and np.array_equal(scores, mem.astype(np.float64))
    assert meta["type"] == "scores" and meta["method"] == "imported" and meta["n"] == n
    assert meta["dataset"] == "digits" and meta["dataset_fingerprint"] == digits.fingerprint
    assert meta["params"]["labels_checked"] is True and meta["no_estimate"] == 0
    assert oid in store.list_refs("scores/imported").values()  # kept from gc
    assert M.import_scores(store, path, digits) == oid  # idempotent
    # by ref name and prefix too
    ref = next(k for k, v in store.list_refs("scores/imported").items() if v == oid)
    assert np.array_equal(M.load_scores(store, ref)[0], scores)
    assert np.array_equal(M.load_scores(store, oid[:12])[0], scores)
    # without tr_labels: accepted, but marked unchecked
    path2 = tmp_path / "nolabels.npz"
    np.savez(path2, tr_mem=mem.astype(np.float64))
    _, meta2 = M.load_scores(store, M.import_scores(store, path2, digits))
    assert meta2["params"]["labels_checked"] is False


def test_import_rejects_label_mismatch(tmp_path, store, digits):
    n = len(digits.y_train)
    labels = _labels(digits)
    labels[[3, 50, 700]] = (labels[[3, 50, 700]] + 1) % 10
    path = tmp_path / "shuffled.npz"
    np.savez(path, tr_mem=np.zeros(n), tr_labels=labels)
    with pytest.raises(UsageError) as ei:
        M.import_scores(store, path, digits)
    _one_line_error(ei, "tr_labels", "disagree", f"at 3 of {n:,} positions", "another order", "reorder")
    assert store.list_refs("scores") == {}


@pytest.mark.parametrize(
    "case, needles",
    [
        ("short", ("1,349 scores", "1,350 training examples")),
        ("nan", ("NaN/inf", "position 7")),
        ("inf", ("NaN/inf",)),
        ("strings", ("not numeric",)),
        ("objects", ("not numeric",)),
        ("2d", ("1-D",)),
        ("no_tr_mem", ("no tr_mem", "scores")),
        ("not_npz", ("not an .npz",)),
        ("npy", ("not an .npz",)),
        ("labels_short", ("tr_labels", "1,000 entries")),
    ],
)
def test_import_rejects_bad_files(tmp_path, store, digits, case, needles):
    n = len(digits.y_train)
    good = np.linspace(0, 1, n)
    path = tmp_path / f"{case}.npz"
    if case == "short":
        np.savez(path, tr_mem=good[:-1])
    elif case == "nan":
        bad = good.copy()
        bad[7] = np.nan
        np.savez(path, tr_mem=bad)
    elif case == "inf":
        bad = good.copy()
        bad[-1] = np.inf
        np.savez(path, tr_mem=bad)
    elif case == "strings":
        np.savez(path, tr_mem=np.array(["0.1"] * n))
    elif case == "objects":
        np.savez(path, tr_mem=np.array([0.1] * (n - 1) + [None], dtype=object))
    elif case == "2d":
        np.savez(path, tr_mem=good.reshape(-1, 1))
    elif case == "no_tr_mem":
        np.savez(path, scores=good)
    elif case == "not_npz":
        path.write_text("tr_mem = 1, 2, 3\n")
    elif case == "npy":
        path = tmp_path / "scores.npy"
        np.save(path, good)
    elif case == "labels_short":
        np.savez(path, tr_mem=good, tr_labels=np.zeros(1000, dtype=np.int64))
    with pytest.raises(UsageError) as ei:
        M.import_scores(store, path, digits)
    _one_line_error(ei, *needles)
    assert list(store.iter_objects()) == []


def _npz_with_header(path, key: str, shape, descr: str = "<f8", body: bytes = b"") -> None:
    """An .npz whose member ``key`` has an .npy header claiming ``shape`` but only ``body``."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{key}.npy", buf.getvalue() + body)


@pytest.mark.parametrize("key", ["tr_mem", "tr_labels"])
def test_import_refuses_a_header_claiming_10_12_values_before_allocating(tmp_path, store, digits, key):
    """A damaged or hostile header (10**12 float64 values: 8 TB) is one UsageError, read from
    the header alone: no MemoryError, no attempt to allocate or read the body."""
    n = len(digits.y_train)
    path = tmp_path / "huge.npz"
    _npz_with_header(path, key, (10**12,), body=np.zeros(8).tobytes())
    if key == "tr_labels":  # a good tr_mem first, so tr_labels' header is the one read
        import zipfile

        with zipfile.ZipFile(path, "a") as z, z.open("tr_mem.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(n))
    with pytest.raises(UsageError) as ei:
        M.import_scores(store, path, digits)
    _one_line_error(ei, key, "1,000,000,000,000", f"{n:,} training examples")
    # a claimed 2-D shape of the same size, and a header that is not one, are refused alike
    _npz_with_header(path, "tr_mem", (10**6, 10**6))
    with pytest.raises(UsageError) as ei:
        M.import_scores(store, path, digits)
    _one_line_error(ei, "tr_mem", "must be 1-D", "(1000000, 1000000)")
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tr_mem.npy", b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 40)
    with pytest.raises(UsageError) as ei:
        M.import_scores(store, path, digits)
    _one_line_error(ei, "tr_mem", "cannot be read", "damaged")


def test_import_missing_file(tmp_path, store, digits):
    with pytest.raises(NotFound):
        M.import_scores(store, tmp_path / "nope.npz", digits)


def test_save_and_load_validate(store, digits):
    n = len(digits.y_train)
    with pytest.raises(UsageError):
        M.save_scores(store, np.array([0.1, np.nan]), {"method": "imported"})
    with pytest.raises(UsageError):
        M.save_scores(store, np.zeros(3), {"method": "guess"})
    other = store.put_json({"type": "manifest", "buffers": {}})
    with pytest.raises(UsageError, match="not a memorization scores object"):
        M.load_scores(store, other)
    blob = store.put_bytes(b"\x00\x01binary")
    with pytest.raises(UsageError, match="not a memorization scores object"):
        M.load_scores(store, blob)
    short = M.save_scores(store, np.zeros(10), {"method": "imported"})
    with pytest.raises(UsageError, match="10 entries"):
        M.load_scores(store, short, dataset=digits)
    foreign = M.save_scores(store, np.zeros(n), {"method": "imported", "dataset_fingerprint": "0" * 64})
    with pytest.raises(UsageError, match="another dataset"):
        M.load_scores(store, foreign, dataset=digits)


# ---------------------------------------------------------------- estimator


def _masks_from_store(store, key, K, n):
    masks = []
    for j in range(K):
        doc = store.get_json(store.get_ref(f"memorize/{key}/model-{j}"))
        masks.append(M._unpack(doc["mask"], n))
    return np.array(masks)


def test_estimator_resumable_and_deterministic(store, digits):
    n = len(digits.y_train)
    s1, i1 = M.estimate_memorization(digits, models=4, seed=3, store=store, **TINY)
    assert i1["models_trained"] == 4 and i1["models_reused"] == 0
    assert set(i1) >= {"no_estimate", "train_acc_mean", "wall_s", "models_trained", "models_reused"}
    key = i1["run_key"]
    assert sorted(store.list_refs(f"memorize/{key}")) == [f"memorize/{key}/model-{j}" for j in range(4)]
    # the same call again: every model reused, same scores
    s2, i2 = M.estimate_memorization(digits, models=4, seed=3, store=store, **TINY)
    assert i2["models_reused"] == 4 and i2["models_trained"] == 0
    assert np.array_equal(s1, s2) and i2["train_acc_mean"] == i1["train_acc_mean"]
    # deterministic without a store
    s3, i3 = M.estimate_memorization(digits, models=4, seed=3, store=None, **TINY)
    assert np.array_equal(s1, s3) and i3["models_reused"] == 0
    # a different seed gives different subsets
    s4, _ = M.estimate_memorization(digits, models=4, seed=4, store=None, **TINY)
    assert not np.array_equal(s1, s4)
    # a larger K reuses the finished models and equals a fresh run
    s5, i5 = M.estimate_memorization(digits, models=6, seed=3, store=store, **TINY)
    assert i5["models_reused"] == 4 and i5["models_trained"] == 2 and i5["run_key"] == key
    s6, _ = M.estimate_memorization(digits, models=6, seed=3, store=None, **TINY)
    assert np.array_equal(s5, s6)
    # samples seen by all or none of the K models get the mean of the others and are counted
    masks = _masks_from_store(store, key, 4, n)
    assert masks.sum(1).tolist() == [round(0.7 * n)] * 4
    none_or_all = (masks.sum(0) == 0) | (masks.sum(0) == 4)
    assert i1["no_estimate"] == int(none_or_all.sum()) > 0  # 0.7^4 + 0.3^4 of 1350 ~ 335
    assert np.allclose(s1[none_or_all], s1[~none_or_all].mean())
    assert np.all((s1 >= -1) & (s1 <= 1))


def test_estimator_rejects_a_foreign_stored_result(store, digits):
    """A corrupt or mismatched per-model object is trained again, not trusted."""
    _, info = M.estimate_memorization(digits, models=2, seed=1, store=store, **TINY)
    store.set_ref(f"memorize/{info['run_key']}/model-1", store.put_json({"type": "memorize-model", "j": 5}))
    _, again = M.estimate_memorization(digits, models=2, seed=1, store=store, **TINY)
    assert again["models_reused"] == 1 and again["models_trained"] == 1


def test_estimator_worker_processes_match_in_process(digits):
    a, ia = M.estimate_memorization(digits, models=2, seed=5, workers=1, **TINY)
    b, ib = M.estimate_memorization(digits, models=2, seed=5, workers=2, **TINY)
    assert ia["run_key"] == ib["run_key"] and ib["models_trained"] == 2
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(subset=0.0), "--subset"),
        (dict(subset=1.0), "--subset"),
        (dict(subset=1.5), "--subset"),
        (dict(models=1), "--models"),
        (dict(batch_size=1), "--batch-size"),
        (dict(epochs=0), "--epochs"),
        (dict(lr=-0.1), "--lr"),
        (dict(devices="tpu:0"), "tpu"),
        (dict(workers=0), "--per-device"),
        (dict(model="transformer"), "transformer"),
    ],
)
def test_estimator_validates(digits, kw, needle):
    args = dict(models=2, **TINY)
    args.update(kw)
    with pytest.raises(UsageError, match=needle):
        M.estimate_memorization(digits, **args)


def _moved_labels(ds, seed: int, frac: float = 0.03):
    """Move a random ``frac`` of the training labels each to a random other class."""
    rng = np.random.default_rng(seed)
    n, c = len(ds.y_train), ds.num_classes
    moved = rng.choice(n, int(round(frac * n)), replace=False)
    y = _labels(ds)
    y[moved] = (y[moved] + rng.integers(1, c, size=len(moved))) % c
    fp = hashlib.sha256(ds.fingerprint.encode() + b"moved" + y.tobytes()).hexdigest()
    noisy = dataclasses.replace(ds, y_train=torch.as_tensor(y), fingerprint=fp)
    is_moved = np.zeros(n, dtype=bool)
    is_moved[moved] = True
    return noisy, is_moved


def _precision_at(scores, is_moved):
    k = int(is_moved.sum())
    top = np.argsort(-scores, kind="stable")[:k]
    return float(is_moved[top].mean())


# Tuned so that every model fits its 945-sample subset (train accuracy >= 0.998, flipped
# labels included): without momentum the MLP reaches only ~0.96 in 20 epochs and the
# estimator's precision drops to ~0.1. Checked over noise/estimator seeds 0-11: precision@3%
# of the estimator 0.70-0.80 with 24 models (0.55-0.68 with 16), AUC >= 0.99; proxy
# precision 0.78-0.93, AUC >= 0.99. (The moved labels are also hard to fit, which the
# proxy sees directly; the estimator's top 3 % also holds atypical clean digits.)
FZ_TEST = dict(models=24, subset=0.7, epochs=30, model="mlp", width=256, lr=0.1, batch_size=64, momentum=0.9)


def test_estimator_finds_moved_labels_on_digits(digits, store):
    noisy, is_moved = _moved_labels(digits, seed=2)
    assert is_moved.sum() == 40  # chance precision 0.03
    scores, info = M.estimate_memorization(noisy, seed=2, threads=1, store=store, **FZ_TEST)
    proxy = M.confidence_proxy(noisy, "mlp", 256, seed=2, threads=1)
    fz_prec, fz_auc = _precision_at(scores, is_moved), roc_auc_score(is_moved, scores)
    px_prec, px_auc = _precision_at(proxy, is_moved), roc_auc_score(is_moved, proxy)
    print(f"\nmoved 3% of digits labels: estimator (K=24) precision@3% {fz_prec:.3f} AUC {fz_auc:.3f} "
          f"train acc {info['train_acc_mean']:.4f} no_estimate {info['no_estimate']} {info['wall_s']:.1f} s; "
          f"proxy precision@3% {px_prec:.3f} AUC {px_auc:.3f}")
    assert info["train_acc_mean"] >= 0.99  # the models fit their subsets, moved labels included
    assert fz_prec >= 0.5
    assert fz_auc >= 0.95
    assert px_auc >= 0.9 and px_prec >= 0.3
    # the moved samples are memorized: held-out models almost never predict the moved label
    assert np.median(scores[is_moved]) > 0.8 > np.median(scores[~is_moved])


# ---------------------------------------------------------------- confidence proxy + cache


def test_confidence_proxy_deterministic(digits):
    a = M.confidence_proxy(digits, "mlp", 16, seed=0, epochs=2, threads=1)
    b = M.confidence_proxy(digits, "mlp", 16, seed=0, epochs=2, threads=1)
    c = M.confidence_proxy(digits, "mlp", 16, seed=1, epochs=2, threads=1)
    assert a.shape == (len(digits.y_train),) and a.dtype == np.float64
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all((a >= 0) & (a <= 1))


def test_cached_proxy_computes_once(store, digits, monkeypatch, caplog):
    calls = []
    real = M.confidence_proxy

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(M.proxy, "confidence_proxy", counting)  # where cached_proxy calls it
    with caplog.at_level("INFO", logger="cluctl"):
        s1, oid1 = M.cached_proxy(store, digits, "mlp", 16, seed=7, threads=1)
    assert len(calls) == 1
    # announced (through logging) with its cost: epochs and images, and how to skip it
    assert "confidence proxy" in caplog.text and f"{len(digits.y_train):,} training images" in caplog.text
    assert "--mem-scores" in caplog.text
    # and shows its progress: a line per epoch with the time left (log files have no bar)
    epochs = M.PROXY_DEFAULTS["epochs"]
    for e in range(1, epochs):
        assert f"confidence proxy: epoch {e}/{epochs} done after" in caplog.text
    assert "s left" in caplog.text
    ref = M.proxy_ref(digits, "mlp", 16, 7)
    assert ref == f"scores/proxy/{digits.fingerprint[:16]}-mlp-16-seed7"
    assert store.get_ref(ref) == oid1
    caplog.clear()
    with caplog.at_level("INFO", logger="cluctl"):
        s2, oid2 = M.cached_proxy(store, digits, "mlp", 16, seed=7, threads=1)
    assert len(calls) == 1 and oid2 == oid1 and np.array_equal(s1, s2)
    assert caplog.text == ""  # a cache hit says nothing
    _, meta = M.load_scores(store, oid1, dataset=digits)
    assert meta["method"] == "confidence" and meta["params"]["seed"] == 7
    # another seed is another cache entry
    M.cached_proxy(store, digits, "mlp", 16, seed=8, threads=1, quiet=True)
    assert len(calls) == 2
    # what the engine's scores_fn returns: the cached proxy, or the given scores
    s3, oid3 = M.resolve_scores(store, digits, None, model="mlp", width=16, seed=7)
    assert len(calls) == 2 and oid3 == oid1 and np.array_equal(s3, s1)
    given = M.save_scores(store, np.arange(len(digits.y_train)) / 10.0,
                          {"method": "imported", "dataset_fingerprint": digits.fingerprint})
    s4, oid4 = M.resolve_scores(store, digits, given[:10], model="mlp", width=16, seed=7)
    assert oid4 == given and s4[10] == 1.0 and len(calls) == 2


# ---------------------------------------------------------------- CLI


def _invoke(args):
    return CliRunner().invoke(app, args)


def test_cli_import(tmp_path, digits):
    st = str(tmp_path / "store")
    path = tmp_path / "fz.npz"
    np.savez(path, tr_mem=np.linspace(0, 1, len(digits.y_train)), tr_labels=_labels(digits))
    r = _invoke(["import", str(path), "--dataset", "digits", "--store", st])
    assert r.exit_code == 0, r.output
    oid = r.stdout.strip()
    assert r.stdout == oid + "\n" and len(oid) == 64
    assert "labels checked" in r.stderr
    assert M.load_scores(Store.open(st), oid)[1]["method"] == "imported"
    bad = tmp_path / "bad.npz"
    labels = _labels(digits)
    labels[0] = (labels[0] + 1) % 10
    np.savez(bad, tr_mem=np.zeros(len(labels)), tr_labels=labels)
    r = _invoke(["import", str(bad), "--store", st])
    assert isinstance(r.exception, UsageError) and "disagree" in str(r.exception)
    assert r.stdout == ""


def test_cli_estimate(tmp_path, digits):
    st = str(tmp_path / "store")
    args = ["estimate", "--dataset", "digits", "--models", "3", "--epochs", "1", "--width", "16",
            "--batch-size", "64", "--devices", "cpu", "--threads", "1", "--store", st]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    oid = r.stdout.strip()
    assert r.stdout == oid + "\n"
    assert "3 trained, 0 reused" in r.stderr and "no estimate" in r.stderr
    scores, meta = M.load_scores(Store.open(st), oid, dataset=digits)
    assert meta["method"] == "feldman-zhang" and meta["params"]["models"] == 3
    assert meta["no_estimate"] > 0
    r2 = _invoke(args + ["--quiet"])
    assert r2.exit_code == 0 and r2.stdout.strip() == oid and r2.stderr == ""
    # the confidence proxy with default options is the object cached_proxy would make
    r3 = _invoke(["estimate", "--method", "confidence", "--width", "16", "--seed", "2", "--threads", "1",
                  "--devices", "cpu", "--store", st, "--quiet"])
    assert r3.exit_code == 0, r3.output
    _, cached = M.cached_proxy(Store.open(st), digits, "mlp", 16, 2)
    assert r3.stdout.strip() == cached


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--subset", "1.5"], "--subset"),
        (["--subset", "0"], "--subset"),
        (["--method", "vibes"], "--method"),
        (["--models", "1"], "--models"),
        (["--devices", "quantum"], "quantum"),
    ],
)
def test_cli_estimate_rejects(tmp_path, extra, needle):
    r = _invoke(["estimate", "--store", str(tmp_path / "store")] + extra)
    assert isinstance(r.exception, CluctlError), r.output
    assert needle in str(r.exception) and r.stdout == ""


def test_cli_help_has_examples():
    for cmd in ("import", "estimate"):
        r = _invoke([cmd, "--help"])
        assert r.exit_code == 0 and "Example: cluctl memorize" in r.output
