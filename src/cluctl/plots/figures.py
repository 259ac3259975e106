"""The standard figures of one or more launches (``cluctl plot``).

Figures are built on :class:`matplotlib.figure.Figure` directly and written through
the Agg canvas: no pyplot, no display, no global backend switch (safe to call from
a notebook), and every figure is freed when written.

Conventions shared by every figure: one colour per algorithm (:func:`~.style.algo_color`),
a second run of the same algorithm gets a shade and another line style; a line is
the mean over seeds and the band mean ± s.d. (the sample standard deviation over seeds,
ddof = 1; no band for one seed), which the legend says ("mean ± s.d., 3 seeds");
x = operation index, labelled with the operation (row i = the state after op i).
Task backgrounds are neutral greys (learned: grey, forgotten: hatched), so no run's
colour sits on a band of its own hue.

Sizes: the default is a screen figure (12 in wide); ``size="single"`` (3.3 in) and
``"double"`` (6.9 in) are journal column widths with fonts of 6.5-9 pt at that size;
``title=False`` leaves titles out (a paper's caption says it); ``labels`` renames runs in
legends (by run name, folder or folder name). Legends never show run hashes.
"""

from __future__ import annotations

import io
import logging
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
    STATUS_EDGE,
    STATUS_HATCH,
    UNLEARN_LINE,
    op_ticks,
    run_labels,
    run_styles,
    strip_hash,
)

__all__ = ["FORMATS", "FIGURES", "SIZES", "standard_figures", "check_format", "check_size", "parse_labels",
           "sequence_warning"]

log = logging.getLogger("cluctl.plots")

FORMATS = ("png", "pdf", "svg")
#: every figure standard_figures can write, in order (mia_auc only when some run has mia.csv)
FIGURES = ("tasks_test", "tasks_train", "tasks_confidence", "tow", "clu_mix", "mia_auc", "summary")

GRID_SIZE = (12.0, 7.0)  # inches, for up to 3 x 3 tasks; larger task counts grow it
LINE_SIZE = (12.0, 6.0)
UNLEARN_SHADE = "#efefef"  # background of the unlearning ops in the single-axes figures (neutral)
BAND_ALPHA = 0.17
BETA = 0.2  # CLU_mix's beta (SPEC §7): a perfect run without gain scores 1 / (1 + beta)


@dataclass(frozen=True)
class _Look:
    """Sizes (inches) and fonts (points) of one figure size."""

    name: str
    width: float | None  # None: the screen figures' own widths
    title: float = 13
    label: float = 10
    tick: float = 8
    legend: float = 9
    task_title: float = 10
    lw: float = 1.8
    ms: float = 3.2
    row_h: float = 2.1  # height of one row of task subplots
    line_h: float = 6.0  # height of the single-axes figures
    legend_cols: int = 4


#: figure sizes: None = screen (12 in), single / double column of a two-column paper
LOOKS = {
    None: _Look("screen", None),
    "double": _Look("double", 6.9, title=9, label=8, tick=7, legend=7, task_title=8, lw=1.3, ms=2.4, row_h=1.45,
                    line_h=2.9, legend_cols=4),
    "single": _Look("single", 3.3, title=8, label=7, tick=6.5, legend=6.5, task_title=7, lw=1.0, ms=1.8,
                    row_h=1.1, line_h=2.4, legend_cols=2),
}
SIZES = ("single", "double")


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
    look: _Look = LOOKS[None]
    titles: bool = True
    band_label: str = "mean ± s.d."

    def title(self, text: str) -> str | None:
        """A figure's title: with the run facts on screen, the title alone at paper sizes."""
        if not self.titles:
            return None
        if self.look.width is None:
            return f"{text} — {self.where}"
        import textwrap

        return textwrap.fill(text, width=max(20, int(self.look.width * 72 / (self.look.title * 0.56))))

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


def _band_label(runs: list[Results]) -> str:
    counts = sorted({r.n_seeds for r in runs})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if counts[-1] < 2:
        return f"mean of {n} seed (no s.d.)"
    return f"mean ± s.d., {n} seeds"


