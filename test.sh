#!/usr/bin/env bash
# Evaluate a VA-MoE checkpoint: autoregressive rollout over the test period, scored by
# latitude-weighted RMSE and ACC next to persistence and climatology. Edit the variables below or
# set them in the environment; extra arguments go to inference.py, e.g. --set t_out_test=40.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=${CONFIG:-vamoe}                    # section of config/vamoe.yaml
YAML_CONFIG=${YAML_CONFIG:-config/vamoe.yaml}
EXP_DIR=${EXP_DIR:-exp}
RUN_NUM=${RUN_NUM:-0}
WEIGHTS=${WEIGHTS:-$EXP_DIR/$CONFIG/$RUN_NUM/training_checkpoints/best_ckpt.tar}
OUT_DIR=${OUT_DIR:-results/$CONFIG/$RUN_NUM}

# Huge pages for PyTorch's large CPU buffers (data batches, activations): far fewer page faults.
export THP_MEM_ALLOC_ENABLE=${THP_MEM_ALLOC_ENABLE:-1}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
echo "test.sh: config $CONFIG, weights $WEIGHTS, results in $OUT_DIR"
exec "$PYTHON" inference.py --yaml_config "$YAML_CONFIG" --config "$CONFIG" --weights "$WEIGHTS" \
  --out_dir "$OUT_DIR" "$@"
