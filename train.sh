#!/usr/bin/env bash
# Train VA-MoE with torchrun: one process per visible GPU, or CPU ranks with gloo when there is
# no GPU. Edit the variables below or set them in the environment; extra arguments are passed to
# train.py, e.g.  bash train.sh --set max_epochs=3 --enable_amp
#
# Multi-node without SLURM: set NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT on every node.
# Under SLURM, prefer one task per GPU with export_DDP_vars.sh (see docs/cluster.md).
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=${CONFIG:-vamoe}                    # section of config/vamoe.yaml
YAML_CONFIG=${YAML_CONFIG:-config/vamoe.yaml}
EXP_DIR=${EXP_DIR:-exp}                    # runs go to $EXP_DIR/$CONFIG/$RUN_NUM
RUN_NUM=${RUN_NUM:-0}
CPU_RANKS=${CPU_RANKS:-2}                  # processes per node when there is no GPU
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

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

echo "train.sh: config $CONFIG, $NNODES node(s) x $NPROC_PER_NODE process(es), run dir $EXP_DIR/$CONFIG/$RUN_NUM"
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  train.py --yaml_config "$YAML_CONFIG" --config "$CONFIG" --run_num "$RUN_NUM" \
  --exp_dir "$EXP_DIR" "$@"