def _context(runs: list[Results], look: _Look = LOOKS[None], titles: bool = True,
             labels: dict[str, str] | None = None) -> _Ctx:
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
    names = run_labels([(r.algo, r.run, r.path) for r in runs], [r.summary.get("config") or {} for r in runs],
                       [r.sequence for r in runs])
    for j, r in enumerate(runs):
        for key in _label_keys(r):
            if labels and key in labels:
                names[j] = labels[key]
                break
    return _Ctx(
        runs=runs, labels=names, styles=run_styles(algos),
        ops=ops, status=status, learn_at=learn_at, unlearn_at=unlearn_at, n_tasks=n_tasks, k=k, where=where,
        diverged_rows=diverged_rows, max_epochs_rows=max_epochs_rows, look=look, titles=titles,
        band_label=_band_label(runs),
    )


def _label_keys(r: Results) -> list[str]:
    """What ``--label KEY=NAME`` may name a run by: its run name, the name without hash,
    its folder as given, the folder's absolute path and its base name."""
    path = os.path.normpath(r.path)
    return list(dict.fromkeys([r.run, path, os.path.abspath(path), os.path.basename(path), strip_hash(r.run)]))


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``["RUN=NAME", ...]`` -> {RUN: NAME}; UsageError for an item without ``=``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, name = str(item).partition("=")
        if not sep or not key.strip() or not name.strip():
            raise UsageError(f"--label '{item}' is not RUN=NAME",
                             "e.g. --label a4-neggem-3f9c2e1b=NegGEM (a run name, or its results folder)")
        out[os.path.normpath(key.strip()) if os.sep in key else key.strip()] = name.strip()
    return out


def sequence_warning(runs: list[Results]) -> str | None:
    """A one-line warning when the runs ran different sequences (rows then compare
    different operations), else None."""
    seqs = list(dict.fromkeys(r.sequence or "?" for r in runs))
    ops = {tuple(r.ops) for r in runs}
    if len(seqs) < 2 and len(ops) < 2:
        return None
    what = " vs ".join(f"{strip_hash(r.run)}: {r.sequence or '?'}" for r in runs)
    if len(seqs) < 2:
        return (f"the runs of sequence {seqs[0]} ran different operations at some rows (a seed-dependent "
                f"sequence with other seeds): figures align them by row index; such rows are marked U*/L*/#i")
    return (f"comparing runs with different sequences ({what}): figures align them by row index, so a row "
            f"may be a different operation in each run")


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


def _band(ax, x, mean, std, style, label, markers: bool, connect: bool, lo=0.0, hi=1.0, lw=1.8, ms=3.2):
    """Mean line (+ band mean ± std). ``connect``: join the finite points across NaN
    rows (sparse data) instead of leaving gaps (null rows)."""
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(mean)
    if connect:
        x, mean, std, ok = x[ok], mean[ok], std[ok], ok[ok]
    if not ok.any():
        return
    s = np.where(np.isfinite(std), std, 0.0)  # no s.d. (one seed): no band
    ax.fill_between(x, np.clip(mean - s, lo, hi), np.clip(mean + s, lo, hi), where=ok,
                    color=style["color"], alpha=BAND_ALPHA, linewidth=0, interpolate=False)
    isolated = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]
    ax.plot(x, mean, color=style["color"], linestyle=style["linestyle"], linewidth=lw,
            marker="o" if markers else None, markersize=ms, label=label, zorder=3)
    if not markers and isolated.any():  # a point between two null rows would be invisible
        ax.plot(x[isolated], mean[isolated], "o", color=style["color"], markersize=ms, zorder=3)


def _shade_status(ax, col: np.ndarray) -> None:
    """Background spans by a task's status at each row."""
    i = 0
    n = len(col)
    while i < n:
        j = i
        while j + 1 < n and col[j + 1] == col[i]:
            j += 1
        if col[i] in STATUS_COLORS:  # hatched ones: the hatch takes the edge colour
            ax.axvspan(i - 0.5, j + 0.5, facecolor=STATUS_COLORS[col[i]], edgecolor=STATUS_EDGE,
                       hatch=STATUS_HATCH[col[i]], linewidth=0, zorder=0)
        i = j + 1


def _grid_shape(n: int, look: _Look = LOOKS[None]) -> tuple[int, int]:
    if look.width is None:
        ncols = max(1, math.ceil(math.sqrt(n)))
    elif look.name == "single":
        ncols = min(n, 2 if n <= 8 else 3)
    else:
        ncols = min(n, 3 if n <= 6 else (4 if n <= 16 else 5))
    return math.ceil(n / ncols), ncols


