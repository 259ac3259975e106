"""``gem``: if any <g, g_j> < 0 for a retained task j, replace g by the GEM projection
(SPEC §4) with margin = the learn memory strength."""

from .base import LearnAlgorithm, register


def direction(g, refs, cfg):
    from ..projection import gem_step

    if not refs.batches:
        return g, None
    return gem_step(g, refs.G, cfg["mem_strength"], impl=refs.impl)


register(LearnAlgorithm("gem", direction, order=20,
                        help="GEM: QP projection against every retained task's reference gradient."))
