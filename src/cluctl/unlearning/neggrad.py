"""``neggrad`` (NegGrad+): x = alpha * mean_j g_j + (1 - alpha) * g_f, no QP."""

from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    a = cfg["alpha"]
    if not refs.batches:
        return (1 - a) * g_f, None
    return a * refs.G.mean(0) + (1 - a) * g_f, None


register(UnlearnAlgorithm(
    "neggrad", combine, forget="neg", aliases=("neggrad+", "neggradplus"), order=60,
    help="NegGrad+: alpha * mean retained gradient + (1 - alpha) * gradient ascent, no QP."))
