"""Metrics (SPEC §7): ACC/BWT, forget/retain accuracy, CL-ToW, CLU_mix, MIAs.

Pure functions over numpy arrays; see :mod:`cluctl.metrics.core` and
:mod:`cluctl.metrics.mia` for the conventions and documented choices.
"""

from cluctl.metrics.core import (
    acc_bwt,
    clu_mix,
    final_metrics,
    forget_retain,
    parse_ops,
    per_op_table,
    reference_rows,
    task_status,
    tow,
)
from cluctl.metrics.mia import mia_efficacy, mia_loss_attack

__all__ = [
    "task_status",
    "parse_ops",
    "acc_bwt",
    "forget_retain",
    "reference_rows",
    "tow",
    "clu_mix",
    "per_op_table",
    "final_metrics",
    "mia_loss_attack",
    "mia_efficacy",
]
