"""Memorization scores for ranked replay buffers (SPEC §5).

The learn buffer favours the least memorized samples of a task, the unlearn buffer the
most memorized. Scores come from one of three places:

``import_scores``
    Feldman & Zhang's published file (an ``.npz`` with ``tr_mem``, one score per
    training example, and usually ``tr_labels``). The labels, when present, are checked
    against the dataset's training labels: F&Z built their file from TFDS, whose order
    differs from torchvision's, and indexing scores in the wrong order was a thesis bug
    (SPEC §10).
``estimate_memorization``
    The Feldman & Zhang subsampled estimator:
    ``mem(i) = P[correct on i | i in the subset] - P[correct on i | i not in it]``,
    from K models, each trained on a random ``subset`` fraction of the *whole* training
    set as one C-way classifier (no task masking). Model j's subset, initial weights and
    shuffling are seeded by (seed, j). A sample that all or none of the K models saw has
    no estimate: it gets the mean of the other scores and is counted (``no_estimate``).
    Each finished model's result (its subset mask and per-sample correctness on the full
    training set, bit-packed in a JSON object) is kept under the ref
    ``memorize/<run-key>/model-<j>``; the run key hashes (dataset fingerprint, model,
    width, epochs, lr, batch size, momentum, subset, seed) but not K, so re-running
    skips finished models and a larger K reuses a smaller run's models.
``confidence_proxy``
    The cheap proxy: 1 - the mean true-label confidence (softmax probability of the
    true class over all C classes, eval mode) of each training sample, recorded after
    every epoch of one ordinary training run on the whole training set.
    ``cached_proxy`` computes it once per (dataset, model, width, seed) and keeps it
    under ``scores/proxy/<fingerprint[:16]>-<model>-<width>-seed<seed>``.
    ``resolve_scores`` is what a ranked buffer needs: given scores (``--mem-scores``),
    checked against the dataset, else that cached proxy.

Training (estimator and proxy): SGD over cross-entropy on all C outputs, model in train
mode, shuffled every epoch by a generator seeded per model, a last batch of a single
sample dropped (BatchNorm). The estimator uses momentum 0.9 by default: every model must
*fit* its subset (near 100 % training accuracy) for the in/out difference to expose
memorized samples, and plain SGD needs several times more epochs to get there (on
digits, MLP width 256, 20 epochs: 0.96 training accuracy without momentum, 0.99 with).
The proxy is "one ordinary training run", so it uses plain SGD (momentum 0) by default.
After training: eval mode, ``torch.inference_mode``, large batches, data kept on the
device.

Scores object (``save_scores`` / ``load_scores``): a JSON object in the store::

    {"type": "scores", "method": "feldman-zhang" | "confidence" | "imported",
     "dataset": name, "dataset_fingerprint": fp, "n": N, "scores": [N floats],
     "params": {...}, "no_estimate": count}

JSON rather than safetensors so that ``cluctl store show`` and ``gc``/``verify`` see a
typed object (CIFAR's 50,000 scores take about 1 MB). Never pickle.

Modules: :mod:`.common` (constants, checks, seeds), :mod:`.training` (the SGD loop and
evaluation shared by the estimator and the proxy), :mod:`.scores` (scores objects and the
import), :mod:`.proxy` (the confidence proxy and its cache), :mod:`.one_model` (one
estimator model), :mod:`.estimator` and :mod:`.pool` (its worker processes). Every name
is re-exported here; to patch a function, patch it in the module that calls it.
"""

from __future__ import annotations

from .common import (  # noqa: F401  (_parse_devices, _resolve_model: used by cli/memorize.py)
    ESTIMATE_DEFAULTS,
    METHODS,
    MODEL_RESULT_TYPE,
    PROXY_DEFAULTS,
    SCORES_TYPE,
    ProgressFn,
    _parse_devices,
    _resolve_model,
)
from .estimator import estimate_memorization, run_key
from .one_model import _pack, _unpack  # noqa: F401  (tests decode stored model results)
from .proxy import cached_proxy, confidence_proxy, proxy_ref, resolve_scores
from .scores import import_scores, load_scores, save_scores

__all__ = [
    "METHODS",
    "PROXY_DEFAULTS",
    "ESTIMATE_DEFAULTS",
    "cached_proxy",
    "confidence_proxy",
    "estimate_memorization",
    "import_scores",
    "load_scores",
    "proxy_ref",
    "resolve_scores",
    "run_key",
    "save_scores",
]
