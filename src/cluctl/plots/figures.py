"""The standard figures of one or more launches (``cluctl plot``).

Figures are built on :class:`matplotlib.figure.Figure` directly and written through
the Agg canvas: no pyplot, no display, no global backend switch (safe to call from
a notebook), and every figure is freed when written.

Conventions shared by every figure: one colour per algorithm (:func:`~.style.algo_color`),
a second run of the same algorithm gets a shade and another line style; a line is
the mean over seeds and the band mean ± std (population std over seeds, ddof = 0);
x = operation index, labelled with the operation (row i = the state after op i).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cluctl.atomic import write_bytes
from cluctl.errors import UsageError

from .results import Results, _merge_labels, _nanmean_std, load_results, summary_value
from .style import (
    CHANCE_COLOR,
    LEARN_LINE,
    STATUS_COLORS,
    UNLEARN_LINE,
    op_ticks,
    run_labels,
    run_styles,
)

__all__ = ["FORMATS", "FIGURES", "standard_figures", "check_format"]

FORMATS = ("png", "pdf", "svg")
#: every figure standard_figures can write, in order (mia_auc only when some run has mia.csv)
FIGURES = ("tasks_test", "tasks_train", "tasks_confidence", "tow", "clu_mix", "mia_auc", "summary")

GRID_SIZE = (12.0, 7.0)  # inches, for up to 3 x 3 tasks; larger task counts grow it
LINE_SIZE = (12.0, 6.0)
UNLEARN_SHADE = "#fcefed"  # background of the unlearning ops in the single-axes figures
BETA = 0.2  # CLU_mix's beta (SPEC §7): a perfect run without gain scores 1 / (1 + beta)


# --------------------------------------------------------------------------- context


@dataclass
class _Ctx:
    runs: list[Results]
    labels: list[str]
    styles: list[dict]
    ops: list[str]  # one tick label per row, over all runs and seeds
    status: np.ndarray  # (n_ops, n_tasks) of "learned"/"forgotten"/"unseen"/"mixed"
    learn_at: list[set]  # per task: rows where some run/seed learns it
    unlearn_at: list[set]
    n_tasks: int
    k: int | None
    where: str  # "digits, A4, 5 tasks, 3 seeds"
    diverged_rows: set = field(default_factory=set)  # rows at which some seed diverged (stopped)
    max_epochs_rows: set = field(default_factory=set)  # unlearning that hit --max-epochs

    @property
    def n_ops(self) -> int:
        return len(self.ops)

    @property
    def chance(self) -> float | None:
        return 1.0 / self.k if self.k else None


def _status_rows(ops: list[str], n_tasks: int) -> list[list[str]]:
    cur = ["unseen"] * n_tasks
    out = []
    for op in ops:
        t = int(op[1:])
        if t < n_tasks:
            cur[t] = "learned" if op[0] == "L" else "forgotten"
        out.append(list(cur))
    return out


def _context(runs: list[Results]) -> _Ctx:
    n_tasks = runs[0].n_tasks
    n_ops = max(r.n_ops for r in runs)
    all_ops = [ops for r in runs for ops in r.seed_ops]
    ops = _merge_labels(all_ops + [r.ops for r in runs], n_ops)
    status = np.full((n_ops, n_tasks), "unseen", dtype=object)
    seen = np.zeros((n_ops, n_tasks), dtype=bool)
    learn_at = [set() for _ in range(n_tasks)]
    unlearn_at = [set() for _ in range(n_tasks)]
    for seed_ops in all_ops:
        rows = _status_rows(seed_ops, n_tasks)
        for i, row in enumerate(rows):
            for t, s in enumerate(row):
                if not seen[i, t]:
                    status[i, t] = s
                    seen[i, t] = True
                elif status[i, t] != s:
                    status[i, t] = "mixed"
        for i, op in enumerate(seed_ops):
            t = int(op[1:])
            if t < n_tasks:
                (learn_at if op[0] == "L" else unlearn_at)[t].add(i)
    k = runs[0].k
    seqs = list(dict.fromkeys(r.sequence or "custom sequence" for r in runs))
    counts = sorted({r.n_seeds for r in runs})
    seeds = f"{counts[0]} seed{'s' if counts[0] != 1 else ''}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"
    where = f"{runs[0].dataset}, {' / '.join(seqs)}, {n_tasks} tasks, {seeds}"
    algos = [r.algo for r in runs]
    diverged_rows = {int(f["row"]) for r in runs for f in (r.summary.get("failed") or [])
                     if isinstance(f, dict) and isinstance(f.get("row"), int)}
    max_epochs_rows = {int(f["row"]) for r in runs for f in (r.summary.get("max_epochs_ops") or [])
                       if isinstance(f, dict) and isinstance(f.get("row"), int)}
    return _Ctx(
        runs=runs, labels=run_labels([(r.algo, r.run, r.path) for r in runs]), styles=run_styles(algos),
        ops=ops, status=status, learn_at=learn_at, unlearn_at=unlearn_at, n_tasks=n_tasks, k=k, where=where,
        diverged_rows=diverged_rows, max_epochs_rows=max_epochs_rows,
    )


DIVERGED_COLOR = "#c0392b"
MAX_EPOCHS_COLOR = "#b9770e"


def _mark_outcomes(ax, ctx: _Ctx) -> None:
    """Operations that did not end at their goal: a red X (and dashed line) where a seed
    diverged and stopped, an orange triangle where unlearning hit --max-epochs."""
    for i in sorted(ctx.diverged_rows):
        ax.axvline(i, color=DIVERGED_COLOR, linestyle="--", linewidth=1.2, zorder=3)
        ax.plot([i], [0.04], marker="X", color=DIVERGED_COLOR, markersize=9, transform=ax.get_xaxis_transform(),
                zorder=6, clip_on=False)
    for i in sorted(ctx.max_epochs_rows):
        ax.plot([i], [0.96], marker="v", color=MAX_EPOCHS_COLOR, markersize=7, transform=ax.get_xaxis_transform(),
                zorder=6, clip_on=False)


def _outcome_handles(ctx: _Ctx) -> list:
    out = []
    if ctx.diverged_rows:
        out.append(Line2D([], [], color=DIVERGED_COLOR, marker="X", linestyle="--",
                          label="diverged: the seed stopped here"))
    if ctx.max_epochs_rows:
        out.append(Line2D([], [], color=MAX_EPOCHS_COLOR, marker="v", linestyle="none",
                          label="unlearning hit --max-epochs"))
    return out


def _check_compatible(runs: list[Results]) -> None:
    keys = {(r.dataset.lower(), r.n_tasks) for r in runs}
    if len(keys) > 1:
        parts = "; ".join(f"{r.path}: {r.dataset}, {r.n_tasks} tasks" for r in runs)
        raise UsageError(f"the runs use different datasets or task counts ({parts})",
                         "plot runs of the same dataset and number of tasks together")
    ks = {r.k for r in runs if r.k is not None}
    if len(ks) > 1:
        raise UsageError(f"the runs use different classes per task k ({sorted(ks)})",
                         "plot runs of the same dataset and number of tasks together")


# --------------------------------------------------------------------------- drawing helpers


def _band(ax, x, mean, std, style, label, markers: bool, connect: bool, lo=0.0, hi=1.0):
    """Mean line (+ band mean ± std). ``connect``: join the finite points across NaN
    rows (sparse data) instead of leaving gaps (null rows)."""
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(mean)
    if connect:
        x, mean, std, ok = x[ok], mean[ok], std[ok], ok[ok]
    if not ok.any():
        return
    s = np.where(np.isfinite(std), std, 0.0)
    ax.fill_between(x, np.clip(mean - s, lo, hi), np.clip(mean + s, lo, hi), where=ok,
                    color=style["color"], alpha=0.17, linewidth=0, interpolate=False)
    isolated = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]
    ax.plot(x, mean, color=style["color"], linestyle=style["linestyle"], linewidth=1.8,
            marker="o" if markers else None, markersize=3.2, label=label, zorder=3)
    if not markers and isolated.any():  # a point between two null rows would be invisible
        ax.plot(x[isolated], mean[isolated], "o", color=style["color"], markersize=3.2, zorder=3)


def _shade_status(ax, col: np.ndarray) -> None:
    """Background spans by a task's status at each row."""
    i = 0
    n = len(col)
    while i < n:
        j = i
        while j + 1 < n and col[j + 1] == col[i]:
            j += 1
        if col[i] == "mixed":  # hatched: the hatch takes the edge colour
            ax.axvspan(i - 0.5, j + 0.5, facecolor=STATUS_COLORS["mixed"], edgecolor="#b5b5b5", hatch="//",
                       linewidth=0, zorder=0)
        elif col[i] in STATUS_COLORS:
            ax.axvspan(i - 0.5, j + 0.5, color=STATUS_COLORS[col[i]], linewidth=0, zorder=0)
        i = j + 1


