#!/usr/bin/env bash
# Data-parallel training over several nodes, launched with msrun. Run the same command on every node, changing
# only --node_rank (0 on the node whose address is --master_addr).
#
#   scripts/run_multinode.sh --nodes 2 --node_rank 0 --master_addr 10.0.0.1 \
#       configs/repmlp/repmlp_b256_ascend.yaml --data_dir /data/imagenet [--key value ...]
#
# Options (before the config): --nodes N (default 2), --node_rank R (required), --master_addr ADDR (required),
# --cards_per_node K (default 8), --master_port P (default 8118), --log_dir DIR (default ./outputs/msrun_logs).
# The global batch is batch_size x nodes x cards_per_node: scale lr with it (the recipes say how). Every node needs
# the data at the same data_dir; checkpoints and logs are written by rank 0 (on node 0) only.
# --timeout S stops everything after S seconds (default: never).
#
# As in run_distribute_8p.sh: scripts/preflight.py checks the recipe and this node's devices before msrun starts,
# and scripts/msrun_guard.py prints a failed worker's error, stops everything msrun started and exits non-zero.
# Relative paths are taken from the current directory.
set -euo pipefail
NODES=2; NODE_RANK=; MASTER_ADDR=; CARDS=8; PORT=8118; LOG_DIR=./outputs/msrun_logs; TIMEOUT=0
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --node_rank) NODE_RANK=$2; shift 2 ;;
    --master_addr) MASTER_ADDR=$2; shift 2 ;;
    --cards_per_node) CARDS=$2; shift 2 ;;
    --master_port) PORT=$2; shift 2 ;;
    --log_dir) LOG_DIR=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    -h|--help) usage ;;
    --*) echo "unknown option $1 (launcher options come before the config file)" >&2; usage ;;
    *) break ;;
  esac
done
if [ -z "$NODE_RANK" ] || [ -z "$MASTER_ADDR" ] || [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "need --node_rank, --master_addr and an existing CONFIG.yaml" >&2
  usage
fi
if [ "$NODE_RANK" -ge "$NODES" ]; then
  echo "--node_rank $NODE_RANK must be below --nodes $NODES" >&2
  exit 2
fi
CONFIG=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
python "$ROOT/scripts/preflight.py" --local_workers "$CARDS" -- --config "$CONFIG" --distribute True "$@"
exec python "$ROOT/scripts/msrun_guard.py" --log_dir "$LOG_DIR" --timeout "$TIMEOUT" -- \
  msrun --worker_num $((NODES * CARDS)) --local_worker_num "$CARDS" \
        --master_addr "$MASTER_ADDR" --master_port "$PORT" --node_rank "$NODE_RANK" \
        --log_dir "$LOG_DIR" --join True \
        python "$ROOT/train.py" --config "$CONFIG" --distribute True "$@"
