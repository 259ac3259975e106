"""``neggem`` and ``rl-gem``: GEM projection of g_f against the retained tasks' reference
gradients with margin = the unlearn memory strength, if any <g_f, g_j> < 0."""

from ..projection import gem_step
from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    if not refs.batches:
        return g_f, None
    return gem_step(g_f, refs.G, cfg["unlearn_mem_strength"], impl=refs.impl)


register(UnlearnAlgorithm("neggem", "neg", combine))
register(UnlearnAlgorithm("rl-gem", "rl", combine))
