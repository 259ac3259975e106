"""``ga``: plain gradient ascent on the forget batch, no projection and no reference
gradients (a standard unlearning baseline: the update is g_f = gradient of -(s * CE) on the
forget batch, so nothing protects the retained tasks)."""

from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    return g_f, None


register(UnlearnAlgorithm(
    "ga", combine, forget="neg", uses_refs=False, unlearning_rate=0.01, forget_loss_scale=1.0, order=70,
    aliases=("gradient-ascent",),
    help="GA: plain gradient ascent on the forget batch, no projection (a baseline)."))
