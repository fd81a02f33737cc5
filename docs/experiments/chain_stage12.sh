#!/usr/bin/env bash
# chain_stage12.sh NAME LLMDIR [stage-2 --set ...]: stage 1 + stage 2 + image eval on a finished demo run's data (IDAMOE_DEMO_DIR) with another LLM
set -euo pipefail
NAME=$1; LLM=$2; shift 2
R=$(cd "$(dirname "$0")/../.." && pwd); B=$R/build; CFG=$R/configs/demo; D=${WORK:-/tmp/lead}/$NAME; mkdir -p $D
export IDAMOE_DEMO_DIR=${IDAMOE_DEMO_DIR:?set to a finished demo run} OMP_NUM_THREADS=2
t0=$(date +%s)
$B/idamoe-train --config $CFG/stage1.yaml --set model.llm_path=$LLM --set train.output_dir=$D/stage1 > $D/stage1.log 2>&1
$B/idamoe-train --config $CFG/stage2.yaml --set model.llm_path=$LLM --set train.init_from=$D/stage1 --set train.output_dir=$D/stage2 "$@" > $D/stage2.log 2>&1
t1=$(date +%s)
$B/idamoe-train eval --config $CFG/stage2.yaml --questions $IDAMOE_DEMO_DIR/data/eval_questions.jsonl --image-root $IDAMOE_DEMO_DIR/data/images --checkpoint $D/stage2 --out $D/eval --model-id $NAME > $D/eval.log 2>&1
echo "$NAME stage1+2 $((t1-t0))s"
grep -A9 "per type\|category" $D/eval.log | tail -9
