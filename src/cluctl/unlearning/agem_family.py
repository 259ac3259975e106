"""``negagem`` and ``rl-agem``: A-GEM projection of g_f against mean_j g_j if violated."""

from ..projection import agem_project
from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    if not refs.batches:
        return g_f, None
    return agem_project(g_f, refs.G.mean(0))


register(UnlearnAlgorithm("negagem", "neg", combine))
register(UnlearnAlgorithm("rl-agem", "rl", combine))
