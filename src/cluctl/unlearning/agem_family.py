"""``negagem`` and ``rl-agem``: A-GEM projection of g_f against mean_j g_j if violated."""

from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    from ..projection import agem_project

    if not refs.batches:
        return g_f, None
    return agem_project(g_f, refs.G.mean(0))


register(UnlearnAlgorithm(
    "negagem", combine, forget="neg", order=20,
    help="NegAGEM: gradient ascent, A-GEM-projected against the mean reference gradient."))
register(UnlearnAlgorithm(
    "rl-agem", combine, forget="rl", unlearning_rate=0.03, forget_loss_scale=5.0, order=40,
    help="RL-AGEM: descent with random labels, A-GEM-projected."))
