"""Learning algorithms (SPEC §2), one module each, behind a registry (:mod:`.base`).

An algorithm turns the current batch's gradient ``g`` into the applied update ``x``,
given lazy access to the retained tasks' reference gradients (:class:`RefContext`).
Every module of this package is imported here: an algorithm is registered by its file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, LearnAlgorithm, canonical, get, names, register  # noqa: F401

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")


def __getattr__(name):  # RefContext needs torch: imported on first use only
    if name == "RefContext":
        from ..refs import RefContext

        return RefContext
    raise AttributeError(name)