def _grid_shape(n: int) -> tuple[int, int]:
    ncols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / ncols), ncols


def _legend_handles(ctx: _Ctx, ref_label: str | None, status: bool, events: bool, absent=(), absent_note="") -> list:
    """Runs (``absent``: indices of runs without data, labelled with ``absent_note``),
    the reference line, learn/unlearn markers and the status shading."""
    handles = [Line2D([], [], color=st["color"], linestyle=st["linestyle"], linewidth=2,
                      label=f"{lab} {absent_note}" if j in absent else lab, alpha=0.45 if j in absent else 1.0)
               for j, (lab, st) in enumerate(zip(ctx.labels, ctx.styles))]
    if ref_label:
        handles.append(Line2D([], [], color=CHANCE_COLOR, linestyle="--", linewidth=1, label=ref_label))
    if events:
        handles.append(Line2D([], [], color=LEARN_LINE, linestyle=":", linewidth=1.3, label="learn op (L t)"))
        handles.append(Line2D([], [], color=UNLEARN_LINE, linestyle="-.", linewidth=1.1, label="unlearn op (U t)"))
    if status:
        used = set(ctx.status.ravel().tolist())
        for name in ("learned", "forgotten", "mixed"):
            if name in used:
                text = {"learned": "task learned", "forgotten": "task forgotten",
                        "mixed": "status differs by seed/run"}[name]
                handles.append(Patch(facecolor=STATUS_COLORS[name], edgecolor="#bbbbbb",
                                     hatch="//" if name == "mixed" else None, label=text))
    return handles


