"""Networks, and task masking (re-exported from :mod:`cluctl.masking`, its one implementation).

    from cluctl.models import build_model, masked_loss, masked_predict
    torch.manual_seed(seed)
    net = build_model("resnet18", None, ds.input_shape, ds.num_classes)
    loss = masked_loss(net(x), y, classes)
"""

from cluctl.masking import masked_logits, masked_loss, masked_predict, masked_targets
from cluctl.models.build import DEFAULT_WIDTHS, MODEL_KINDS, build_model, canonical_kind, param_count
from cluctl.models.nets import MLP, BasicBlock, ResNet18

__all__ = [
    "DEFAULT_WIDTHS",
    "MLP",
    "MODEL_KINDS",
    "BasicBlock",
    "ResNet18",
    "build_model",
    "canonical_kind",
    "masked_logits",
    "masked_loss",
    "masked_predict",
    "masked_targets",
    "param_count",
]
