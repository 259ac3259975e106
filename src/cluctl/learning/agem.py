"""``agem``: reference g_ref = mean_j g_j (the thesis variant), or with ``--agem-sample M``
the gradient of one random batch of M samples pooled from all retained learn buffers (the
A-GEM paper); if <g, g_ref> < 0, g <- g - (<g, g_ref>/<g_ref, g_ref>) g_ref."""

from .base import LearnAlgorithm, register


def direction(g, refs, cfg):
    from ..projection import agem_project

    if not refs.batches:
        return g, None
    m = cfg.get("agem_sample")
    g_ref = refs.pooled_grad(m) if m else refs.G.mean(0)
    return agem_project(g, g_ref)


def prepare(refs, cfg):
    m = cfg.get("agem_sample")
    if m:
        refs.pooled_grad(m)
    else:
        refs.G  # noqa: B018 - computed and cached


register(LearnAlgorithm("agem", direction, prepare=prepare, order=30,
                        help="A-GEM: project onto the mean reference gradient when it conflicts."))