def _place_legend(fig, axes_spare: list, handles: list) -> None:
    """In the grid's spare cells when there are any, else under the figure."""
    if axes_spare:
        for a in axes_spare:
            a.set_axis_off()
        # the spare cells form the right end of the last row: anchor the legend there
        axes_spare[-1].legend(handles=handles, loc="center", frameon=False, fontsize=9,
                              ncols=1 if len(axes_spare) == 1 else 2)
    else:
        # beside the grid: constrained layout cannot stack a legend with the suptitle or supxlabel
        fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=9)


def _task_grid(ctx: _Ctx, series, title: str, ylabel: str, ref: float | None, ref_label: str | None,
               ylim: tuple[float, float], connect: bool = False, markers: bool | None = None,
               absent_note: str = "(no data)"):
    """One subplot per task; ``series(run) -> (mean, std)`` of shape (n_ops, n_tasks)
    (or None to skip the run)."""
    n = ctx.n_tasks
    nrows, ncols = _grid_shape(n)
    w = max(GRID_SIZE[0], 3.0 * ncols)
    h = max(GRID_SIZE[1], 2.1 * nrows + 1.9)
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if markers is None:
        markers = ctx.n_ops <= 24
    data = [series(r) for r in ctx.runs]
    for t in range(n):
        ax = axes[t]
        _shade_status(ax, ctx.status[:, t])
        for i in sorted(ctx.learn_at[t]):
            ax.axvline(i, color=LEARN_LINE, linestyle=":", linewidth=1.1, alpha=0.8, zorder=1)
        for i in sorted(ctx.unlearn_at[t]):
            ax.axvline(i, color=UNLEARN_LINE, linestyle="-.", linewidth=0.9, alpha=0.8, zorder=1)
        if ref is not None:
            ax.axhline(ref, color=CHANCE_COLOR, linestyle="--", linewidth=1, zorder=2)
        for d, st, lab in zip(data, ctx.styles, ctx.labels):
            if d is None:
                continue
            mean, std = d
            if t < mean.shape[1]:
                _band(ax, np.arange(mean.shape[0]), mean[:, t], std[:, t], st, lab, markers, connect,
                      lo=ylim[0], hi=ylim[1])
        ax.set_ylim(*ylim)
        _mark_outcomes(ax, ctx)
        ax.set_title(f"task {t}", fontsize=10, pad=3)
        below = t + ncols < n  # another task subplot sits underneath: it carries the labels
        op_ticks(ax, ctx.ops, w / ncols, show_labels=not below, fontsize=7.5, minor=False)
        if t % ncols:
            ax.tick_params(axis="y", labelleft=False)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6, zorder=0)
        ax.set_axisbelow(True)
    fig.suptitle(f"{title} — {ctx.where}", fontsize=13)
    fig.supxlabel("operation (each point: the state after that operation)", fontsize=10)
    fig.supylabel(ylabel, fontsize=10)
    absent = {j for j, d in enumerate(data) if d is None}
    _place_legend(fig, list(axes[n:]), _legend_handles(ctx, ref_label, status=True, events=True,
                                                        absent=absent, absent_note=absent_note)
                  + _outcome_handles(ctx))
    return fig


