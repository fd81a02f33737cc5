#!/usr/bin/env bash
# Data-pipeline benchmark, one run, same files for both sides:
#   1. images/s/core for JPEG decode + CLIP-336 preprocessing (shortest side 336, bicubic, centre crop,
#      normalise) on N generated 640x480 JPEGs: idamoe (libjpeg-turbo + PIL-exact resize, C++) next to
#      Pillow + numpy (/usr/bin/python3) doing the HF CLIPImageProcessor recipe. Both single-threaded.
#   2. Tokenizer MB/s (Qwen2 byte-level BPE fixture) on a ~MB-megabyte JSONL text file via idamoe-tokenize.
# Usage: scripts/bench_data.sh [N_IMAGES=200] [TEXT_MB=20]    (BUILD_DIR defaults to build/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
N="${1:-200}"
MB="${2:-20}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1

echo "== images: $N x 640x480 JPEG, decode + CLIP-336 preprocessing, 1 core"
/usr/bin/python3 "$ROOT/scripts/bench_data_ref.py" make-images "$WORK/jpg" "$N"
du -sh "$WORK/jpg" | awk '{print "   files: " $1}'
CPP=$(IDAMOE_BENCH_IMAGES="$WORK/jpg" "$BUILD_DIR/idamoe_tests" "[bench_images]" 2>&1 | grep -o 'idamoe: .*images/s/core' | head -1)
PIL=$(/usr/bin/python3 "$ROOT/scripts/bench_data_ref.py" pil "$WORK/jpg")
echo "   $CPP"
echo "   $PIL"
a=$(echo "$CPP" | grep -o '= [0-9.]* images' | grep -o '[0-9.]*')
b=$(echo "$PIL" | grep -o '= [0-9.]* images' | grep -o '[0-9.]*')
python3 -c "print(f'   speed-up idamoe / PIL: {$a/$b:.2f}x (target >= 1.5x)')"

echo "== tokenizer: ~${MB} MB of JSONL text, Qwen2 BPE, 1 thread"
/usr/bin/python3 "$ROOT/scripts/bench_data_ref.py" make-text "$WORK/text.jsonl" "$MB"
"$BUILD_DIR/idamoe-tokenize" --tokenizer "$ROOT/tests/fixtures/tokenizer/qwen2" --jsonl "$WORK/text.jsonl" --stats \
  > /dev/null 2> "$WORK/tok.log" || true
sed 's/^/   /' "$WORK/tok.log"
