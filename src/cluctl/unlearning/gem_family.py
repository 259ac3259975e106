"""``neggem`` and ``rl-gem``: GEM projection of g_f against the retained tasks' reference
gradients with margin = the unlearn memory strength, if any <g_f, g_j> < 0."""

from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    from ..projection import gem_step

    if not refs.batches:
        return g_f, None
    return gem_step(g_f, refs.G, cfg["unlearn_mem_strength"], impl=refs.impl)


register(UnlearnAlgorithm(
    "neggem", combine, forget="neg", forget_loss_scale=5.0, order=10,
    help="NegGEM: gradient ascent on the forget batch, GEM-projected against the retained tasks."))
register(UnlearnAlgorithm(
    "rl-gem", combine, forget="rl", unlearning_rate=0.03, forget_loss_scale=5.0, order=30,
    help="RL-GEM: descent with random labels on the forget batch, GEM-projected."))
