"""Unlearning algorithms (SPEC §3), one module each, behind a registry (:mod:`.base`).

An algorithm has a forget loss (``neg``: gradient ascent on the forget batch, scaled by
s; ``rl``: descent on the forget batch with random labels from the task's other classes;
or none) and a way to combine the forget gradient g_f with the retained tasks' reference
gradients into the applied update. Every module of this package is imported here, so an
algorithm is registered by adding its file; :mod:`.salun` holds the SalUn modifier.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, UnlearnAlgorithm, canonical, get, names, random_labels, register, rule_help  # noqa: F401
from .salun import SalUn, salun_mask  # noqa: F401

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in ("base", "salun"):
        importlib.import_module(f"{__name__}.{_m.name}")