def _line_figure(ctx: _Ctx, series, title: str, ylabel: str, ylim, ref: float | None, ref_label: str | None,
                 empty_note: str, gap_note: str | None = None):
    fig = Figure(figsize=LINE_SIZE, layout="constrained")
    ax = fig.subplots()
    # shade the unlearning operations so the two phases of a sequence stand out
    is_u = np.array([lab.startswith("U") for lab in ctx.ops])
    for i in np.flatnonzero(is_u):
        ax.axvspan(i - 0.5, i + 0.5, color=UNLEARN_SHADE, linewidth=0, zorder=0)
    if ref is not None:
        ax.axhline(ref, color=CHANCE_COLOR, linestyle="--", linewidth=1, zorder=2)
    drawn = 0
    absent = set()
    defined = np.zeros(ctx.n_ops, dtype=bool)
    for j, (r, st, lab) in enumerate(zip(ctx.runs, ctx.styles, ctx.labels)):
        vals = series(r)
        if vals is None or np.isnan(vals).all():
            absent.add(j)
            continue
        mean, std = _nanmean_std(vals)
        drawn += int(np.isfinite(mean).any())
        defined[: len(mean)] |= np.isfinite(mean)
        _band(ax, np.arange(len(mean)), mean, std, st, lab, markers=True, connect=False, lo=ylim[0], hi=ylim[1])
    if drawn and gap_note:  # say why a stretch of rows has no value at all
        i = 0
        while i < ctx.n_ops:
            if defined[i]:
                i += 1
                continue
            j = i
            while j + 1 < ctx.n_ops and not defined[j + 1]:
                j += 1
            if j - i >= 1:
                ax.text((i + j) / 2, (ylim[0] + ylim[1]) / 2, gap_note, ha="center", va="center", fontsize=9,
                        color="#777777", style="italic", wrap=True)
            i = j + 1
    if not drawn:
        ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", fontsize=11,
                color="#444444", wrap=True)
    ax.set_ylim(*ylim)
    _mark_outcomes(ax, ctx)
    op_ticks(ax, ctx.ops, LINE_SIZE[0] - 1.2, fontsize=8.5)
    ax.set_xlabel("operation (each point: the state after that operation)", fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(f"{title} — {ctx.where}", fontsize=13)
    handles = _legend_handles(ctx, ref_label, status=False, events=False, absent=absent, absent_note="— no values")
    if is_u.any():
        handles.append(Patch(facecolor=UNLEARN_SHADE, edgecolor="#bbbbbb", label="unlearning op"))
    handles += _outcome_handles(ctx)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False, fontsize=9)
    return fig


# --------------------------------------------------------------------------- the figures


def _tasks_figure(ctx: _Ctx, table: str, title: str, ylabel: str):
    return _task_grid(ctx, lambda r: r.mean_std(table), title, ylabel, ctx.chance,
                      f"chance 1/k = {ctx.chance:.2f}" if ctx.chance else None, (0.0, 1.02))


