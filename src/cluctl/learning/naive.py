"""``naive``: plain fine-tuning, no constraint (a baseline)."""

from .base import LearnAlgorithm, register

register(LearnAlgorithm("naive", lambda g, refs, cfg: (g, None), uses_refs=False, order=10,
                        help="plain fine-tuning, no constraint (a baseline)."))
