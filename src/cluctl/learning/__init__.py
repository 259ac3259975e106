"""Learning algorithms (SPEC §2), one module each, behind a registry.

An algorithm turns the current batch's gradient ``g`` into the applied update ``x``,
given lazy access to the retained tasks' reference gradients (:class:`RefContext`).
"""

from __future__ import annotations

from .base import REGISTRY, LearnAlgorithm, RefContext, get  # noqa: F401
from . import agem, gem, naive  # noqa: F401,E402  (registration)
