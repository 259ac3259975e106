"""Colours, labels and axis helpers shared by every figure."""

from __future__ import annotations

import math
import re
import zlib

from matplotlib import colors as mcolors

__all__ = ["ALGO_ORDER", "algo_color", "run_styles", "run_labels", "strip_hash", "op_ticks", "STATUS_COLORS",
           "STATUS_HATCH"]

#: the unlearning algorithms in palette order: algo i gets tab10 colour i, in every figure
ALGO_ORDER = ["neggem", "negagem", "rl-gem", "rl-agem", "alt-neggem", "neggrad"]
_TAB10 = [mcolors.to_hex(c) for c in mcolors.TABLEAU_COLORS.values()]  # tab10, in order
# other algorithms: the rest of tab10 but grey (the chance line's), then two dark extras
_SPARE = [c for c in _TAB10[len(ALGO_ORDER):] if c != "#7f7f7f"] + ["#393b79", "#637939"]

#: background of a task's subplot by its status at each row: neutral greys (a run's colour
#: never sits on a band of the same hue); "forgotten" is hatched, so it reads in grey print
STATUS_COLORS = {"learned": "#ebebeb", "forgotten": "#ffffff", "mixed": "#f6f6f6"}
STATUS_HATCH = {"learned": None, "forgotten": "////", "mixed": ".."}
STATUS_EDGE = "#c4c4c4"  # the hatch colour
# learn / unlearn markers stay neutral: rl-gem and rl-agem already own green and red
LEARN_LINE = "#3a3a3a"
UNLEARN_LINE = "#3a3a3a"
CHANCE_COLOR = "#555555"

_LINESTYLES = ["-", "--", "-.", ":"]


def algo_color(algo: str) -> str:
    """Fixed colour of an algorithm (case-insensitive): tab10 in :data:`ALGO_ORDER`;
    other names get one of the spare colours, chosen by a stable hash of the name."""
    name = str(algo).strip().lower().replace("_", "-")
    name = {"neggrad+": "neggrad", "neggradplus": "neggrad"}.get(name, name)
    if name in ALGO_ORDER:
        return _TAB10[ALGO_ORDER.index(name)]
    return _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def _mix(color: str, other: str, amount: float) -> str:
    a = mcolors.to_rgb(color)
    b = mcolors.to_rgb(other)
    return mcolors.to_hex(tuple((1 - amount) * x + amount * y for x, y in zip(a, b)))


def run_styles(algos: list[str]) -> list[dict]:
    """One ``{"color", "linestyle"}`` per run: the algorithm's colour for its first
    run; later runs of the same algorithm get a darker/lighter shade and another
    line style."""
    seen: dict[str, int] = {}
    out = []
    for algo in algos:
        base = algo_color(algo)
        j = seen.get(algo.lower(), 0)
        seen[algo.lower()] = j + 1
        if j == 0:
            color = base
        else:
            step = (j + 1) // 2
            color = _mix(base, "black" if j % 2 else "white", min(0.6, 0.3 * step))
        out.append({"color": color, "linestyle": _LINESTYLES[j % len(_LINESTYLES)]})
    return out


_HASHED = re.compile(r"^(.*)-([0-9a-f]{8,})$")


def strip_hash(run: str) -> str:
    """A run name without its trailing options hash: ``a4-neggem-3f9c2e1b`` -> ``a4-neggem``."""
    m = _HASHED.match(run)
    return m.group(1) if m else run


def _short_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def run_labels(runs: list[tuple[str, str, str]], configs: list[dict] | None = None,
               sequences: list[str | None] | None = None, hashes: bool = False) -> list[str]:
    """Legend labels for (algo, run, path) triples, without run hashes: the algorithm's
    name, e.g. ``neggem``; runs of the same algorithm are told apart by the options that
    differ between them (``neggem (alpha=0.9)``), else by their sequence, else by run
    name without hash, else by a number. ``hashes``: the old ``algo (run-hash4)``."""
    if hashes:
        def short(run: str) -> str:
            m = _HASHED.match(run)
            return f"{m.group(1)}-{m.group(2)[:4]}" if m else run

        labels = [f"{a} ({short(r)})" for a, r, _ in runs]
        if len(set(labels)) < len(labels):
            labels = [f"{a} ({r})" for a, r, _ in runs]
        if len(set(labels)) < len(labels):
            labels = [f"{a} ({r}, {p})" for a, r, p in runs]
        return labels
    configs = configs or [{} for _ in runs]
    sequences = sequences or [None for _ in runs]
    labels = [a for a, _, _ in runs]
    groups: dict[str, list[int]] = {}
    for j, lab in enumerate(labels):
        groups.setdefault(lab, []).append(j)
    for lab, idx in groups.items():
        if len(idx) < 2:
            continue
        keys = sorted(set.intersection(*(set(configs[j]) for j in idx)))  # options every run records
        differ = [k for k in keys if k != "algo" and len({repr(configs[j].get(k)) for j in idx}) > 1]
        seqs = {sequences[j] for j in idx}
        names = {strip_hash(runs[j][1]) for j in idx}
        for n, j in enumerate(idx):
            if differ:
                extra = ", ".join(f"{k}={_short_value(configs[j].get(k))}" for k in differ[:2])
            elif len(seqs) == len(idx):
                extra = str(sequences[j])
            elif len(names) == len(idx):
                extra = strip_hash(runs[j][1])
            else:
                extra = f"#{n + 1}"
            labels[j] = f"{lab} ({extra})"
    if len(set(labels)) < len(labels):  # still equal (e.g. two options differ beyond the first two)
        seen: dict[str, int] = {}
        for j, lab in enumerate(labels):
            seen[lab] = seen.get(lab, 0) + 1
            if seen[lab] > 1:
                labels[j] = f"{lab} #{seen[lab]}"
    return labels


def op_ticks(ax, labels: list[str], width_in: float, show_labels: bool = True, fontsize: float = 8,
             minor: bool = True) -> None:
    """Operation labels on the x axis of ``ax`` (``width_in`` inches wide): all of
    them horizontally when they fit, else rotated and thinned to every n-th op
    (with ``minor``, minor ticks keep marking every op)."""
    n = len(labels)
    longest = max((len(s) for s in labels), default=2)
    per_inch_flat = 72.0 / (fontsize * 0.62 * (longest + 1.5))  # labels per inch, horizontal
    if n <= max(1, int(width_in * per_inch_flat)):
        step, rotation = 1, 0
    else:
        per_inch_rot = 72.0 / (fontsize * 1.9)  # rotated: one line height plus a gap
        step = max(1, math.ceil(n / max(1.0, width_in * per_inch_rot)))
        rotation = 90
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks)
    if minor and step > 1:
        ax.set_xticks(range(n), minor=True)
    ax.set_xlim(-0.5, n - 0.5)
    if show_labels:
        ax.set_xticklabels([labels[i] for i in ticks], rotation=rotation, fontsize=fontsize,
                           ha="center", va="top")
    else:
        ax.tick_params(axis="x", labelbottom=False)
    ax.tick_params(axis="x", which="minor", length=2)