def _mia_auc(run: Results):
    """(mean, std) (n_ops, n_tasks) of the loss attack's AUC over seeds, or None."""
    df = run.mia
    if df is None or "auc" not in df.columns:
        return None
    df = df[df["attack"].astype(str).str.lower() == "loss"]
    if "members" in df.columns and df["members"].nunique() > 1:
        kinds = sorted(df["members"].dropna().astype(str).unique())
        df = df[df["members"].astype(str) == ("train" if "train" in kinds else kinds[0])]
    if df.empty:
        return None
    seeds = sorted(df["seed"].unique())
    arr = np.full((len(seeds), run.n_ops, run.n_tasks), np.nan)
    index = {s: j for j, s in enumerate(seeds)}
    auc = pd.to_numeric(df["auc"], errors="coerce").to_numpy(dtype=float)
    for s, row, t, v in zip(df["seed"], df["row"], df["task"], auc):
        if 0 <= row < run.n_ops and 0 <= t < run.n_tasks:
            arr[index[s], row, t] = v
    if np.isnan(arr).all():
        return None
    return _nanmean_std(arr)


def _mia_figure(ctx: _Ctx):
    data = {id(r): _mia_auc(r) for r in ctx.runs}
    vals = [d[0] for d in data.values() if d is not None]
    if not vals:
        return None
    allv = np.concatenate([v[np.isfinite(v)] for v in vals])
    lo = max(0.0, min(0.4, float(allv.min()) - 0.05)) if allv.size else 0.0
    hi = min(1.0, max(0.6, float(allv.max()) + 0.05)) if allv.size else 1.0
    members = _mia_members(ctx.runs)
    title = f"Loss-based MIA: attack ROC AUC{members} (0.5 = cannot tell members)"
    return _task_grid(ctx, lambda r: data[id(r)], title, "attack AUC", 0.5, "AUC 0.5 (no leak)", (lo, hi),
                      connect=True, markers=True, absent_note="— no mia.csv")


def _mia_members(runs: list[Results]) -> str:
    kinds = set()
    for r in runs:
        if r.mia is not None and "members" in r.mia.columns:
            loss = r.mia[r.mia["attack"].astype(str).str.lower() == "loss"]
            kinds |= set(loss["members"].dropna().astype(str))
    if not kinds:
        return ""
    chosen = "train" if "train" in kinds else sorted(kinds)[0]
    return f", members = {chosen} samples" if chosen in ("train", "buffer") else f", members = {chosen}"


_SUMMARY_COLS = [
    ("acc", "ACC", 3), ("bwt", "BWT", 3), ("final_forget_acc", "final\nforget acc", 3),
    ("final_retain_acc", "final\nretain acc", 3), ("final_tow", "final\nCL-ToW", 3),
    ("final_clu_mix", "final\nCLU_mix", 3), ("wall_s", "wall time\nper seed", None),
]


