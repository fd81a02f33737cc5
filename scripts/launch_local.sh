#!/usr/bin/env bash
# Runs N copies of a command on this machine as one data-parallel job, torchrun-style: each copy gets
# RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (src/dist/launch_env.h).
# Rank 0 serves the rendezvous store on MASTER_PORT. Output lines are prefixed with the rank. If any rank
# fails, the others are stopped and the script exits with a failing rank's status.
#
#   scripts/launch_local.sh 2 ./build/idamoe-train --config configs/demo/stage2.yaml
#   MASTER_PORT=29600 scripts/launch_local.sh 8 ./build/idamoe-train --config configs/stablelm-clip/stage3.yaml
set -euo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N command [args...]   (N = number of ranks; MASTER_ADDR/MASTER_PORT optional)" >&2
  exit 2
fi
N="$1"; shift
export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
export MASTER_PORT="${MASTER_PORT:-29500}"
export WORLD_SIZE="$N" LOCAL_WORLD_SIZE="$N"
# One OpenMP thread per rank unless asked otherwise: N ranks share the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((r = 0; r < N; r++)); do
  ( RANK=$r LOCAL_RANK=$r exec "$@" ) > >(sed -u "s/^/[rank $r] /") 2>&1 &
  pids+=($!)
done

# Poll rather than `wait -n`: the first failure stops the rest, and every rank's status is collected.
status=0
declare -A finished=()
while :; do
  alive=0
  for r in "${!pids[@]}"; do
    [ -n "${finished[$r]:-}" ] && continue
    if kill -0 "${pids[$r]}" 2>/dev/null; then alive=1; continue; fi
    set +e; wait "${pids[$r]}"; rc=$?; set -e
    finished[$r]=1
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$rc
      echo "launch_local.sh: rank $r exited with status $rc; stopping the others" >&2
      cleanup
    fi
  done
  [ "$alive" -eq 0 ] && break
  sleep 0.2
done
exit "$status"
