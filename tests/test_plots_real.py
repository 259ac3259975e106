"""Plots from real digits launches of two algorithms (tiny profile)."""

import matplotlib.image as mpimg
import numpy as np

from conftest import TINY_FLAGS, run_cli


def test_plot_two_real_launches(tmp_path):
    store = tmp_path / "store"
    outs = []
    for algo in ("rl-gem", "neggrad"):
        out = tmp_path / f"res-{algo}"
        run_cli(["launch", "--sequence", "A4", "--algo", algo, "--seeds", 2, "--devices", "cpu", "--per-device", 2,
                 "--threads", 1, "--mia", "--no-plots", "-q", "--out", out, *TINY_FLAGS], store=store, check=0)
        outs.append(out)
    figs = tmp_path / "figs"
    p = run_cli(["plot", *outs, "--out", figs], store=store, check=0)
    written = [line for line in p.stdout.splitlines() if line.strip()]
    names = {f.split("/")[-1] for f in written}
    assert {"tasks_test.png", "tasks_train.png", "tasks_confidence.png", "tow.png", "clu_mix.png",
            "mia_auc.png", "summary.png"} <= names
    for f in written:
        img = mpimg.imread(f)
        h, w = img.shape[:2]
        assert 250 <= h <= 3000 and 800 <= w <= 3000, (f, img.shape)
        rgb = img[..., :3].reshape(-1, 3)
        assert rgb.std() > 0.05, f  # not a blank image
        assert len(np.unique((rgb[::7] * 255).astype(np.uint8), axis=0)) > 20, f  # several colours
    # the metrics view of the same results
    p = run_cli(["evaluate", outs[0], "--metrics", "--json"], store=store, check=0)
    import json

    res = json.loads(p.stdout)
    assert [r["op"] for r in res["per_op"]] == ["L0", "L1", "L2", "L3", "L4", "U4", "U3", "U2", "U1"]
    assert res["final"]["acc"] is not None