def _fmt_time(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    scale, unit = (1.0, "s") if mean < 120 else ((60.0, "min") if mean < 7200 else (3600.0, "h"))
    m = f"{mean / scale:.1f}"
    return f"{m} ± {std / scale:.1f} {unit}" if std is not None else f"{m} {unit}"


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _summary_figure(ctx: _Ctx):
    from matplotlib.colors import to_rgb

    rows = []
    for lab, r in zip(ctx.labels, ctx.runs):
        cells = [lab]
        one_seed = r.n_seeds == 1
        for key, _, digits in _SUMMARY_COLS:
            mean, std = summary_value(r, key)
            std = None if one_seed else std
            cells.append(_fmt_time(mean, std) if digits is None else _fmt(mean, std, digits))
        cells.append(str(r.n_seeds))
        rows.append(cells)
    header = ["run"] + [name for _, name, _ in _SUMMARY_COLS] + ["seeds"]
    # column widths from the longest text line in each column (header lines included)
    chars = [max([len(line) for line in h.split("\n")] + [len(row[j]) for row in rows]) + 2
             for j, h in enumerate(header)]
    width = max(12.0, 0.085 * sum(chars) + 0.6)  # ~0.085 in per character at 9.5 pt
    row_h = 0.42
    fig = Figure(figsize=(width, 1.25 + row_h * (len(rows) + 1)), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    table = ax.table(cellText=rows, colLabels=header, cellLoc="center", bbox=[0, 0, 1, 1],
                     colWidths=[c / sum(chars) for c in chars])
    table.auto_set_font_size(False)
    table.set_fontsize(9.5)
    for (i, j), cell in table.get_celld().items():
        cell.set_edgecolor("#cccccc")
        if i == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#eeeeee")
        elif j == 0:
            color = ctx.styles[i - 1]["color"]
            cell.set_facecolor(tuple(0.85 + 0.15 * c for c in to_rgb(color)))
            cell.get_text().set_color(color)
            cell.set_text_props(weight="bold", ha="left")
            cell.PAD = 0.03
        elif i % 2 == 0:
            cell.set_facecolor("#f7f7f7")
    ax.set_title(f"Summary — {ctx.where}", fontsize=13)
    fig.supxlabel("mean ± std over seeds (summary.json). ACC, BWT: learning prefix (ops before the first unlearn); "
                  "forget / retain: mean test accuracy of the forgotten / learned tasks after the last op.",
                  fontsize=8.5, color="#555555")
    return fig


# --------------------------------------------------------------------------- entry point


def check_format(fmt: str) -> str:
    f = str(fmt).strip().lower().lstrip(".")
    if f not in FORMATS:
        raise UsageError(f"unknown figure format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    return f


def _save(fig: Figure, path: str, fmt: str, dpi: int) -> None:
    FigureCanvasAgg(fig)
    # no creation dates in vector files: the same results give the same bytes
    meta = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
    buf = io.BytesIO()
    try:
        with rc_context({"svg.hashsalt": "cluctl"}):  # stable SVG element ids
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
        write_bytes(path, buf.getvalue())  # temp file + fsync + os.replace, as every results file
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror or exc})", "pick a writable --out folder") from None
    finally:
        fig.clear()


def standard_figures(results_dirs: list[str], out_dir: str, fmt: str = "png", dpi: int = 120) -> list[str]:
    """Write the standard figures of one or more launch results folders into
    ``out_dir`` (created if needed); returns the paths written, in :data:`FIGURES`
    order: tasks_test, tasks_train, tasks_confidence, tow, clu_mix, mia_auc (only
    when some folder has mia.csv with loss-attack rows), summary.

    UsageError: a folder without summary.json, runs of different datasets or task
    counts, an unknown ``fmt`` (png, pdf, svg), a dpi that is not positive.
    """
    fmt = check_format(fmt)
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or not 10 <= dpi <= 1200:
        raise UsageError(f"--dpi must be an integer from 10 to 1200, got {dpi!r}", "the default is 120")
    if isinstance(results_dirs, (str, os.PathLike)):
        results_dirs = [results_dirs]
    dirs = list(dict.fromkeys(os.fspath(d) for d in results_dirs))  # a folder given twice is plotted once
    if not dirs:
        raise UsageError("no results folder given", "pass one or more folders written by cluctl launch")
    runs = [load_results(d) for d in dirs]
    _check_compatible(runs)
    ctx = _context(runs)

    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out_dir} ({exc.strerror or exc})",
                         "pick a writable --out folder") from None

    builders = [
        ("tasks_test", lambda: _tasks_figure(ctx, "test_acc", "Test accuracy per task", "test accuracy")),
        ("tasks_train", lambda: _tasks_figure(ctx, "train_acc", "Train accuracy per task", "train accuracy")),
        ("tasks_confidence", lambda: _tasks_figure(ctx, "test_conf", "Test confidence per task",
                                                   "test confidence (mean max softmax over the task's k classes)")),
        ("tow", lambda: _line_figure(
            ctx, lambda r: r.metric("tow") if r.metrics is not None else None,
            "CL-ToW (1 = indistinguishable from the reference)", "CL-ToW", (0.0, 1.02), None, None,
            "CL-ToW is undefined at every row: no earlier row had the same learned set\n"
            "and forgot nothing (no reference)",
            gap_note="no reference row:\nCL-ToW undefined")),
        ("clu_mix", lambda: _line_figure(
            ctx, lambda r: r.metric("clu_mix") if r.metrics is not None else None,
            "CLU_mix (thesis definition, train accuracies)", "CLU_mix", (0.0, 1.02), 1.0 / (1.0 + BETA),
            f"1/(1+β) = {1.0 / (1.0 + BETA):.3f}: perfect, no gain", "no CLU_mix values (no metrics.csv)")),
        ("mia_auc", lambda: _mia_figure(ctx)),
        ("summary", lambda: _summary_figure(ctx)),
    ]
    written = []
    for name, build in builders:
        fig = build()
        if fig is None:
            continue
        path = os.path.join(out_dir, f"{name}.{fmt}")
        _save(fig, path, fmt, int(dpi))
        written.append(path)
    return written
