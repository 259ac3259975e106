"""``digits``: scikit-learn's 8x8 digits (1797 grey images, 10 classes, pixel values 0..16
divided by 16), shipped with scikit-learn, no download; the fixed stratified 75/25 split of
:func:`cluctl.data.datasets.digits_split` (1350 train / 447 test), 5 tasks of 2 classes.
Its default model is the MLP: the reduced ResNet-18 at lr 0.1 on 8x8 digits is chaotic (one
seed's ACC moved by 0.05 between implementations that agree per step to 1e-5)."""

from __future__ import annotations

from pathlib import Path

from .registry import DatasetKind, register


def _digits_arrays():
    """scikit-learn's digits, read from the CSV that ships inside scikit-learn (what
    ``sklearn.datasets.load_digits`` reads) without importing scikit-learn, whose import
    costs ~1.5 s per command."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        cand = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if cand.is_file():
            path = cand
    if path is None:  # pragma: no cover - a scikit-learn without the CSV
        from sklearn.datasets import load_digits

        d = load_digits()
        return np.asarray(d.images, dtype=np.float64), np.asarray(d.target).astype(np.int64)
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def load(arg: str, data_root, download: bool):
    import numpy as np

    from .datasets import _build, digits_split

    images, y = _digits_arrays()  # float64, 1797 x 8 x 8, values 0..16
    tr, te = digits_split(y)
    raw = {"x_train": images[tr], "y_train": y[tr], "x_test": images[te], "y_test": y[te]}
    x_train = (raw["x_train"] / 16.0).astype(np.float32)[:, None]
    x_test = (raw["x_test"] / 16.0).astype(np.float32)[:, None]
    return _build("digits", raw, x_train, raw["y_train"], x_test, raw["y_test"], 10, 5)


register(DatasetKind("digits", load, help="scikit-learn's 8x8 digits, offline", classes=10, default_tasks=5,
                     default_model="mlp", order=10))
