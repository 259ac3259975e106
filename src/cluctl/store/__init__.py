"""cluctl's content-addressed experiment store (objects, refs, tombstones, checkpoints).

    from cluctl.store import Store, save_checkpoint, load_checkpoint
    store = Store.open("store")            # None -> $CLUCTL_STORE or ./store
    oid = store.put_json({"type": "scores", ...})
    store.set_ref("tags/best", oid)
    store.resolve("tags/best")             # ref, full id, or unique 8+ hex prefix
"""

from cluctl.store.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from cluctl.store.core import GcReport, Problem, Store, VerifyResult, canonical_json, is_oid

__all__ = [
    "Store",
    "Problem",
    "GcReport",
    "VerifyResult",
    "canonical_json",
    "is_oid",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
]
