"""`cluctl plot` and cluctl.plots on synthetic launch results folders.

The helper writes the exact layout `cluctl launch` writes (summary.json, seed-*/,
mean/, std/, metrics.csv, optional mia.csv) with plausible numbers; metrics.csv and
the summary's metrics come from the real metric functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from matplotlib import image as mpimg
from typer.testing import CliRunner

from cluctl.errors import UsageError
from cluctl.metrics.core import final_metrics, per_op_table, task_status
from cluctl.plots import FIGURES, algo_color, load_results, standard_figures
from cluctl.plots.style import run_labels, run_styles

A4_5 = ["L0", "L1", "L2", "L3", "L4", "U4", "U3", "U2", "U1"]
TABLES = ("test_acc", "test_conf", "train_acc", "train_conf")
GRID_PX = (7 * 120, 12 * 120)  # (height, width) of a 5-task grid at the default dpi


def write_results(root: Path, run: str, algo: str, seeds=(0, 1, 2), ops=A4_5, dataset="digits",
                  n_tasks=5, k=2, mia=False, sequence="A4", seed_ops=None) -> Path:
    """A launch results folder with plausible numbers; returns its path."""
    d = root / run
    chance = 1.0 / k
    per_seed = {}
    entries = []
    metrics_frames = []
    for s in seeds:
        ops_s = list(seed_ops[s]) if seed_ops else list(ops)
        rng = np.random.default_rng(1000 * s + sum(map(ord, algo)))
        status = task_status(ops_s, n_tasks)
        mats = {}
        for name in TABLES:
            train = name.startswith("train")
            m = np.zeros((len(ops_s), n_tasks))
            for i, row in enumerate(status):
                for t, st in enumerate(row):
                    if st == "learned":
                        base = (0.99 if train else 0.95) - 0.015 * (i - ops_s.index(f"L{t}"))
                    elif st == "forgotten":
                        base = chance + 0.06
                    else:
                        base = chance
                    if name.endswith("conf"):
                        base = 0.55 + 0.4 * (base - chance) / (1 - chance)
                    m[i, t] = np.clip(base + rng.normal(0, 0.02), 0, 1)
            mats[name] = m
            sd = d / f"seed-{s}"
            sd.mkdir(parents=True, exist_ok=True)
            _write_table(sd / f"{name}.csv", ops_s, m)
        per_seed[s] = mats
        fm = final_metrics(ops_s, mats["test_acc"], mats["train_acc"], k)
        fm.update(seed=s, ops=ops_s, wall_s=40.0 + s, op_wall_s=[4.0] * len(ops_s))
        entries.append(fm)
        t = per_op_table(ops_s, mats["test_acc"], mats["train_acc"], k)
        t.insert(0, "row", range(len(ops_s)))
        t.insert(0, "seed", s)
        metrics_frames.append(t)
    for agg, fn in (("mean", np.mean), ("std", np.std)):
        for name in TABLES:
            (d / agg).mkdir(exist_ok=True)
            _write_table(d / agg / f"{name}.csv", ops, fn([per_seed[s][name] for s in seeds], axis=0))
    pd.concat(metrics_frames).to_csv(d / "metrics.csv", index=False, na_rep="")
    keys = ["acc", "bwt", "final_forget_acc", "final_retain_acc", "final_tow", "final_clu_mix", "wall_s"]

    def agg(fn, key):
        vals = [e[key] for e in entries if e[key] is not None]
        return float(fn(vals)) if vals else None

    summary = {
        "run": run, "sequence": sequence, "ops": list(ops), "algo": algo, "learn_algo": "gem", "dataset": dataset,
        "n_tasks": n_tasks, "k": k, "config": {"dataset": dataset, "algo": algo},
        "provenance": {"cluctl": "0.1.0", "device": "cpu", "threads": 1}, "seeds": entries,
        "mean": {key: agg(np.mean, key) for key in keys}, "std": {key: agg(np.std, key) for key in keys},
    }
    (d / "summary.json").write_text(json.dumps(summary, indent=1))
    if mia:
        rows = []
        for s in seeds:
            rng = np.random.default_rng(7 + s)
            for i, row in enumerate(task_status(list(ops), n_tasks)):
                for t, st in enumerate(row):
                    if st == "unseen":
                        continue
                    auc = (0.62 if st == "learned" else 0.51) + rng.normal(0, 0.015)
                    rows.append(dict(seed=s, row=i, op=ops[i], task=t, status=st, attack="loss", members="train",
                                     acc=auc - 0.05, auc=auc, cv_acc=auc - 0.04, efficacy=""))
                    if st == "forgotten":
                        rows.append(dict(seed=s, row=i, op=ops[i], task=t, status=st, attack="efficacy",
                                         members="train", acc="", auc="", cv_acc="", efficacy=0.7))
        pd.DataFrame(rows).to_csv(d / "mia.csv", index=False)
    return d


def _write_table(path: Path, ops, m: np.ndarray) -> None:
    df = pd.DataFrame(m, columns=[str(t) for t in range(m.shape[1])])
    df.insert(0, "op", list(ops))
    df.to_csv(path, index=False, float_format="%.6f")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    a = write_results(root, "a4-neggem-3f9c2e1b", "neggem", mia=True)
    b = write_results(root, "a4-neggrad-5e6f7a8b", "neggrad")
    return root, a, b


def _cli_app() -> typer.Typer:
    """A small app holding only what cluctl.cli.plot registers (plus a no-op, so
    that "plot" stays a subcommand)."""
    from cluctl.cli.plot import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop():
        pass

    return app


@pytest.fixture(scope="module")
def png_out(two_runs, tmp_path_factory):
    """The PNG figures of both runs, made through the CLI with the default --out."""
    _, a, b = two_runs
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(_cli_app(), ["plot", str(a), str(b)])
    finally:
        os.chdir(old)
    assert res.exit_code == 0, res.output
    return cwd / "plots", res.stdout.strip().splitlines()


# --------------------------------------------------------------------------- loading


def test_load_results_reads_the_layout(two_runs):
    _, a, _ = two_runs
    r = load_results(str(a))
    assert (r.run, r.algo, r.dataset, r.n_tasks, r.k, r.sequence) == ("a4-neggem-3f9c2e1b", "neggem", "digits", 5, 2, "A4")
    assert r.ops == A4_5 and r.seeds == [0, 1, 2] and r.n_seeds == 3
    assert r.tables["test_acc"].shape == (3, 9, 5)
    mean, std = r.mean_std("test_acc")
    assert mean.shape == (9, 5) and np.all(std >= 0)
    np.testing.assert_allclose(mean, r.tables["test_acc"].mean(axis=0))
    tow = r.metric("tow")
    assert tow.shape == (3, 9)
    assert np.isnan(tow[:, :5]).all() and np.isfinite(tow[:, 5:]).all()  # A4: no reference in the prefix
    assert r.mia is not None and set(r.mia["attack"]) == {"loss", "efficacy"}


def test_load_results_recomputes_metrics_without_metrics_csv(tmp_path):
    d = write_results(tmp_path, "a4-neggem-00000000", "neggem", seeds=(0,))
    expected = load_results(str(d)).metric("clu_mix")
    (d / "metrics.csv").unlink()
    np.testing.assert_allclose(load_results(str(d)).metric("clu_mix"), expected, atol=1e-5)  # CSVs hold 6 digits


def test_load_results_falls_back_to_mean_tables(tmp_path):
    d = write_results(tmp_path, "a4-neggem-00000000", "neggem")
    for s in (0, 1, 2):
        for f in (d / f"seed-{s}").iterdir():
            f.unlink()
        (d / f"seed-{s}").rmdir()
    r = load_results(str(d))
    assert r.from_aggregate and r.n_seeds == 3
    mean, std = r.mean_std("test_acc")
    assert mean.shape == (9, 5) and std.max() > 0
    # this folder's std/ was written with ddof 0 (no "std_ddof" in summary.json): read as ddof 1
    stored = pd.read_csv(d / "std" / "test_acc.csv").iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(std, stored * np.sqrt(3 / 2), atol=1e-6)
    from cluctl.plots import summary_value

    accs = [e["acc"] for e in r.summary["seeds"]]
    assert summary_value(r, "acc")[1] == pytest.approx(np.std(accs, ddof=1))  # not the stored ddof-0 value
    assert r.summary["std"]["acc"] == pytest.approx(np.std(accs))
    from cluctl.plots import figures

    ctx = figures._context([r])
    figures._save(figures._line_figure(ctx, lambda x: x.metric("tow"), "t", "y", (0, 1), None, None, "-"),
                  str(tmp_path / "tow.png"), "png", 50)


# --------------------------------------------------------------------------- figures


def test_all_expected_png_files(png_out):
    """stdout: one path per figure; several folders -> ./plots by default."""
    out, lines = png_out
    assert lines == [os.path.join("plots", f"{n}.png") for n in FIGURES]
    assert all((out / f"{n}.png").stat().st_size > 10_000 for n in FIGURES)


@pytest.mark.parametrize("name", FIGURES)
def test_pngs_are_real_images_of_the_expected_size(png_out, name):
    out, _ = png_out
    img = mpimg.imread(str(out / f"{name}.png"))
    h, w = img.shape[:2]
    if name.startswith(("tasks_", "mia_")):
        assert (h, w) == GRID_PX
    elif name == "summary":  # 12 in wide, or wider for long run names
        assert 12 * 120 <= w <= 20 * 120 and 2 * 120 <= h <= 7 * 120
    else:
        assert (h, w) == (6 * 120, 12 * 120)
    rgb = img[..., :3]
    assert rgb.std() > 0.03, "an almost constant image"
    px = (rgb.reshape(-1, 3) * 255).round().astype(np.int64)
    assert len(np.unique(px[:, 0] * 65536 + px[:, 1] * 256 + px[:, 2])) > 50, "too few distinct colours"
    # the run colours are drawn (lines or, in the summary, the row labels)
    for algo in ("neggem", "neggrad") if name != "mia_auc" else ("neggem",):  # neggrad's run has no mia.csv
        c = np.array([int(algo_color(algo)[i:i + 2], 16) for i in (1, 3, 5)])
        near = np.abs((rgb * 255) - c).max(axis=-1) < 12
        assert near.sum() > 30, f"{algo}'s colour is missing from {name}"


def test_pdf_format(two_runs, tmp_path):
    _, a, _ = two_runs
    paths = standard_figures([str(a)], str(tmp_path), fmt="pdf")
    assert paths == [str(tmp_path / f"{n}.pdf") for n in FIGURES]
    for p in paths:
        data = Path(p).read_bytes()
        assert data.startswith(b"%PDF") and len(data) > 5_000


def test_svg_format_and_no_mia_auc_without_mia_csv(two_runs, tmp_path):
    _, _, b = two_runs
    paths = standard_figures([str(b)], str(tmp_path), fmt="SVG")
    assert paths == [str(tmp_path / f"{n}.svg") for n in FIGURES if n != "mia_auc"]
    for p in paths:
        data = Path(p).read_bytes()
        assert data.startswith(b"<?xml") and b"<svg" in data and len(data) > 5_000


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_vector_output_is_reproducible(two_runs, tmp_path, fmt):
    """No creation date, stable SVG ids: the same results give the same bytes."""
    from cluctl.plots import figures

    _, a, b = two_runs
    ctx = figures._context([load_results(str(a)), load_results(str(b))])
    for name in ("one", "two"):
        figures._save(figures._summary_figure(ctx), str(tmp_path / f"{name}.{fmt}"), fmt, 120)
    assert (tmp_path / f"one.{fmt}").read_bytes() == (tmp_path / f"two.{fmt}").read_bytes()


def test_long_sequence_many_tasks(tmp_path):
    """20 tasks, 39 ops (the thesis's A4), one seed: a larger grid, labels thinned."""
    from cluctl.plots import figures

    ops = [f"L{t}" for t in range(20)] + [f"U{t}" for t in range(19, 0, -1)]
    d = write_results(tmp_path, "a4-rl-gem-0123abcd", "rl-gem", seeds=(0,), ops=ops, dataset="cifar100",
                      n_tasks=20, k=5)
    r = load_results(str(d))
    assert (r.n_tasks, r.k, r.n_ops, r.n_seeds) == (20, 5, 39, 1)
    ctx = figures._context([r])
    fig = figures._tasks_figure(ctx, "test_acc", "Test accuracy per task", "test accuracy")
    assert len([a for a in fig.axes if a.get_visible() and a.axison]) == 20
    figures._save(fig, str(tmp_path / "grid.png"), "png", 50)
    h, w = mpimg.imread(str(tmp_path / "grid.png")).shape[:2]
    assert w >= 12 * 50 and h >= 7 * 50
    figures._save(figures._summary_figure(ctx), str(tmp_path / "summary.png"), "png", 50)


def test_op_ticks_thin_long_sequences():
    from matplotlib.figure import Figure

    from cluctl.plots.style import op_ticks

    ax = Figure().subplots()
    op_ticks(ax, A4_5, 4.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == A4_5
    ops = [f"L{t}" for t in range(20)] + [f"U{t}" for t in range(19, 0, -1)]
    op_ticks(ax, ops, 3.0)
    shown = [t.get_text() for t in ax.get_xticklabels()]
    assert 4 <= len(shown) < 39 and shown[0] == "L0"
    assert ax.get_xticklabels()[0].get_rotation() == 90


def test_seed_dependent_ops_are_marked(tmp_path):
    """E4: the last op differs by seed; its tick reads 'U*' and the figures still build."""
    from cluctl.plots import figures

    e4 = {0: [f"L{t}" for t in range(5)] + ["U3"], 1: [f"L{t}" for t in range(5)] + ["U1"]}
    e = write_results(tmp_path, "e4-neggem-89abcdef", "neggem", seeds=(0, 1), ops=e4[0], sequence="E4", seed_ops=e4)
    r = load_results(str(e))
    assert r.ops[-1] == "U*" and r.seed_ops == [e4[0], e4[1]]
    ctx = figures._context([r])
    assert ctx.status[-1, 1] == "mixed" and ctx.status[-1, 3] == "mixed" and ctx.status[-1, 0] == "learned"
    assert ctx.unlearn_at[1] == {5} and ctx.unlearn_at[3] == {5}
    figures._save(figures._tasks_figure(ctx, "test_acc", "t", "y"), str(tmp_path / "e4.png"), "png", 50)


def test_same_algorithm_twice_gets_distinct_styles():
    styles = run_styles(["neggem", "neggem", "neggrad"])
    assert styles[0]["color"] == algo_color("neggem") and styles[2]["color"] == algo_color("neggrad")
    assert styles[1]["color"] != styles[0]["color"] and styles[1]["linestyle"] != styles[0]["linestyle"]
    assert algo_color("NegGEM") == algo_color("neggem") != algo_color("negagem")
    # legends name the algorithm, never the run hash; runs of one algorithm by the options that differ
    assert run_labels([("neggem", "a4-neggem-3f9c2e1b", "x")]) == ["neggem"]
    runs = [("neggem", "a4-neggem-3f9c2e1b", "x"), ("neggem", "a4-neggem-3f9c0000", "y"), ("neggrad", "r", "z")]
    assert run_labels(runs, [{"algo": "neggem", "alpha": 0.9, "lr": 0.1}, {"algo": "neggem", "alpha": 0.5, "lr": 0.1},
                             {}]) == ["neggem (alpha=0.9)", "neggem (alpha=0.5)", "neggrad"]
    assert run_labels(runs[:2], [{}, {}], ["A4", "B4"]) == ["neggem (A4)", "neggem (B4)"]
    labels = run_labels(runs[:2])  # nothing tells them apart: numbered, still no hash
    assert labels == ["neggem (#1)", "neggem (#2)"] and not any("3f9c" in lab for lab in labels)
    # the old style on request: short hashes, full run names when short ones would collide
    assert run_labels(runs[:1], hashes=True) == ["neggem (a4-neggem-3f9c)"]
    assert run_labels(runs[:2], hashes=True) == ["neggem (a4-neggem-3f9c2e1b)", "neggem (a4-neggem-3f9c0000)"]


# --------------------------------------------------------------------------- errors


def _one_line_usage_error(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg
    return msg


def test_missing_summary_json_names_the_folder(two_runs, tmp_path):
    root, a, _ = two_runs
    empty = tmp_path / "not-results"
    empty.mkdir()
    with pytest.raises(UsageError) as ei:
        standard_figures([str(a), str(empty)], str(tmp_path / "p"))
    _one_line_usage_error(ei, str(empty), "summary.json")
    with pytest.raises(UsageError) as ei:  # the parent folder: the hint points at the runs inside
        standard_figures([str(root)], str(tmp_path / "p"))
    _one_line_usage_error(ei, "run folders")
    with pytest.raises(UsageError) as ei:
        load_results(str(tmp_path / "nope"))
    _one_line_usage_error(ei, "nope")


def test_mismatched_datasets(two_runs, tmp_path):
    _, a, _ = two_runs
    other = write_results(tmp_path, "a4-neggem-cafebabe", "neggem", seeds=(0,), dataset="cifar100", k=20)
    with pytest.raises(UsageError) as ei:
        standard_figures([str(a), str(other)], str(tmp_path / "p"))
    _one_line_usage_error(ei, "different datasets", "digits", "cifar100")


def test_bad_format_lists_valid_ones(two_runs, tmp_path):
    _, a, _ = two_runs
    with pytest.raises(UsageError) as ei:
        standard_figures([str(a)], str(tmp_path), fmt="jpeg")
    _one_line_usage_error(ei, "jpeg", "png", "pdf", "svg")
    assert not list(tmp_path.iterdir())


def test_corrupt_table_is_a_usage_error(tmp_path):
    d = write_results(tmp_path, "a4-neggem-00000000", "neggem", seeds=(0,))
    (d / "seed-0" / "train_conf.csv").write_text("x,y\n1,2\n")
    with pytest.raises(UsageError) as ei:
        load_results(str(d))
    _one_line_usage_error(ei, "train_conf.csv", "op")


# --------------------------------------------------------------------------- CLI


@pytest.fixture()
def cli_app():
    return _cli_app()


def test_cli_default_out_dir_and_options(two_runs, cli_app, monkeypatch):
    """One folder -> <folder>/plots; --format and --dpi reach the library (the
    rendering itself is covered above, so it is replaced here)."""
    import cluctl.plots

    _, a, b = two_runs
    calls = []

    def fake(dirs, out_dir, fmt="png", dpi=120, **kw):
        calls.append((list(dirs), out_dir, fmt, dpi))
        return [os.path.join(out_dir, f"tasks_test.{fmt}")]

    monkeypatch.setattr(cluctl.plots, "standard_figures", fake)
    res = CliRunner().invoke(cli_app, ["plot", str(b), "--dpi", "60", "--format", "pdf"])
    assert res.exit_code == 0, res.output
    assert calls == [([str(b)], os.path.join(str(b), "plots"), "pdf", 60)]
    assert res.stdout.strip() == os.path.join(str(b), "plots", "tasks_test.pdf")
    res = CliRunner().invoke(cli_app, ["plot", str(a), str(b), "-o", "figs", "-q"])
    assert res.exit_code == 0 and calls[-1][1] == "figs"


def test_cli_help_has_an_example(cli_app):
    res = CliRunner().invoke(cli_app, ["plot", "--help"])
    assert res.exit_code == 0
    assert "Example: cluctl plot results/a4-neggem-1a2b3c4d results/a4-neggrad-5e6f7a8b" in res.stdout


def test_cli_errors_are_usage_errors(two_runs, tmp_path, cli_app):
    _, a, _ = two_runs
    res = CliRunner().invoke(cli_app, ["plot", str(a), "--format", "gif", "--out", str(tmp_path)])
    assert isinstance(res.exception, UsageError) and "png, pdf, svg" in str(res.exception)
    res = CliRunner().invoke(cli_app, ["plot", str(tmp_path / "missing")])
    assert isinstance(res.exception, UsageError)


def test_main_cli_one_line_error_exit_2(tmp_path, capsys):
    """Through the real entry point: one line on stderr, exit code 2."""
    from cluctl.cli.main import main

    with pytest.raises(SystemExit) as ei:
        main(["plot", str(tmp_path)])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "summary.json" in err and "\n" not in err


# --------------------------------------------------------------------------- figures for papers


def _texts(fig):
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("size,inches", [("single", 3.3), ("double", 6.9)])
def test_paper_sizes_are_column_wide_with_legible_fonts(two_runs, tmp_path, size, inches):
    from cluctl.plots import figures

    _, a, b = two_runs
    ctx = figures._context([load_results(str(a)), load_results(str(b))], figures.LOOKS[size])
    for name, build in (
            ("tasks", lambda: figures._tasks_figure(ctx, "test_acc", "Test accuracy per task", "test accuracy")),
            ("tow", lambda: figures._line_figure(ctx, lambda r: r.metric("tow"), "CL-ToW", "CL-ToW", (0, 1.02),
                                                 None, None, "-")),
            ("summary", lambda: figures._summary_figure(ctx))):
        fig = build()
        sizes = [t.get_fontsize() for t in _texts(fig)]
        assert sizes and min(sizes) >= 6.0 and max(sizes) <= 9.5, (name, sorted(set(sizes)))
        figures._save(fig, str(tmp_path / f"{name}.png"), "png", 40)
        h, w = mpimg.imread(str(tmp_path / f"{name}.png")).shape[:2]
        assert w == round(inches * 40), (name, w)  # exactly the column width
        assert h <= 6.5 * 40, (name, h)


def _fake_save(monkeypatch) -> dict:
    """Replace the (slow) rendering: {file name: the figure's visible texts}."""
    from cluctl.plots import figures

    saved = {}

    def save(fig, path, fmt, dpi):
        saved[os.path.basename(path)] = [t.get_text() for t in _texts(fig)]
        Path(path).write_bytes(b"stub")
        fig.clear()

    monkeypatch.setattr(figures, "_save", save)
    return saved


def test_no_title_and_labels(two_runs, tmp_path, monkeypatch):
    from cluctl.plots import figures

    _, a, b = two_runs
    runs = [load_results(str(a)), load_results(str(b))]
    labels = figures.parse_labels([f"{runs[0].run}=NegGEM (ours)", f"{b}=NegGrad+"])
    ctx = figures._context(runs, figures.LOOKS["single"], titles=False, labels={**labels, os.path.abspath(str(b)): "NegGrad+"})
    assert ctx.labels == ["NegGEM (ours)", "NegGrad+"]
    fig = figures._tasks_figure(ctx, "test_acc", "Test accuracy per task", "test accuracy")
    texts = [t.get_text() for t in _texts(fig)]
    assert "NegGEM (ours)" in texts and "NegGrad+" in texts
    assert not any("Test accuracy" in t for t in texts)  # no title
    # through standard_figures: folder names and run names both work; an unknown one is an error
    saved = _fake_save(monkeypatch)
    standard_figures([str(a), str(b)], str(tmp_path / "ok"), fmt="svg", size="single", title=False,
                     labels={os.path.basename(str(b)): "NegGrad+"})
    assert "NegGrad+" in saved["tasks_test.svg"] and "Test accuracy per task" not in saved["tasks_test.svg"]
    with pytest.raises(UsageError, match="names no run"):
        standard_figures([str(a)], str(tmp_path / "x"), labels={"a4-nope-00000000": "X"})
    with pytest.raises(UsageError, match="RUN=NAME"):
        figures.parse_labels(["no-equals-sign"])


def test_legends_have_no_run_hashes_and_say_mean_sd_n_seeds(two_runs, tmp_path):
    import re

    from cluctl.plots import figures

    _, a, b = two_runs
    ctx = figures._context([load_results(str(a)), load_results(str(b))])
    for fig in (figures._tasks_figure(ctx, "test_acc", "t", "y"),
                figures._line_figure(ctx, lambda r: r.metric("tow"), "t", "y", (0, 1), None, None, "-")):
        texts = [t.get_text() for t in _texts(fig)]
        assert not any(re.search(r"[0-9a-f]{4,}", t) for t in texts), texts
        assert "mean ± s.d., 3 seeds" in texts
    one = write_results(tmp_path, "a4-neggem-0000aaaa", "neggem", seeds=(0,))
    ctx1 = figures._context([load_results(str(one))])
    assert ctx1.band_label == "mean of 1 seed (no s.d.)"
    assert np.isnan(load_results(str(one)).mean_std("test_acc")[1]).all()  # no band for one seed


def test_bands_are_mean_plus_minus_sample_sd(two_runs):
    from cluctl.plots import figures

    _, a, _ = two_runs
    r = load_results(str(a))
    ctx = figures._context([r])
    fig = figures._tasks_figure(ctx, "test_acc", "t", "y")
    band = [c for c in fig.axes[0].collections if c.get_paths() and len(c.get_paths()[0].vertices) > 4][0]
    ys = band.get_paths()[0].vertices[:, 1]
    x = r.tables["test_acc"][:, :, 0]
    top = np.clip(x.mean(axis=0) + x.std(axis=0, ddof=1), 0, 1.02)
    assert np.isclose(ys.max(), top.max(), atol=1e-9)


def test_status_shading_is_neutral():
    """Grey backgrounds (and hatching) only: a run's colour never sits on a band of its hue."""
    from matplotlib.colors import to_rgb

    from cluctl.plots import figures
    from cluctl.plots.style import STATUS_COLORS, STATUS_HATCH

    for color in list(STATUS_COLORS.values()) + [figures.UNLEARN_SHADE]:
        r, g, b = to_rgb(color)
        assert max(r, g, b) - min(r, g, b) < 0.02, color
    assert STATUS_COLORS["learned"] != STATUS_COLORS["forgotten"] or STATUS_HATCH["learned"] != STATUS_HATCH["forgotten"]


def test_different_sequences_warn(tmp_path, two_runs, monkeypatch):
    from cluctl.plots import figures

    _, a, _ = two_runs
    b4 = write_results(tmp_path, "b4-neggem-12345678", "neggem", ops=["L0", "L1", "U1", "L2", "L3", "L4", "U4", "U3",
                                                                       "U2"], sequence="B4")
    runs = [load_results(str(a)), load_results(str(b4))]
    msg = figures.sequence_warning(runs)
    assert msg and "different sequences" in msg and "A4" in msg and "B4" in msg
    assert figures.sequence_warning(runs[:1]) is None
    _fake_save(monkeypatch)
    seen = []
    standard_figures([str(a), str(b4)], str(tmp_path / "p"), fmt="svg", size="single", warn=seen.append)
    assert seen == [msg]
    # the CLI: one warning line on stderr, figures still written
    res = CliRunner().invoke(_cli_app(), ["plot", str(a), str(b4), "--out", str(tmp_path / "q"), "--size", "double",
                                          "--format", "pdf"])
    assert res.exit_code == 0, res.output
    assert "warning: comparing runs with different sequences" in res.stderr
    assert res.stdout.strip().splitlines()[0].endswith("tasks_test.pdf")


def test_cli_paper_options_reach_the_library(two_runs, cli_app, monkeypatch):
    import cluctl.plots

    _, a, b = two_runs
    calls = []
    monkeypatch.setattr(cluctl.plots, "standard_figures",
                        lambda dirs, out_dir, **kw: calls.append(kw) or [os.path.join(out_dir, "x.png")])
    res = CliRunner().invoke(cli_app, ["plot", str(a), str(b), "-o", "figs", "--size", "single", "--no-title",
                                       "--label", "a4-neggem-3f9c2e1b=NegGEM", "--label", f"{b}=NegGrad"])
    assert res.exit_code == 0, res.output
    kw = calls[-1]
    assert kw["size"] == "single" and kw["title"] is False
    assert kw["labels"] == {"a4-neggem-3f9c2e1b": "NegGEM", os.path.normpath(str(b)): "NegGrad"}
    res = CliRunner().invoke(cli_app, ["plot", str(a), "--size", "poster"])
    assert isinstance(res.exception, UsageError) and "single" in str(res.exception)
    help_text = CliRunner().invoke(cli_app, ["plot", "--help"], env={"COLUMNS": "200"}).stdout
    for flag in ("--size", "--no-title", "--label", "--format"):
        assert flag in help_text


@pytest.mark.parametrize("n_tasks", [4, 5])
def test_paper_legends_stay_inside_the_figure(tmp_path, n_tasks):
    """Long run names at 3.3 in: the legend moves under the grid and takes fewer columns
    rather than being cut off (4 tasks: no spare cell; 5: one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cluctl.plots import figures

    ops = [f"L{t}" for t in range(n_tasks)] + [f"U{t}" for t in range(n_tasks - 1, 0, -1)]
    runs = [load_results(str(write_results(tmp_path, f"a4-{a}-1234567{j}", a, seeds=(0, 1), ops=ops,
                                           n_tasks=n_tasks, k=2))) for j, a in enumerate(("neggem", "rl-gem"))]
    labels = {runs[0].run: "NegGEM with the most memorized buffers", runs[1].run: "RL-GEM"}
    ctx = figures._context(runs, figures.LOOKS["single"], labels=labels)
    for fig in (figures._tasks_figure(ctx, "test_acc", "t", "y"),
                figures._line_figure(ctx, lambda r: r.metric("tow"), "t", "y", (0, 1), None, None, "-")):
        FigureCanvasAgg(fig).draw()
        legends = fig.legends + [a.get_legend() for a in fig.axes if a.get_legend() is not None]
        assert legends
        for leg in legends:
            box = leg.get_window_extent()
            assert box.x0 >= -1 and box.x1 <= fig.bbox.width + 1, (box, fig.bbox)
