"""Replay-buffer selection (SPEC §5): which of a task's training samples a buffer keeps.

Buffers are lists of indices into the dataset's training set, never pixel copies.

- ``first``: the first n samples seen during the task's first epoch (GEM's ring buffer).
- ``random``: n samples uniformly without replacement.
- ``same`` (unlearn buffer only): reuse the learn buffer.
- ``most`` / ``least``: round(split * n) slots by memorization score (highest first for
  ``most``, lowest first for ``least``), the remaining slots uniformly at random from the
  samples not already chosen; no duplicates; the final order is shuffled.

All randomness comes from the ``torch.Generator`` passed in (seeded per operation), so a
selection replays identically.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError


def buffer_size(memories: int, n_samples: int) -> int:
    return min(int(memories), int(n_samples))


def select_random(indices: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(len(indices), generator=gen)[:n]
    return indices[perm]


def select_ranked(
    indices: torch.Tensor,
    scores: torch.Tensor | np.ndarray,
    n: int,
    split: float,
    kind: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """Pick n of ``indices``: round(split * n) by score, the rest at random, shuffled.

    ``scores`` holds one score per entry of ``indices`` (same order). Ties in the score
    are broken by position (stable sort), so the choice is deterministic.
    """
    if kind not in ("most", "least"):
        raise UsageError(f"ranked buffer type must be 'most' or 'least', got '{kind}'")
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if scores.shape != (len(indices),):
        raise UsageError(
            f"memorization scores cover {tuple(scores.shape)} samples but the task has {len(indices)}"
        )
    n = min(n, len(indices))
    n_ranked = int(round(split * n))
    order = torch.argsort(scores, descending=(kind == "most"), stable=True)
    ranked_pos = order[:n_ranked]
    rest_pos = order[n_ranked:]
    pick_rest = rest_pos[torch.randperm(len(rest_pos), generator=gen)[: n - n_ranked]]
    chosen = torch.cat([ranked_pos, pick_rest])
    chosen = chosen[torch.randperm(len(chosen), generator=gen)]
    return indices[chosen]
