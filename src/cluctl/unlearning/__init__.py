"""Unlearning algorithms (SPEC §3), one module each, behind a registry.

An algorithm has a forget loss (``neg``: gradient ascent on the forget batch, scaled by
s; ``rl``: descent on the forget batch with random labels from the task's other classes)
and a way to combine the forget gradient g_f with the retained tasks' reference
gradients into the applied update.
"""

from __future__ import annotations

from .base import REGISTRY, UnlearnAlgorithm, get, random_labels  # noqa: F401
from . import agem_family, alt, gem_family, neggrad  # noqa: F401,E402  (registration)
from .salun import salun_mask  # noqa: F401,E402
