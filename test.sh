#!/usr/bin/env bash
# Evaluate a VA-MoE checkpoint with torchrun: one process per visible GPU (or CPU ranks with gloo
# when there is no GPU), each rolling out its share of the test initial conditions; the scores
# (latitude-weighted RMSE and ACC next to persistence and climatology) are summed over the ranks
# and rank 0 writes the results. Edit the variables below or set them in the environment; extra
# arguments go to inference.py, e.g.  bash test.sh --set t_out_test=40 --compare other=other.zarr
#
# WEIGHTS= (empty) scores only the --compare forecast files. Multi-node without SLURM: set
# NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT on every node (see docs/cluster.md).
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=${CONFIG:-vamoe}                    # section of config/vamoe.yaml
YAML_CONFIG=${YAML_CONFIG:-config/vamoe.yaml}
EXP_DIR=${EXP_DIR:-exp}
RUN_NUM=${RUN_NUM:-0}
WEIGHTS=${WEIGHTS-$EXP_DIR/$CONFIG/$RUN_NUM/training_checkpoints/best_ckpt.tar}
OUT_DIR=${OUT_DIR:-results/$CONFIG/$RUN_NUM}
CPU_RANKS=${CPU_RANKS:-2}                  # processes per node when there is no GPU
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29501}          # train.sh's default + 1: both can run on one node

# Huge pages for PyTorch's large CPU buffers (data batches, activations): far fewer page faults.
export THP_MEM_ALLOC_ENABLE=${THP_MEM_ALLOC_ENABLE:-1}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
  if [ "$NGPU" -gt 0 ]; then NPROC_PER_NODE=$NGPU; else NPROC_PER_NODE=$CPU_RANKS; fi
fi
# One thread per CPU rank unless the caller chose otherwise (torchrun's own default).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

WEIGHTS_ARGS=()
if [ -n "$WEIGHTS" ]; then WEIGHTS_ARGS=(--weights "$WEIGHTS"); fi
echo "test.sh: config $CONFIG, weights ${WEIGHTS:-none (forecast files only)}," \
  "$NNODES node(s) x $NPROC_PER_NODE process(es), results in $OUT_DIR"
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  inference.py --yaml_config "$YAML_CONFIG" --config "$CONFIG" ${WEIGHTS_ARGS[@]+"${WEIGHTS_ARGS[@]}"} \
  --out_dir "$OUT_DIR" "$@"
