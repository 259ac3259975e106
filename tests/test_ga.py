"""``ga`` (plain gradient ascent, no projection): every step's update is the gradient of
-(s * CE) on the forget batch, computed here independently from the buffer indices."""

import pytest
import torch
from torch.func import functional_call

from cluctl.engine import unlearn_task
from cluctl.grads import masked_ce

from conftest import clone_state, unlearn_from_cli


def _forget_batch(st, task, step, b):
    buf = st.buffers[task]
    u, l_ = buf["unlearn"]["indices"], buf["learn"]["indices"]
    idx = [u[(step * b + i) % len(u)] for i in range(b)] + [l_[(step * b + i) % len(l_)] for i in range(b)]
    cls = st.classes(task)
    x = st.dataset.x_train[idx]
    y = torch.tensor([cls.index(int(c)) for c in st.dataset.y_train[idx]])
    return x, y, torch.tensor(cls)


@pytest.mark.parametrize("scale", [None, 3.0])
def test_ga_steps_are_plain_gradient_ascent(tiny_learned3, scale):
    st = clone_state(tiny_learned3)
    before = clone_state(tiny_learned3)
    steps = []

    def hook(d):
        params = {n: p.detach().clone() for n, p in st.model.named_parameters()}
        steps.append((params, d["x"].clone(), d["g_f"].clone(), d["G"], d["info"]))

    s = unlearn_task(st, 2, {"algo": "ga", "max_epochs": 2, "stop_acc": 0.0, "forget_loss_scale": scale},
                     step_hook=hook)
    assert s["algo"] == "ga" and s["stopped"] == "max-epochs" and s["steps"] == len(steps) == 8
    assert s["projections"] == 0
    sc = 1.0 if scale is None else scale  # ga's declared default forget-loss scale is 1
    for k, (params, x, g_f, G, info) in enumerate(steps):
        assert G is None and info is None  # no reference gradients, no projection
        fx, fy, cls = _forget_batch(before, 2, k, 10)
        p = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        loss = -(sc * masked_ce(functional_call(st.model, p, (fx,)), fy, cls))
        grads = torch.autograd.grad(loss, list(p.values()))
        want = torch.cat([g.reshape(-1) for g in grads])
        assert torch.allclose(x, want, rtol=1e-5, atol=1e-7), k
        assert torch.equal(x, g_f)
    # and those updates were applied at the unlearning rate (0.01 by default)
    w0 = torch.cat([v.reshape(-1) for v in steps[0][0].values()])
    w1 = torch.cat([v.reshape(-1) for v in steps[1][0].values()])
    assert torch.allclose(w0 - 0.01 * steps[0][1], w1, rtol=1e-5, atol=1e-6)


def test_ga_from_the_cli(tmp_path):
    stderr, used = unlearn_from_cli(tmp_path, "Gradient-Ascent", "--max-epochs", "1")
    assert "(ga)" in stderr
    assert (used["algo"], used["unlearning_rate"], used["forget_loss_scale"]) == ("ga", 0.01, 1.0)
