#!/usr/bin/env bash
# VA-MoE quickstart on the embedded default: set up, make synthetic ERA5, train the tiny model with
# train.sh (torchrun; 2 CPU ranks with gloo when there is no GPU), evaluate it with test.sh.
# A second run reuses what exists: the virtual environment, the dataset and the finished run.
#
# Knobs (environment): PYTHON (use this interpreter instead of creating .venv), DATA_DIR, EXP_DIR,
# RESULTS_DIR, CONFIG (default tiny), DAYS (synthetic days, default 32). `--format npy|h5` picks the
# data format (default npy: one file per field; h5: one HDF5 file per year, with its own default
# DATA_DIR, EXP_DIR and RESULTS_DIR); other arguments go to train.py, e.g.
# bash quickstart.sh --format h5 --set max_epochs=4
set -euo pipefail
cd "$(dirname "$0")"

FORMAT=npy
TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --format) FORMAT=${2:?--format needs npy or h5}; shift 2 ;;
    --format=*) FORMAT=${1#--format=}; shift ;;
    *) TRAIN_ARGS+=("$1"); shift ;;
  esac
done
case "$FORMAT" in
  npy) SUFFIX= ;;
  h5) SUFFIX=/h5 ;;
  *) echo "quickstart.sh: --format must be npy or h5, got '$FORMAT'" >&2; exit 2 ;;
esac

CONFIG=${CONFIG:-tiny}
DATA_DIR=${DATA_DIR:-data/synthetic_era5${SUFFIX:+_h5}}
EXP_DIR=${EXP_DIR:-exp$SUFFIX}
RESULTS_DIR=${RESULTS_DIR:-results$SUFFIX/$CONFIG/0}
DAYS=${DAYS:-32}

step() { printf '\n==> %s\n' "$*"; }

if [ -z "${PYTHON:-}" ]; then
  stamp=.venv/.requirements.sha256
  want=$(cat requirements.txt | sha256sum | cut -d' ' -f1)
  if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "creating .venv and installing requirements.txt (once)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r requirements.txt
    echo "$want" > "$stamp"
  else
    step "reusing .venv"
  fi
  PYTHON=.venv/bin/python
fi
export PYTHON

if [ -f "$DATA_DIR/statistic/mean_std.json" ]; then
  step "reusing synthetic ERA5 in $DATA_DIR"
else
  step "writing $DAYS days of synthetic ERA5 to $DATA_DIR ($FORMAT)"
  "$PYTHON" -m tools.make_synthetic_era5 --root_dir "$DATA_DIR" --start 2020-01-01 --days "$DAYS" \
    --format "$FORMAT"
fi

step "training $CONFIG with train.sh (resumes, or does nothing, when the run exists)"
CONFIG=$CONFIG EXP_DIR=$EXP_DIR bash train.sh --set "root_dir=$DATA_DIR" \
  --set "data_format=$FORMAT" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}

step "evaluating with test.sh"
CONFIG=$CONFIG EXP_DIR=$EXP_DIR OUT_DIR=$RESULTS_DIR bash test.sh --set "root_dir=$DATA_DIR" \
  --set "data_format=$FORMAT" --overwrite

step "done"
echo "run directory: $EXP_DIR/$CONFIG/0 (out.log, metrics.jsonl, training_checkpoints/)"
echo "results:       $RESULTS_DIR (metrics.csv, metrics.json, summary.txt)"
echo "plots:         $RESULTS_DIR/rmse_acc.png, $RESULTS_DIR/maps.png"
