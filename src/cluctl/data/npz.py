"""``npz:PATH`` datasets: a user's own arrays in one ``.npz`` file.

The archive must hold ``x_train``, ``y_train``, ``x_test``, ``y_test`` (other keys are
ignored). It is read with ``numpy.load(path, allow_pickle=False)``: nothing is
ever unpickled, so object arrays are refused.

x shapes (per sample, after the N axis):

* ``N x D``          flat feature vectors -> ``C=1, H=1, W=D``
* ``N x H x W``      one-channel images -> ``1 x H x W``
* ``N x H x W x C``  channels-last when the last axis is 1, 3 or 4 and smaller than H
* ``N x C x H x W``  otherwise (channels-first)

x values: ``uint8`` is divided by 255; any other integer or float dtype is used as
given (converted to float32). NaN / inf are refused. Train and test must have the
same per-sample shape.

y: 1-D, integers (a float array is accepted only if every value is a whole
number), one per sample, ``>= 0``. ``num_classes = max(label) + 1`` over train and
test, and every class ``0..num_classes-1`` must occur in the training set.

Every problem is one ``UsageError`` line naming the file (a missing file is
``NotFound``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cluctl.errors import NotFound, UsageError

__all__ = ["KEYS", "read_npz", "npz_default_tasks"]

KEYS = ("x_train", "y_train", "x_test", "y_test")


#: inputs beyond this magnitude overflow the float32 mean/std of the normalisation
MAX_ABS_INPUT = 1e12


def npz_default_tasks(num_classes: int) -> int:
    """Two classes per task when the class count is even, else one class per task."""
    return num_classes // 2 if num_classes % 2 == 0 else num_classes


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_nchw(x: np.ndarray, key: str, err) -> np.ndarray:
    if x.ndim == 2:
        return x.reshape(x.shape[0], 1, 1, x.shape[1])
    if x.ndim == 3:
        return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])
    if x.ndim == 4:
        if x.shape[3] in (1, 3, 4) and x.shape[3] < x.shape[1]:
            return x.transpose(0, 3, 1, 2)
        return x
    raise err(
        f"{key} has shape {x.shape}; expected N x D, N x H x W, N x H x W x C or N x C x H x W"
    )


def _read_arrays(fh, err, fmt_hint: str) -> dict[str, np.ndarray]:
    try:
        archive = np.load(fh, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):  # numpy's message for "no npy/npz magic"
            raise err("not an .npz archive (expected a zip of .npy arrays)", fmt_hint) from None
        raise err(f"cannot be read ({_reason(exc)})", fmt_hint) from None
    except EOFError:
        raise err("is empty", fmt_hint) from None
    except OSError as exc:
        raise err(f"cannot be read ({exc.strerror or _reason(exc)})") from None
    except Exception as exc:  # BadZipFile, zlib errors, ...
        raise err(f"is corrupt or truncated ({_reason(exc)})", fmt_hint) from None

    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise err("is a single .npy array, not an .npz archive with x_train, y_train, x_test, y_test", fmt_hint)

    raw: dict[str, np.ndarray] = {}
    with archive:
        have = list(archive.files)
        missing = [k for k in KEYS if k not in have]
        if missing:
            raise err(
                f"missing key(s) {', '.join(missing)} (it has: {', '.join(have) or 'nothing'})",
                fmt_hint,
            )
        for key in KEYS:
            try:
                raw[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise err(
                        f"{key} is an object array (would need pickle, which is not allowed)",
                        "store plain numeric arrays",
                    ) from None
                raise err(f"cannot read {key} ({_reason(exc)})", fmt_hint) from None
            except Exception as exc:  # BadZipFile, EOFError, zlib.error, OSError ...
                raise err(f"is corrupt or truncated: cannot read {key} ({_reason(exc)})", fmt_hint) from None
    return raw


def read_npz(path: str | os.PathLike):
    """Read and validate an npz dataset.

    Returns ``(abspath, raw, x_train, y_train, x_test, y_test, num_classes)``: ``raw``
    is the dict of the four arrays exactly as stored (for the fingerprint); x are
    float32 N x C x H x W numpy arrays (uint8 already divided by 255), y int64.
    """
    text = str(path)
    if not text.strip():
        raise UsageError("npz: needs a file path", "write npz:PATH, e.g. npz:./mydata.npz")
    abspath = os.path.abspath(os.path.expanduser(text))
    p = Path(abspath)

    def err(problem: str, hint: str | None = None) -> UsageError:
        return UsageError(f"npz dataset {abspath}: {problem}", hint)

    if not p.exists():
        raise NotFound(
            f"npz dataset file {abspath} does not exist",
            "npz:PATH must name an .npz file with x_train, y_train, x_test, y_test",
        )
    if p.is_dir():
        raise err("is a directory, not an .npz file")

    fmt_hint = "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    try:
        fh = open(abspath, "rb")  # our own handle: numpy leaks its own when the zip is bad
    except OSError as exc:
        raise err(f"cannot be read ({exc.strerror or _reason(exc)})") from None
    with fh:
        raw = _read_arrays(fh, err, fmt_hint)

    xs, ys = {}, {}
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = raw[xk], raw[yk]
        if x.dtype.kind not in "uif":
            raise err(f"{xk} has dtype {x.dtype}; expected integers or floats")
        if x.ndim < 2:
            raise err(f"{xk} has shape {x.shape}; expected N x D, N x H x W, N x H x W x C or N x C x H x W")
        if y.ndim != 1:
            raise err(f"{yk} has shape {y.shape}; expected a 1-D array of labels")
        if len(x) != len(y):
            raise err(f"{xk} has {len(x)} samples but {yk} has {len(y)} labels")
        if len(x) == 0:
            raise err(f"{xk} is empty")
        if any(d == 0 for d in x.shape[1:]):
            raise err(f"{xk} has an empty sample shape {x.shape[1:]}")
        if x.dtype == np.uint8:
            xf = x.astype(np.float32) / np.float32(255.0)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                xf = x.astype(np.float32)
            if not np.isfinite(xf).all():
                bad = "NaN" if np.isnan(xf).any() else "infinite (or float32-overflowing)"
                raise err(f"{xk} contains {bad} values")
            peak = float(np.abs(xf).max())
            if peak > MAX_ABS_INPUT:
                # the per-channel mean and std (float32) overflow: every input would be
                # normalised to zero and training would run at chance
                raise err(f"{xk} has values up to {peak:.3g} in magnitude, too large to normalise in float32 "
                          f"(at most {MAX_ABS_INPUT:.0e})", "rescale the inputs, e.g. to [0, 1]")
        if y.dtype.kind in "iu":
            yi = y.astype(np.int64)
        elif y.dtype.kind == "f":
            if not np.isfinite(y).all() or not np.all(np.floor(y) == y):
                raise err(f"{yk} contains non-integer labels")
            yi = y.astype(np.int64)
        else:
            raise err(f"{yk} has dtype {y.dtype}; expected integer labels")
        if yi.min() < 0:
            raise err(f"{yk} contains negative labels (min {yi.min()})")
        xs[split] = np.ascontiguousarray(_to_nchw(xf, xk, err))
        ys[split] = yi

    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise err(
            f"x_train samples are {tuple(xs['train'].shape[1:])} (C, H, W) "
            f"but x_test samples are {tuple(xs['test'].shape[1:])}"
        )
    num_classes = int(max(ys["train"].max(), ys["test"].max())) + 1
    if num_classes > len(ys["train"]):
        # every class must occur in y_train: a label beyond the number of samples cannot
        # (and checking it by allocating num_classes entries could need terabytes)
        raise err(f"labels go up to {num_classes - 1}, but y_train has only {len(ys['train'])} samples, "
                  f"so classes 0..{num_classes - 1} cannot all occur there", "number the classes 0..K-1")
    present = np.zeros(num_classes, dtype=bool)
    present[ys["train"]] = True
    if not present.all():
        absent = np.flatnonzero(~present)
        listed = ", ".join(str(c) for c in absent[:10]) + (", ..." if len(absent) > 10 else "")
        raise err(
            f"labels must cover 0..{num_classes - 1} in y_train, but class(es) {listed} never occur there"
        )
    return abspath, raw, xs["train"], ys["train"], xs["test"], ys["test"], num_classes


# ---------------------------------------------------------------- registration


def _load(arg: str, data_root, download: bool):
    from .datasets import _build

    abspath, raw, x_train, y_train, x_test, y_test, num_classes = read_npz(arg)
    return _build(f"npz:{abspath}", raw, x_train, y_train, x_test, y_test, num_classes,
                  npz_default_tasks(num_classes))


def _register() -> None:
    from .registry import DatasetKind, register

    register(DatasetKind("npz", _load, help="your arrays: x_train, y_train, x_test, y_test", path_arg=True,
                         default_model="resnet18", order=90))


_register()
