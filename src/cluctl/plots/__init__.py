"""Figures of launch results (``cluctl plot``).

Public API:

* :func:`standard_figures` (results_dirs, out_dir, fmt="png", dpi=120, size=None,
  title=True, labels=None, warn=None) -> list of paths: tasks_test, tasks_train,
  tasks_confidence, tow, clu_mix, mia_auc (when a folder has mia.csv), summary.
  ``size`` "single"/"double": 3.3 / 6.9 in column widths; ``labels``: {run or folder: name}.
* :func:`load_results` (dir) -> :class:`Results`: one launch folder read into arrays.
* :func:`algo_color` (algo) -> the algorithm's fixed colour; :data:`FORMATS`, :data:`FIGURES`.
"""

from cluctl.plots.figures import FIGURES, FORMATS, standard_figures
from cluctl.plots.results import Results, load_results, summary_value
from cluctl.plots.style import ALGO_ORDER, algo_color

__all__ = [
    "standard_figures",
    "load_results",
    "Results",
    "summary_value",
    "algo_color",
    "ALGO_ORDER",
    "FORMATS",
    "FIGURES",
]