def _legend_handles(ctx: _Ctx, ref_label: str | None, status: bool, events: bool, absent=(), absent_note="") -> list:
    """Runs (``absent``: indices of runs without data, labelled with ``absent_note``),
    the reference line, learn/unlearn markers and the status shading."""
    handles = [Line2D([], [], color=st["color"], linestyle=st["linestyle"], linewidth=ctx.look.lw + 0.2,
                      label=f"{lab} {absent_note}" if j in absent else lab, alpha=0.45 if j in absent else 1.0)
               for j, (lab, st) in enumerate(zip(ctx.labels, ctx.styles))]
    handles.append(Patch(facecolor="#777777", alpha=BAND_ALPHA * 2, linewidth=0, label=ctx.band_label))
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
                handles.append(Patch(facecolor=STATUS_COLORS[name], edgecolor=STATUS_EDGE,
                                     hatch=STATUS_HATCH[name], label=text))
    return handles


def _legend_entry_width(texts: list[str], look: _Look) -> float:
    """Width (inches) of one legend column holding the widest of ``texts``: the text as
    the font draws it, plus the handle and the padding."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(size=look.legend)
    widest = max(TextToPath().get_text_width_height_descent(x, prop, ismath=False)[0] for x in texts)
    return widest / 72 + (1.8 + 0.5 + 1.0) * look.legend / 72 + 0.05


def _legend_cols(texts: list[str], look: _Look, width: float) -> int:
    """Legend columns that fit ``width`` inches (at most the size's own number)."""
    return max(1, min(look.legend_cols, int(width * 0.97 // _legend_entry_width(texts, look))))


def _place_legend(fig, axes_spare: list, handles: list, look: _Look = LOOKS[None], underneath: bool = False,
                  cols: int | None = None) -> None:
    """In the grid's spare cells when there are any (and, at paper sizes, it fits there),
    else beside (screen) or under (paper sizes) the figure."""
    for a in axes_spare:
        a.set_axis_off()
    if axes_spare and not underneath:
        # the spare cells form the right end of the last row: anchor the legend there
        axes_spare[-1].legend(handles=handles, loc="center", frameon=False, fontsize=look.legend,
                              ncols=1 if len(axes_spare) == 1 else 2,
                              **({} if look.width is None else {"handlelength": 1.8, "handletextpad": 0.5,
                                                                "borderaxespad": 0.0}))
    elif look.width is None:
        # beside the grid: constrained layout cannot stack a legend with the suptitle or supxlabel
        fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=look.legend)
    else:
        fig.legend(handles=handles, loc="outside lower center", frameon=False, fontsize=look.legend,
                   ncols=cols or look.legend_cols, handlelength=1.8, columnspacing=1.0, handletextpad=0.5)


def _task_grid(ctx: _Ctx, series, title: str, ylabel: str, ref: float | None, ref_label: str | None,
               ylim: tuple[float, float], connect: bool = False, markers: bool | None = None,
               absent_note: str = "(no data)"):
    """One subplot per task; ``series(run) -> (mean, std)`` of shape (n_ops, n_tasks)
    (or None to skip the run)."""
    n = ctx.n_tasks
    look = ctx.look
    nrows, ncols = _grid_shape(n, look)
    underneath, legend_cols = False, look.legend_cols
    data = [series(r) for r in ctx.runs]
    if look.width is None:
        w = max(GRID_SIZE[0], 3.0 * ncols)
        h = max(GRID_SIZE[1], 2.1 * nrows + 1.9)
    else:  # a column width: the legend in the spare cells when it fits there, else underneath
        w = look.width
        h = look.row_h * nrows + (0.3 if ctx.titles else 0.05) + 0.3
        texts = [f"{x} {absent_note}" if d is None else x for x, d in zip(ctx.labels, data)]
        texts += [ctx.band_label, ref_label or "", "unlearn op (U t)"]
        texts += [h.get_label() for h in _outcome_handles(ctx)]
        mixed = bool((ctx.status == "mixed").any())
        texts += ["status differs by seed/run"] if mixed else []
        legend_w = _legend_entry_width(texts, look)
        if legend_w > (nrows * ncols - n) * w / ncols * 0.95:
            underneath = True
            legend_cols = _legend_cols(texts, look, w)
            entries = len(ctx.runs) + 6 + mixed + len(_outcome_handles(ctx))
            h += look.legend / 72 * 1.45 * math.ceil(entries / legend_cols) + 0.1
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if markers is None:
        markers = ctx.n_ops <= (24 if look.width is None else 12)
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
                      lo=ylim[0], hi=ylim[1], lw=look.lw, ms=look.ms)
        ax.set_ylim(*ylim)
        _mark_outcomes(ax, ctx)
        ax.set_title(f"task {t}", fontsize=look.task_title, pad=2 if look.width else 3)
        below = t + ncols < n  # another task subplot sits underneath: it carries the labels
        tick = 7.5 if look.width is None else look.tick
        op_ticks(ax, ctx.ops, w / ncols, show_labels=not below, fontsize=tick, minor=False)
        if look.width is not None and not below:  # supxlabel and a legend underneath would overlap
            ax.set_xlabel("operation", fontsize=look.label, labelpad=1)
        if t % ncols:
            ax.tick_params(axis="y", labelleft=False)
        ax.tick_params(axis="y", labelsize=8 if look.width is None else look.tick)
        if look.width is not None:
            ax.tick_params(length=2, pad=1.5, width=0.6)
            for sp in ax.spines.values():
                sp.set_linewidth(0.6)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6, zorder=0)
        ax.set_axisbelow(True)
    heading = ctx.title(title)
    if heading:
        fig.suptitle(heading, fontsize=look.title)
    if look.width is None:
        fig.supxlabel("operation (each point: the state after that operation)", fontsize=look.label)
    fig.supylabel(ylabel, fontsize=look.label)
    absent = {j for j, d in enumerate(data) if d is None}
    _place_legend(fig, list(axes[n:]), _legend_handles(ctx, ref_label, status=True, events=True,
                                                        absent=absent, absent_note=absent_note)
                  + _outcome_handles(ctx), look, underneath, legend_cols)
    return fig


def _line_figure(ctx: _Ctx, series, title: str, ylabel: str, ylim, ref: float | None, ref_label: str | None,
                 empty_note: str, gap_note: str | None = None):
    look = ctx.look
    width = LINE_SIZE[0] if look.width is None else look.width
    fig = Figure(figsize=(width, LINE_SIZE[1] if look.width is None else look.line_h), layout="constrained")
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
        _band(ax, np.arange(len(mean)), mean, std, st, lab, markers=True, connect=False, lo=ylim[0], hi=ylim[1],
              lw=look.lw, ms=look.ms)
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
                ax.text((i + j) / 2, (ylim[0] + ylim[1]) / 2, gap_note, ha="center", va="center",
                        fontsize=9 if look.width is None else look.tick, color="#777777", style="italic", wrap=True)
            i = j + 1
    if not drawn:
        ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center",
                fontsize=11 if look.width is None else look.label, color="#444444", wrap=True)
    ax.set_ylim(*ylim)
    _mark_outcomes(ax, ctx)
    op_ticks(ax, ctx.ops, width - (1.2 if look.width is None else 0.5),
             fontsize=8.5 if look.width is None else look.tick)
    ax.set_xlabel("operation (each point: the state after that operation)" if look.width is None
                  else "operation (state after it)", fontsize=look.label)
    ax.set_ylabel(ylabel, fontsize=look.label)
    if look.width is not None:
        ax.tick_params(axis="y", labelsize=look.tick)
        ax.tick_params(length=2, pad=1.5, width=0.6)
        for sp in ax.spines.values():
            sp.set_linewidth(0.6)
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    heading = ctx.title(title)
    if heading:
        ax.set_title(heading, fontsize=look.title)
    handles = _legend_handles(ctx, ref_label, status=False, events=False, absent=absent, absent_note="— no values")
    if is_u.any():
        handles.append(Patch(facecolor=UNLEARN_SHADE, edgecolor="#bbbbbb", label="unlearning op"))
    handles += _outcome_handles(ctx)
    cols = look.legend_cols if look.width is None else _legend_cols([h.get_label() for h in handles], look, width)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), cols),
               frameon=False, fontsize=look.legend, columnspacing=1.0 if look.width else 2.0)
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
    if ctx.look.width is not None:
        return _summary_columns(ctx, header, rows)
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
    heading = ctx.title("Summary")
    if heading:
        ax.set_title(heading, fontsize=13)
    fig.supxlabel("mean ± s.d. over seeds (sample s.d., ddof 1; none for one seed). ACC, BWT: learning prefix (ops "
                  "before the first unlearn);\nforget / retain: mean test accuracy of the forgotten / learned tasks "
                  "after the last op.", fontsize=8.5, color="#555555")
    return fig


