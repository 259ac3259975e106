"""Byte identity across refactors: fixed tiny runs on digits (resnet18 width 4 and mlp, fast and
classic; GEM learning of 3 tasks, then every unlearning algorithm on task 1), printing
checkpoint ids, accuracies, MIA, reference-gradient and BatchNorm hashes, a memorization
estimate and proxy, and A-GEM (plain and paper variant).

    python benchmarks/identity_check.py > before.txt     # on the old commit
    python benchmarks/identity_check.py > after.txt      # on the new one
    cmp before.txt after.txt                            # no output: byte-identical

Single-threaded (torch.set_num_threads(1)), CPU; about a minute on 2 cores.
"""
import hashlib, sys, tempfile, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
from cluctl import api
from cluctl.grads import TaskBatch, ref_grads_classic, ref_grads_fast, ref_grads_vmap, batch_grad, masked_ce

def h(t):
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]

torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as d:
    for model, width in (("resnet18", 4), ("mlp", 32)):
        for impl in ("fast", "classic"):
            kw = dict(dataset="digits", model=model, width=width, epochs=1, memories=32, seed=7, store=d, impl=impl,
                      learn_buffer_type="random", unlearn_buffer_type="random")
            r = api.learn(0, learn_algo="gem", **kw)
            ids = [r.id]
            for t in (1, 2):
                r = api.learn(t, from_ref=r.id, store=d, impl=impl)
                ids.append(r.id)
            top = r.id
            for algo in ("neggem", "negagem", "rl-gem", "alt-neggem", "neggrad", "ga", "ft"):
                u = api.unlearn(1, from_ref=top, store=d, impl=impl, algo=algo)
                ids.append(f"{algo}:{u.id}")
                ev = api.evaluate(u.id, store=d)
                ids.append(f"{algo}:acc=" + ",".join(f"{x['test_acc']}" for x in ev["tasks"]))
            ev = api.evaluate(top, store=d)
            print(model, impl, " ".join(ids))
            print("  acc", [x["test_acc"] for x in ev["tasks"]], [x["train_conf"] for x in ev["tasks"]])
            try:
                m = api.mia(top, 1, store=d, seed=0)
                print("  mia", m)
            except Exception as e:
                print("  mia err", type(e).__name__, e)
    # direct gradients (grouped, classic, vmap) on a fixed model with BN
    from cluctl.models import build_model
    torch.manual_seed(0)
    net = build_model("resnet18", 4, (1, 8, 8), 10)
    g = torch.Generator().manual_seed(1)
    bs = [TaskBatch(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g),
                    torch.tensor([2 * j, 2 * j + 1])) for j in range(3)]
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    for fn in (ref_grads_fast, ref_grads_classic, ref_grads_vmap):
        net.load_state_dict(sd)
        G = fn(net, bs)
        print(fn.__name__, h(G), h(net.bn1.running_mean) if hasattr(net, "bn1") else "")
    net.load_state_dict(sd)
    gb, loss = batch_grad(net, lambda m: masked_ce(m(bs[0].x), bs[0].y, bs[0].classes))
    print("batch_grad", h(gb), float(loss))
    # memorization: tiny estimate and proxy
    from cluctl.buffers import memorization as M
    from cluctl.data import load_dataset
    ds = load_dataset("digits")
    s, info = M.estimate_memorization(ds, models=2, seed=3, store=None, model="mlp", width=16, epochs=1, lr=0.05, batch_size=64, threads=1)
    print("estimate", hashlib.sha256(np.asarray(s).tobytes()).hexdigest()[:16])
    p = M.confidence_proxy(ds, "mlp", 16, 3, epochs=1)
    print("proxy", hashlib.sha256(np.asarray(p).tobytes()).hexdigest()[:16])
# A-GEM paper variant (pooled reference gradient: refs.pooled_grad) and plain agem
with tempfile.TemporaryDirectory() as d:
    for extra in ({"learn_algo": "agem", "agem_sample": 20}, {"learn_algo": "agem"}):
        r = api.learn(0, dataset="digits", model="resnet18", width=4, epochs=1, memories=32, seed=5, store=d, **extra)
        r = api.learn(1, from_ref=r.id, store=d)
        r = api.learn(2, from_ref=r.id, store=d)
        print("agem", extra, r.id, [x["test_acc"] for x in api.evaluate(r.id, store=d)["tasks"]])
