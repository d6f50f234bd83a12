#!/usr/bin/env bash
# Map SLURM's task variables to torch.distributed's environment, for one task per GPU:
#
#   srun --ntasks-per-node=4 --gpus-per-node=4 \
#     bash -c 'source export_DDP_vars.sh && python train.py --config vamoe --run_num 0'
#
# RANK <- SLURM_PROCID, LOCAL_RANK <- SLURM_LOCALID, WORLD_SIZE <- SLURM_NTASKS, MASTER_ADDR <- the
# first host of SLURM_JOB_NODELIST (or SLURM_NODELIST), MASTER_PORT <- $MASTER_PORT or 29500.
# Source it (do not execute it) so the variables reach the training process.
for var in SLURM_PROCID SLURM_LOCALID SLURM_NTASKS; do
  if [ -z "${!var:-}" ]; then
    echo "export_DDP_vars.sh: $var is not set; run inside srun (see the header)" >&2
    return 1 2>/dev/null || exit 1
  fi
done
export RANK=$SLURM_PROCID
export LOCAL_RANK=$SLURM_LOCALID
export WORLD_SIZE=$SLURM_NTASKS
nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
if [ -z "${MASTER_ADDR:-}" ]; then
  if command -v scontrol >/dev/null 2>&1 && [ -n "$nodelist" ]; then
    MASTER_ADDR=$(scontrol show hostnames "$nodelist" | head -n 1)
  else
    # Without scontrol: first entry of a list like "gpu[012-015,020],cpu01" -> gpu012.
    first=${nodelist%%,*}
    if [[ $nodelist =~ ^([^,\[]+)\[([0-9]+) ]]; then
      first=${BASH_REMATCH[1]}${BASH_REMATCH[2]}
    fi
    MASTER_ADDR=${first:-127.0.0.1}
  fi
fi
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-29500}