def _summary_columns(ctx: _Ctx, header: list[str], rows: list[list[str]]):
    """The summary at a column width: one column per run, one row per metric."""
    from matplotlib.colors import to_rgb

    look = ctx.look
    names = [h.replace("\n", " ") for h in header[1:]]
    cols = [[row[0] for row in rows]]
    body = [[name] + [row[j + 1] for row in rows] for j, name in enumerate(names)]
    chars = [max(len(r[0]) for r in body) + 2] + [max(len(cols[0][i]), *(len(r[i + 1]) for r in body)) + 2
                                                  for i in range(len(rows))]
    fs = min(look.label, look.width / (0.0092 * sum(chars)))  # ~0.0092 in per character and point
    row_h = fs / 72 * 2.0
    fig = Figure(figsize=(look.width, 0.25 + (0.3 if ctx.titles else 0) + row_h * (len(body) + 1) + 0.3),
                 layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    table = ax.table(cellText=body, colLabels=[""] + cols[0], cellLoc="center", bbox=[0, 0, 1, 1],
                     colWidths=[c / sum(chars) for c in chars])
    table.auto_set_font_size(False)
    table.set_fontsize(fs)
    for (i, j), cell in table.get_celld().items():
        cell.set_edgecolor("#cccccc")
        cell.set_linewidth(0.5)
        if i == 0 and j > 0:
            color = ctx.styles[j - 1]["color"]
            cell.set_facecolor(tuple(0.85 + 0.15 * c for c in to_rgb(color)))
            cell.get_text().set_color(color)
            cell.set_text_props(weight="bold")
        elif j == 0:
            cell.set_text_props(ha="left")
            cell.PAD = 0.03
        elif i % 2 == 0:
            cell.set_facecolor("#f7f7f7")
    heading = ctx.title("Summary")
    if heading:
        ax.set_title(heading, fontsize=look.title)
    fig.supxlabel(f"{ctx.band_label}; ACC, BWT: learning prefix", fontsize=max(fs - 0.5, 5.5), color="#555555")
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


def check_size(size: str | None) -> str | None:
    """None / "screen" (the default), "single" (3.3 in) or "double" (6.9 in)."""
    if size is None:
        return None
    v = str(size).strip().lower()
    if v in ("", "screen", "default"):
        return None
    if v not in SIZES:
        raise UsageError(f"unknown figure size '{size}'", "use single (3.3 in column) or double (6.9 in, both columns)")
    return v


def standard_figures(results_dirs: list[str], out_dir: str, fmt: str = "png", dpi: int = 120,
                     size: str | None = None, title: bool = True, labels: dict[str, str] | None = None,
                     warn=None) -> list[str]:
    """Write the standard figures of one or more launch results folders into
    ``out_dir`` (created if needed); returns the paths written, in :data:`FIGURES`
    order: tasks_test, tasks_train, tasks_confidence, tow, clu_mix, mia_auc (only
    when some folder has mia.csv with loss-attack rows), summary.

    ``size``: None (screen, 12 in wide), ``"single"`` (3.3 in) or ``"double"`` (6.9 in)
    column widths with fonts legible at that size; ``title``: False leaves titles out;
    ``labels``: legend names by run name, folder or folder name (see :func:`parse_labels`);
    ``warn(message)``: called when the runs ran different sequences (default: the
    ``cluctl.plots`` logger).

    UsageError: a folder without summary.json, runs of different datasets or task
    counts, an unknown ``fmt`` (png, pdf, svg) or ``size``, a dpi that is not positive,
    a label naming none of the runs.
    """
    fmt = check_format(fmt)
    look = LOOKS[check_size(size)]
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or not 10 <= dpi <= 1200:
        raise UsageError(f"--dpi must be an integer from 10 to 1200, got {dpi!r}", "the default is 120")
    if isinstance(results_dirs, (str, os.PathLike)):
        results_dirs = [results_dirs]
    dirs = list(dict.fromkeys(os.fspath(d) for d in results_dirs))  # a folder given twice is plotted once
    if not dirs:
        raise UsageError("no results folder given", "pass one or more folders written by cluctl launch")
    runs = [load_results(d) for d in dirs]
    _check_compatible(runs)
    labels = dict(labels or {})
    keys = {k for r in runs for k in _label_keys(r)}
    unknown = [k for k in labels if k not in keys and os.path.abspath(k) not in keys]
    if unknown:
        raise UsageError(f"--label names no run being plotted: {', '.join(unknown)}",
                         "use a run name or results folder among: " + ", ".join(r.run for r in runs))
    labels.update({os.path.abspath(k): v for k, v in labels.items() if os.path.abspath(k) in keys})
    note = sequence_warning(runs)
    if note:
        (warn or log.warning)(note)
    ctx = _context(runs, look, bool(title), labels)

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
