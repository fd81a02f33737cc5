#!/usr/bin/env bash
# The built-in demo. Usage: scripts/demo.sh [OUT_DIR]   (default: runs/demo)
#   1. set up and build
#   2. generate the synthetic shapes data, train its tokenizer, make the tiny CLIP + Qwen2 models
#      (the tower pretrained on labelled shapes images, as CLIP comes pretrained)
#   3. check every demo config (--print-config, --dry-run)
#   4. train stage 1, 2, 3 (IDA-MoE) and the stage-3 baseline (linear_aux), evaluate, plot
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$ROOT/runs/demo}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
export IDAMOE_DEMO_DIR="$OUT_DIR"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
SEED="${DEMO_SEED:-1}"

bash "$ROOT/scripts/setup.sh"
BUILD_TARGETS="${BUILD_TARGETS:-idamoe-train gen-shapes-dataset train-bpe-tokenizer make-tiny-models}" \
  bash "$ROOT/scripts/build.sh"
BUILD="${BUILD_DIR:-$ROOT/build}"
BIN="$BUILD/idamoe-train"
CFG="$ROOT/configs/demo"
stamp() { date +%s; }
T0=$(stamp)

echo "== data: gen-shapes-dataset (seed $SEED) -> $OUT_DIR/data"
if [ ! -f "$OUT_DIR/data/dataset_info.json" ]; then
  "$BUILD/gen-shapes-dataset" --out "$OUT_DIR/data" --seed "$SEED" --image-size 56 --grid 4 \
    --n-caption 4000 --n-instruct 10000 --n-text 600 --n-eval 1200 --n-tower 3000 --max-turns 6
else
  echo "   (exists; delete $OUT_DIR/data to regenerate)"
fi

echo "== tokenizer: train-bpe-tokenizer -> $OUT_DIR/tokenizer.json"
"$BUILD/train-bpe-tokenizer" --corpus "$OUT_DIR/data/corpus.txt" --vocab-size 512 --out "$OUT_DIR/tokenizer.json"

# The tower is pretrained on its own labelled images (data_tools/tower_pretrain.h), standing in for CLIP's
# pretraining: with a random tower the decoder never learned to read shape, and without the column/row
# heads (--pretrain-position) the tokens kept too little of where they are for left/right questions.
# The scene heads (which shapes and colours the image holds, on object tokens, weight 0.3) let the
# decoder learn presence; at weight 1 it stopped reading the side (docs/demo_notes.md). 1200 steps (68 s on
# one thread): object tokens 96% shape, 100% colour, 99.8% column on held-out images.
echo "== models: make-tiny-models -> $OUT_DIR/models (tower pretrained on $OUT_DIR/data/tower_labels.jsonl)"
# One thread: this small tower's pretraining ran several times slower on two (half the time in the kernel).
OMP_NUM_THREADS=1 "$BUILD/make-tiny-models" --tokenizer "$OUT_DIR/tokenizer.json" --out "$OUT_DIR/models" --seed 0 \
  --pretrain-tower "$OUT_DIR/data/tower_labels.jsonl" --pretrain-steps 1200 --pretrain-position \
  --vision-layers 3 --pretrain-scene --pretrain-scene-on-objects --pretrain-scene-no-counts --pretrain-scene-weight 0.3

echo "== configs: resolve every demo stage"
for s in stage1 stage2 stage3 stage3_linear_aux; do
  "$BIN" --config "$CFG/$s.yaml" --print-config > "$OUT_DIR/$s.resolved.yaml"
  echo "   $s: ok ($OUT_DIR/$s.resolved.yaml)"
done
echo "== dry run: stage 1 and every input it names"
"$BIN" --config "$CFG/stage1.yaml" --dry-run

echo "== train"
train_stage() {  # train_stage NAME
  local t
  t=$(stamp)
  "$BIN" --config "$CFG/$1.yaml"
  echo "   $1: done in $(( $(stamp) - t )) s"
}
# Two independent jobs side by side, one thread each: this small model runs only ~10% faster on two threads
# than on one, so two jobs on the two cores end far sooner than one after the other. Output follows in order.
side_by_side() {  # side_by_side LOG_A LOG_B 'command A' 'command B'
  local pa pb ra=0 rb=0
  ( export OMP_NUM_THREADS=1; eval "$3" ) > "$1" 2>&1 & pa=$!
  ( export OMP_NUM_THREADS=1; eval "$4" ) > "$2" 2>&1 & pb=$!
  wait "$pa" || ra=$?
  wait "$pb" || rb=$?
  cat "$1" "$2"
  if [ "$ra" -ne 0 ] || [ "$rb" -ne 0 ]; then echo "demo: a job failed (exit $ra, $rb; $1, $2)" >&2; exit 1; fi
}
mkdir -p "$OUT_DIR/logs"
train_stage stage1
train_stage stage2
# Both stage-3 runs start from the same stage-2 checkpoint.
side_by_side "$OUT_DIR/logs/stage3.log" "$OUT_DIR/logs/stage3_linear_aux.log" \
  "train_stage stage3" "train_stage stage3_linear_aux"

# Evaluation: each stage's export answers the held-out questions greedily (KV cache); stage 1 is
# scored with the stage-2 prompt format to show what instruction tuning added.
echo "== eval (held-out questions: $OUT_DIR/data/eval_questions.jsonl)"
eval_stage() {  # eval_stage NAME CONFIG CHECKPOINT
  "$BIN" eval --config "$CFG/$2.yaml" --questions "$OUT_DIR/data/eval_questions.jsonl" \
    --image-root "$OUT_DIR/data/images" --checkpoint "$OUT_DIR/$3" --out "$OUT_DIR/eval_$1" --model-id "$1" \
    --set "moe.router=$4" | sed "s/^/   $1: /"
}
side_by_side "$OUT_DIR/logs/eval_stage1.log" "$OUT_DIR/logs/eval_stage2.log" \
  "eval_stage stage1 stage2 stage1 ida" "eval_stage stage2 stage2 stage2 ida"
side_by_side "$OUT_DIR/logs/eval_ida.log" "$OUT_DIR/logs/eval_linear_aux.log" \
  "eval_stage ida stage3 stage3_ida ida" "eval_stage linear_aux stage3_linear_aux stage3_linear_aux linear_aux"

echo "== plots"
/usr/bin/python3 "$ROOT/scripts/plot_demo.py" --out "$OUT_DIR/plots" \
  --metrics "ida=$OUT_DIR/stage3_ida/metrics.jsonl" --metrics "linear_aux=$OUT_DIR/stage3_linear_aux/metrics.jsonl" \
  --answers "ida=$OUT_DIR/eval_ida/answers.jsonl" --answers "linear_aux=$OUT_DIR/eval_linear_aux/answers.jsonl" \
  --routing "ida=$OUT_DIR/eval_ida/routing.jsonl" --routing "linear_aux=$OUT_DIR/eval_linear_aux/routing.jsonl" \
  --answers "stage1=$OUT_DIR/eval_stage1/answers.jsonl" --answers "stage2=$OUT_DIR/eval_stage2/answers.jsonl" \
  --questions "$OUT_DIR/data/eval_questions.jsonl"
echo "== demo finished in $(( $(stamp) - T0 )) s: $OUT_DIR"
