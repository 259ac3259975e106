"""``ft``: fine-tuning on the retained tasks' learn buffers only, no forget term (a standard
unlearning baseline: forgetting comes only from training on the rest). The update is the
mean over retained tasks j of the gradient of the loss on j's learn buffer (the reference
gradients of SPEC §3), applied at the unlearning rate; the stop rule and --max-epochs end
the request as for every algorithm. Its default rate is the learning rate of SPEC §2,
0.1: fine-tuning continues training."""

from .base import UnlearnAlgorithm, register


def combine(g_f, refs, cfg):
    if not refs.batches:
        return g_f, None
    return refs.G.mean(0), None


register(UnlearnAlgorithm(
    "ft", combine, forget=None, unlearning_rate=0.1, forget_loss_scale=1.0, order=80,
    aliases=("fine-tune", "finetune"),
    help="FT: fine-tune on the retained tasks' learn buffers only, no forget term (a baseline)."))
