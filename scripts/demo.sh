#!/bin/sh
# The main job on the embedded default data: scikit-learn's digits (offline), 5 tasks of
# 2 classes, learned one at a time with GEM; each `cluctl learn` continues the previous
# checkpoint. Then the per-task accuracies of the final model.
set -e
MODEL=${DEMO_MODEL:-mlp}
id=$(cluctl learn --task 0 --dataset digits --model "$MODEL" --seed 0 --learn-algo gem)
for t in 1 2 3 4; do
  id=$(cluctl learn --task "$t" --from "$id")
done
cluctl store tag demo "$id" >/dev/null
cluctl evaluate "$id"
echo "store: $CLUCTL_STORE   final checkpoint: $id (tag: demo)" >&2
