"""``alt-neggem``: if any <g_f, g_j> < 0, GEM projection against {g_j} plus g_f itself, so
the update keeps making progress on forgetting (<x, g_f> >= -eps v_f)."""

from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    import torch

    from ..projection import ProjectionInfo, gem_project

    if not refs.batches:
        return g_f, None
    G = refs.G
    if not bool((G @ g_f < 0).any()):
        return g_f, ProjectionInfo(projected=False, fallback=False, eps=1e-3, v=None)
    return gem_project(g_f, torch.cat([G, g_f.unsqueeze(0)]), cfg["unlearn_mem_strength"], impl=refs.impl)


register(UnlearnAlgorithm(
    "alt-neggem", combine, forget="neg", order=50,
    help="ALT-NegGEM: gradient ascent, GEM-projected against the retained tasks and g_f itself."))
