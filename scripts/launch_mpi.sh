#!/usr/bin/env bash
# Examples of launching idamoe with Open MPI's mpirun. idamoe reads OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,
# LOCAL_SIZE} and rendezvouses through c10d's TCPStore on rank 0 (it does not use MPI for communication:
# Gloo on CPU, NCCL on GPUs). Each rank binds GPU = local rank.
#
#   One node, 8 ranks (MASTER_ADDR defaults to 127.0.0.1, MASTER_PORT to 29500):
#     mpirun -np 8 ./build/idamoe-train --config configs/stablelm_stage3.yaml
#   Two nodes, 8 ranks each: rank 0's host must be exported to every rank (a missing MASTER_ADDR on
#   several nodes is an error rather than a guess):
#     MASTER_ADDR=host1 MASTER_PORT=29500 mpirun -np 16 -H host1:8,host2:8 -x MASTER_ADDR -x MASTER_PORT \
#       ./build/idamoe-train --config configs/stablelm_stage3.yaml
#   Pick the NIC Gloo uses across nodes with -x GLOO_SOCKET_IFNAME=eth0; NCCL reads NCCL_SOCKET_IFNAME.
#   As root inside a container, add --allow-run-as-root; with more ranks than cores, --oversubscribe.
#
# This script runs the one-node form:  scripts/launch_mpi.sh N command [args...]
set -euo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N command [args...]" >&2
  exit 2
fi
N="$1"; shift
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-run-as-root)
[ "$N" -gt "$(nproc)" ] && extra+=(--oversubscribe)
exec mpirun "${extra[@]}" -np "$N" -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
  ${MASTER_ADDR:+-x MASTER_ADDR} ${MASTER_PORT:+-x MASTER_PORT} "$@"
