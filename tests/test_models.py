"""cluctl.models: networks, build_model, task masking."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cluctl.errors import UsageError
from cluctl.models import (
    build_model,
    masked_logits,
    masked_loss,
    masked_predict,
    masked_targets,
    param_count,
)


def test_resnet18_size():
    torch.manual_seed(0)
    net = build_model("resnet18", 20, (3, 32, 32), 100)
    n = param_count(net)
    print("reduced ResNet-18 nf=20 C=100 parameters:", n)
    assert n == 1_109_240
    assert 1_000_000 <= n <= 1_200_000
    assert net.kind == "resnet18" and net.width == 20
    assert net.linear.in_features == 160 and net.conv1.stride == (1, 1) and net.conv1.bias is None
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 1 + 8 * 2 + 3
    assert param_count(build_model("resnet", None, (3, 32, 32), 100)) == n  # alias + default width


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8), (1, 1, 64)])
def test_resnet18_forward_any_shape(shape):
    torch.manual_seed(0)
    net = build_model("resnet18", 4, shape, 7)
    out = net(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    net.eval()
    assert net(torch.randn(2, *shape)).shape == (2, 7)


def test_mlp():
    torch.manual_seed(0)
    net = build_model("mlp", None, (1, 8, 8), 10)
    assert net.width == 100
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert param_count(net) == (64 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    small = build_model("MLP", 3, (3, 4, 4), 2)
    assert param_count(small) == (48 * 3 + 3) + (3 * 3 + 3) + (3 * 2 + 2)


def test_deterministic_init_from_caller_seed():
    torch.manual_seed(5)
    a = build_model("resnet18", 4, (3, 8, 8), 10)
    torch.manual_seed(5)
    b = build_model("resnet18", 4, (3, 8, 8), 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_model("resnet18", 4, (3, 8, 8), 10)  # RNG moved on: different
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_build_errors():
    with pytest.raises(UsageError) as ei:
        build_model("vgg", None, (3, 32, 32), 10)
    msg = str(ei.value)
    assert "\n" not in msg and "vgg" in msg and "resnet18" in msg and "mlp" in msg
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UsageError):
            build_model("mlp", bad, (1, 8, 8), 10)
    with pytest.raises(UsageError):
        build_model("mlp", None, (8, 8), 10)


# ---------------------------------------------------------------- masking

LOGITS = torch.tensor(
    [
        [0.0, 1.0, 2.0, 3.0, 9.0],
        [5.0, 0.0, 0.0, math.log(3.0), -9.0],
    ]
)
CLASSES = [3, 1]  # task with classes 3 and 1, in that order


def test_masked_logits_and_targets():
    assert torch.equal(masked_logits(LOGITS, CLASSES), torch.tensor([[3.0, 1.0], [math.log(3.0), 0.0]]))
    assert torch.equal(masked_logits(LOGITS, torch.tensor(CLASSES)), masked_logits(LOGITS, CLASSES))
    assert masked_targets(torch.tensor([1, 3, 3, 1]), CLASSES).tolist() == [1, 0, 0, 1]
    for bad in ([2], [0], [7], [-1]):
        with pytest.raises(UsageError) as ei:
            masked_targets(torch.tensor([3] + bad), CLASSES)
        assert f"label {bad[0]} is not one of the task's classes [3, 1]" == str(ei.value)
    with pytest.raises(UsageError):
        masked_targets(torch.tensor([1]), [1, 1])


def test_masked_loss_hand_computed():
    y = torch.tensor([1, 3])
    # row 0: logits [3, 1], true class 1 -> position 1: -log(e^1 / (e^3 + e^1))
    l0 = -math.log(math.exp(1) / (math.exp(3) + math.exp(1)))
    # row 1: logits [log 3, 0], true class 3 -> position 0: -log(3/4)
    l1 = -math.log(0.75)
    per = masked_loss(LOGITS, y, CLASSES, reduction="none")
    assert torch.allclose(per, torch.tensor([l0, l1]))
    assert math.isclose(masked_loss(LOGITS, y, CLASSES).item(), (l0 + l1) / 2, rel_tol=1e-6)
    assert math.isclose(masked_loss(LOGITS, y, CLASSES, reduction="sum").item(), l0 + l1, rel_tol=1e-6)


def test_masked_predict_hand_computed():
    y = torch.tensor([1, 3])
    correct, true_conf, max_conf = masked_predict(LOGITS, y, CLASSES)
    p0 = math.exp(3) / (math.exp(3) + math.exp(1))  # prob of class 3 in row 0
    assert correct.dtype == torch.bool and correct.tolist() == [False, True]
    assert torch.allclose(true_conf, torch.tensor([1 - p0, 0.75]))
    assert torch.allclose(max_conf, torch.tensor([p0, 0.75]))
    # class 4's huge logit in row 0 is ignored: it is not in the task


def test_masked_loss_gradient_only_on_task_logits():
    logits = LOGITS.clone().requires_grad_(True)
    masked_loss(logits, torch.tensor([1, 3]), CLASSES).backward()
    assert torch.all(logits.grad[:, [0, 2, 4]] == 0) and torch.all(logits.grad[:, [1, 3]] != 0)


def test_task_logits_one_task_and_per_sample_matrix_are_index_select():
    """The one masking primitive (cluctl.masking.task_logits, a gather): a 1-D class tensor and
    the per-sample index matrix of the grouped path select exactly ``index_select``'s values
    (bit for bit), and the masked CE / accuracy built on it match the hand-built ones."""
    import torch.nn.functional as F

    from cluctl.masking import class_index, masked_ce, task_accuracy, task_logits

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 10, generator=gen)
    a, b = torch.tensor([3, 1]), torch.tensor([8, 0])
    assert torch.equal(task_logits(logits, a), logits.index_select(1, a))
    # rows 0..3 of task a, rows 4..6 of task b: one N x k matrix
    idx = torch.cat([class_index(a, 4), class_index(b, 3)])
    assert idx.shape == (7, 2) and idx[5].tolist() == [8, 0]
    both = task_logits(logits, idx)
    assert torch.equal(both[:4], logits[:4].index_select(1, a)) and torch.equal(both[4:], logits[4:].index_select(1, b))
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    per = masked_ce(logits, y, idx, reduction="none")
    want = torch.cat([F.cross_entropy(logits[:4].index_select(1, a), y[:4], reduction="none"),
                      F.cross_entropy(logits[4:].index_select(1, b), y[4:], reduction="none")])
    assert torch.equal(per, want)
    assert torch.equal(masked_ce(logits[:4], y[:4], a), F.cross_entropy(logits[:4, [3, 1]], y[:4]))
    acc = task_accuracy(logits, y, idx)
    assert acc.item() == (both.argmax(1) == y).float().mean().item()
    assert masked_logits(LOGITS, CLASSES).data_ptr() != LOGITS.data_ptr()  # a copy, never a view
