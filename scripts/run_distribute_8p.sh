#!/usr/bin/env bash
# Data-parallel training on one node (8 Ascend cards by default), launched with msrun.
#
#   scripts/run_distribute_8p.sh configs/repmlp/repmlp_t224_ascend.yaml --data_dir /data/imagenet [--key value ...]
#
# Environment: WORKERS (cards, default 8), MASTER_PORT (default 8118), LOG_DIR (msrun's per-worker logs,
# default ./outputs/msrun_logs), TIMEOUT (seconds before everything is stopped, default: none). The global batch is
# batch_size x WORKERS: if you change WORKERS, scale lr with it (the recipes say how).
#
# Before any worker starts, scripts/preflight.py checks the recipe and that WORKERS devices of its device_target
# exist here (one "error: ..." line and exit 2 if not). scripts/msrun_guard.py then runs msrun: if a worker fails,
# its error is printed here, everything msrun started is stopped and the exit code is non-zero.
# Relative paths (the config, --data_dir, ckpt_save_dir, LOG_DIR) are taken from the current directory.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 CONFIG.yaml [--key value ...]   (CONFIG.yaml must exist)" >&2
  exit 2
fi
CONFIG=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORKERS=${WORKERS:-8}
LOG_DIR=${LOG_DIR:-./outputs/msrun_logs}
python "$ROOT/scripts/preflight.py" --local_workers "$WORKERS" -- --config "$CONFIG" --distribute True "$@"
exec python "$ROOT/scripts/msrun_guard.py" --log_dir "$LOG_DIR" --timeout "${TIMEOUT:-0}" -- \
  msrun --worker_num "$WORKERS" --local_worker_num "$WORKERS" \
        --master_port "${MASTER_PORT:-8118}" --log_dir "$LOG_DIR" --join True \
        python "$ROOT/train.py" --config "$CONFIG" --distribute True "$@"
