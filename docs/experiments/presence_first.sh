#!/usr/bin/env bash
# presence_first.sh D OUT [SEED=42]: the presence-first run (SC7 in docs/demo_notes.md) on a finished
# scripts/demo.sh run in D (its data, tokenizer and stage-1 recipe; env TOWER_EXTRA: more make-tiny-models flags,
# e.g. --pretrain-scene-weight 0.1; EXTRA_SET: more --set pairs for every run), all under OUT:
#   1. models: the tower pretrained with scene heads, the decoder with mimetic attention init;
#   2. the demo's stage 1;  3. stage 2 on single-turn presence records only, 600 x 16, lr 1e-3;
#   4. that export relabelled as a stage-1 export;  5. the demo's stage 2 at lr 1e-3;  6. eval.
set -euo pipefail
D=$1; OUT=$2; SEED=${3:-42}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; ROOT="$HERE/../.."; B="$ROOT/build"; CFG="$ROOT/configs/demo"
mkdir -p "$OUT"
export IDAMOE_DEMO_DIR="$D" OMP_NUM_THREADS=2
"$B/make-tiny-models" --tokenizer "$D/tokenizer.json" --out "$OUT/models" --seed 0 --pretrain-tower "$D/data/tower_labels.jsonl" \
  --pretrain-steps 1000 --pretrain-position --pretrain-scene --llm-mimetic 0.7 ${TOWER_EXTRA:-}
S=(--set "model.llm_path=$OUT/models/tiny-qwen2" --set "vision.path=$OUT/models/tiny-clip" ${EXTRA_SET:-})
"$B/idamoe-train" --config "$CFG/stage1.yaml" "${S[@]}" --set "train.output_dir=$OUT/stage1" > "$OUT/stage1.log" 2>&1
/usr/bin/python3 "$HERE/presence_records.py" "$D/data/instruct_image.json" "$OUT/presence_only.json"
cat > "$OUT/presence_only.yaml" <<YAML
base: $CFG/base.yaml
data:
  train:
    - json: $OUT/presence_only.json
      image_root: $D/data/images
  batch_size: 16
train:
  stage: 2
  max_steps: 600
  lr: 1.0e-3
YAML
"$B/idamoe-train" --config "$OUT/presence_only.yaml" "${S[@]}" --set "train.seed=$SEED" --set "train.init_from=$OUT/stage1" \
  --set "train.output_dir=$OUT/presence" > "$OUT/presence.log" 2>&1
/usr/bin/python3 "$HERE/as_stage1_export.py" "$OUT/presence/hf" "$OUT/presence_as_stage1/hf"
"$B/idamoe-train" --config "$CFG/stage2.yaml" "${S[@]}" --set train.lr=1e-3 --set "train.seed=$SEED" \
  --set "train.init_from=$OUT/presence_as_stage1" --set "train.output_dir=$OUT/stage2" > "$OUT/stage2.log" 2>&1
"$B/idamoe-train" eval --config "$CFG/stage2.yaml" "${S[@]}" --questions "$D/data/eval_questions.jsonl" \
  --image-root "$D/data/images" --checkpoint "$OUT/stage2" --out "$OUT/eval" --model-id presence_first > "$OUT/eval.log" 2>&1
tail -8 "$OUT/eval.log"
