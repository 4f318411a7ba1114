#!/usr/bin/env bash
# Data-parallel training on one node (8 Ascend cards by default), launched with msrun.
#
#   scripts/run_distribute_8p.sh configs/repmlp/repmlp_t224_ascend.yaml --data_dir /data/imagenet [--key value ...]
#
# Environment: WORKERS (cards, default 8), MASTER_PORT (default 8118), LOG_DIR (msrun's per-worker logs,
# default ./outputs/msrun_logs). The global batch is batch_size x WORKERS: if you change WORKERS, scale lr with
# it (the recipes say how).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 CONFIG.yaml [--key value ...]   (CONFIG.yaml must exist)" >&2
  exit 2
fi
CONFIG=$1
shift
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-8}
msrun --worker_num "$WORKERS" --local_worker_num "$WORKERS" \
      --master_port "${MASTER_PORT:-8118}" --log_dir "${LOG_DIR:-./outputs/msrun_logs}" --join True \
      python train.py --config "$CONFIG" --distribute True "$@"
