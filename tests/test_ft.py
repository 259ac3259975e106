"""``ft`` (fine-tuning on the retained tasks only): every step's update is the mean over
retained tasks of the gradient of the loss on each task's whole learn buffer, computed here
independently; there is no forget term."""

import torch
from torch.func import functional_call

from cluctl.engine import unlearn_task
from cluctl.grads import masked_ce

from conftest import clone_state, unlearn_from_cli


def _buffer(st, task):
    idx = st.buffers[task]["learn"]["indices"]
    cls = st.classes(task)
    y = torch.tensor([cls.index(int(c)) for c in st.dataset.y_train[idx]])
    return st.dataset.x_train[idx], y, torch.tensor(cls)


def test_ft_steps_descend_on_the_retained_tasks_only(tiny_learned3):
    learned3 = tiny_learned3
    st = clone_state(learned3)
    refs = {j: _buffer(learned3, j) for j in (0, 1)}
    steps = []

    def hook(d):
        params = {n: p.detach().clone() for n, p in st.model.named_parameters()}
        steps.append((params, d["x"].clone(), d["g_f"].clone(), d["info"]))

    s = unlearn_task(st, 2, {"algo": "ft", "max_epochs": 2, "stop_acc": 0.0}, step_hook=hook)
    assert s["algo"] == "ft" and s["steps"] == len(steps) == 8 and s["projections"] == 0
    for k, (params, x, g_f, info) in enumerate(steps):
        assert info is None and not bool(g_f.any())  # no forget term
        per_task = []
        for j in (0, 1):  # the retained tasks, each on its whole learn buffer
            p = {n: v.clone().requires_grad_(True) for n, v in params.items()}
            fx, fy, cls = refs[j]
            grads = torch.autograd.grad(masked_ce(functional_call(st.model, p, (fx,)), fy, cls), list(p.values()))
            per_task.append(torch.cat([g.reshape(-1) for g in grads]))
        want = torch.stack(per_task).mean(0)
        assert torch.allclose(x, want, rtol=1e-5, atol=1e-7), k
    # applied at ft's declared rate, the learning rate 0.1
    w0 = torch.cat([v.reshape(-1) for v in steps[0][0].values()])
    w1 = torch.cat([v.reshape(-1) for v in steps[1][0].values()])
    assert torch.allclose(w0 - 0.1 * steps[0][1], w1, rtol=1e-5, atol=1e-6)
    assert st.forgotten == [2] and st.learned == [0, 1]


def test_ft_from_the_cli(tmp_path):
    stderr, used = unlearn_from_cli(tmp_path, "fine-tune", "--max-epochs", "1")
    assert "(ft)" in stderr
    assert (used["algo"], used["unlearning_rate"]) == ("ft", 0.1)
