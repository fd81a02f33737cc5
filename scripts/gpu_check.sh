#!/usr/bin/env bash
# The CUDA path, checked on a GPU machine whose python3 holds a CUDA pip torch (LibTorch 2.x inside).
# Usage: scripts/gpu_check.sh [STAGES]   STAGES: any of build cuda e2e ctest bench (default: all, in this order)
# GPU_CHECK_BUDGET_S: seconds the whole script may take (ctest and bench shrink or skip to fit)
#   build  configure + build every target against that LibTorch (NCCL compiled in) into build-cuda/
#   cuda   idamoe_tests "[cuda]": HF parity on the GPU (fp32, bf16), IDA-MoE layer GPU vs CPU, CUDA RNG
#   e2e    the demo's tools and the three stages on the GPU in bf16 (shortened), stage-3 exact resume,
#          eval with the KV cache
#   ctest  the CPU test suite on this CUDA build (at most GPU_CHECK_CTEST_S, default 150 s; the mpirun test
#          needs Open MPI and is excluded where it is absent)
#   bench  `idamoe-train bench --dtype bfloat16` on random-init Qwen2-1.5B / StableLM-2-1.6B, dense and
#          IDA-MoE, and Hugging Face's own step on the same model (scripts/gpu_hf_peer.py)
# Logs go to $OUT (default /tmp/gpu_check); a summary is printed last. Debian packages that the machine
# lacks may be carried as .deb files in .devdeb/ (unpacked into /), see docs/gpu.md.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# `gpu_check.sh fetch-debs`, on a Debian 12 machine: download the packages the GPU image lacks into .devdeb/
if [ "${1:-}" = fetch-debs ]; then
  mkdir -p .devdeb && cd .devdeb && exec apt-get download libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 \
    libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev catch2 libjpeg62-turbo-dev libjpeg62-turbo libpcre2-dev \
    libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libsentencepiece-dev libsentencepiece0 libprotobuf32 \
    libprotobuf-lite32 libutf8proc-dev libutf8proc2 libstb-dev libstb0 pkgconf pkgconf-bin libpkgconf3
fi
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
STAGES="${1:-build cuda e2e ctest bench}"
B="${BUILD_DIR:-$ROOT/build-cuda}"
# e2e on another device (GPU_CHECK_DEVICE=cpu: float32) only to try this script out on a CPU machine
DEV="${GPU_CHECK_DEVICE:-cuda}"
DT=bfloat16; [ "$DEV" = cuda ] || DT=float32
T0=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }
note() { echo "$*" | tee -a "$SUMMARY"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }

say "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch.compiled_with_cxx11_abi())'
  g++ --version | head -1; cmake --version | head -1; nproc; } 2>&1 | tee "$OUT/machine.txt"

# They are Debian 12's: on Debian 12 itself scripts/setup.sh installs them properly instead. Elsewhere they
# replace what the machine has of the same names (its fmt, spdlog, yaml-cpp), so that one set builds.
if [ -d .devdeb ] && ls .devdeb/*.deb >/dev/null 2>&1 && ! grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
  say "unpacking $(ls .devdeb/*.deb | wc -l) Debian packages from .devdeb/"
  for f in .devdeb/*.deb; do
    if command -v dpkg >/dev/null; then dpkg -x "$f" /; else ar p "$f" data.tar.xz | tar -xJ -C /; fi
  done
  ldconfig
fi
export PATH="/usr/local/cuda/bin:$PATH"

if want build; then
  say "configure"
  TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
  NCCL_INC=$(python3 - <<'EOF'
import glob, os, site
for d in site.getsitepackages() + ["/usr/local/cuda/include", "/usr/include"]:
    hits = glob.glob(os.path.join(d, "nvidia", "**", "nccl.h"), recursive=True) + glob.glob(os.path.join(d, "nccl.h"))
    if hits:
        print(os.path.dirname(hits[0])); break
EOF
)
  echo "torch prefix $TORCH_PREFIX; nccl.h in ${NCCL_INC:-?}"
  if ! cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
       -DNCCL_INCLUDE_DIR="$NCCL_INC" -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1; then
    tail -40 "$OUT/configure.log"; note "build: configure FAILED"; exit 1
  fi
  grep -E "idamoe:|Torch|CUDA" "$OUT/configure.log" | head -8
  say "build (ninja -k 0)"
  ninja -C "$B" -k 0 -j "$(nproc)" > "$OUT/build.log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    grep -E "error|Error|undefined reference" "$OUT/build.log" | sort -u | head -60
    note "build: FAILED (rc $rc; errors above, full log build.log)"
  else
    note "build: ok ($(grep -c 'Building CXX' "$OUT/build.log") translation units, $(( $(date +%s) - T0 )) s since start)"
  fi
fi

if want cuda && [ -x "$B/idamoe_tests" ]; then
  say "[cuda] tests"
  "$B/idamoe_tests" "[cuda]" -s -r compact > "$OUT/cuda_tests.log" 2>&1
  rc=$?
  grep -E "^  |FAILED|failed|passed" "$OUT/cuda_tests.log" | grep -v "^  [a-z_]*: " | tail -60
  note "cuda tests: rc $rc: $(tail -1 "$OUT/cuda_tests.log")"
fi

if want e2e && [ -x "$B/idamoe-train" ]; then
  say "e2e: shortened demo on the GPU in bf16"
  D="$OUT/e2e"
  rm -rf "$D"; mkdir -p "$D"
  export IDAMOE_DEMO_DIR="$D"
  (
    set -e
    "$B/gen-shapes-dataset" --out "$D/data" --seed 1 --image-size 56 --grid 4 --n-caption 800 --n-instruct 2000 \
      --n-text 200 --n-eval 200 --n-tower 600 --max-turns 6
    "$B/train-bpe-tokenizer" --corpus "$D/data/corpus.txt" --vocab-size 512 --out "$D/tokenizer.json"
    OMP_NUM_THREADS=1 "$B/make-tiny-models" --tokenizer "$D/tokenizer.json" --out "$D/models" --seed 0 \
      --pretrain-tower "$D/data/tower_labels.jsonl" --pretrain-steps 200 --pretrain-position --vision-layers 3
    G=(--set model.device=$DEV --set model.dtype=$DT --set data.num_workers=4 --set train.log_every=20)
    "$B/idamoe-train" --config configs/demo/stage1.yaml "${G[@]}" --set train.max_steps=100
    "$B/idamoe-train" --config configs/demo/stage2.yaml "${G[@]}" --set train.max_steps=300 \
      --set "data.curriculum=[{steps: 100, lr: 3.0e-4, batch_size: 16, train: [{json: $D/data/presence_first.json, image_root: $D/data/images}]}]"
    # Stage 3 twice: straight through 200 steps, and stopped at 100 then resumed; the losses must agree.
    S3=(--config configs/demo/stage3.yaml "${G[@]}" --set train.max_steps=200 --set train.save_every=100
        --set checkpoint.save_optimizer=true --set checkpoint.keep_last=3 --set train.log_every=1)
    "$B/idamoe-train" "${S3[@]}" --set train.output_dir="$D/s3_full"
    "$B/idamoe-train" "${S3[@]}" --set train.output_dir="$D/s3_resume" --set train.stop_after=100
    "$B/idamoe-train" "${S3[@]}" --set train.output_dir="$D/s3_resume" --resume auto
    "$B/idamoe-train" eval --config configs/demo/stage3.yaml --set model.device=$DEV --set model.dtype=$DT \
      --questions "$D/data/eval_questions.jsonl" --image-root "$D/data/images" --checkpoint "$D/s3_full" \
      --out "$D/eval" --model-id gpu-e2e
  ) > "$OUT/e2e.log" 2>&1
  rc=$?
  grep -E "done|step +(100|200|300)|accuracy|error|Error|exit" "$OUT/e2e.log" | tail -25
  python3 - "$D" <<'EOF' | tee -a "$SUMMARY"
import json, sys
d = sys.argv[1]
def losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "loss" in r and "step" in r:
            out[r["step"]] = r["loss"]
    return out
try:
    a, b = losses(d + "/s3_full/metrics.jsonl"), losses(d + "/s3_resume/metrics.jsonl")
    common = sorted(s for s in a if s in b and s > 100)
    diffs = [abs(a[s] - b[s]) for s in common]
    print(f"e2e resume: {len(common)} steps after the resume point compared, max |loss diff| {max(diffs) if diffs else float('nan'):.3g}, "
          f"bitwise equal {sum(x == 0 for x in diffs)}/{len(diffs)}; loss at step 1 {a.get(1)}, step 200 {a.get(200)}")
except Exception as e:
    print("e2e resume: could not compare:", e)
EOF
  note "e2e: rc $rc (log e2e.log)"
fi

if want ctest && [ -x "$B/idamoe_tests" ]; then
  left=$(( ${GPU_CHECK_BUDGET_S:-100000} - ($(date +%s) - T0) - 60 ))
  cap=${GPU_CHECK_CTEST_S:-150}; [ $left -lt $cap ] && cap=$left
  say "ctest (CPU suite on the CUDA build; at most ${cap} s)"
  excl=""
  command -v mpirun >/dev/null || excl="mpirun"
  (cd "$B" && timeout $(( cap > 20 ? cap : 20 )) ctest -j "$(nproc)" --timeout 240 --output-on-failure ${excl:+-E $excl} > "$OUT/ctest.log" 2>&1)
  grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|Exception" "$OUT/ctest.log" | tail -30
  note "ctest: $(grep -E 'tests passed' "$OUT/ctest.log" || echo "stopped at the ${cap} s cap: $(grep -c ' Passed ' "$OUT/ctest.log") passed, $(grep -cE '\*\*\*Failed|\*\*\*Timeout|Exception' "$OUT/ctest.log") failed so far")${excl:+ (excluded: $excl, no Open MPI here)}"
fi

if want bench && [ -x "$B/idamoe-train" ]; then
  say "bench: full-size random-init decoders, bf16"
  for arch in qwen2 stablelm; do
    left=$(( ${GPU_CHECK_BUDGET_S:-100000} - ($(date +%s) - T0) ))
    if [ $left -lt 120 ]; then note "bench $arch: skipped (${left} s left of GPU_CHECK_BUDGET_S)"; continue; fi
    M="/tmp/full-$arch"
    [ -f "$M/config.json" ] || python3 scripts/gpu_hf_peer.py make --arch $arch --out "$M" 2>&1 | tail -1
    for moe in "" ida; do
      "$B/idamoe-train" bench --model "$M" --device cuda --dtype bfloat16 --batch 4 --seq 1024 --steps 8 --warmup 3 \
        ${moe:+--moe $moe} > "$OUT/bench_${arch}_${moe:-dense}.json" 2> "$OUT/bench_${arch}_${moe:-dense}.err"
      python3 - "$OUT/bench_${arch}_${moe:-dense}.json" "$arch ${moe:-dense}" <<'EOF' | tee -a "$SUMMARY"
import json, sys
try:
    j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
    print(f"bench idamoe {sys.argv[2]:15s} B4xT1024 bf16: step {j['step_s_median']*1e3:.1f} ms, "
          f"{j['tokens_per_s_median']:.0f} tok/s, {j.get('achieved_gflops_median', 0)/1e3:.1f} TFLOP/s, MFU {j.get('mfu', 0):.3f}, "
          f"breakdown {j['step_breakdown_ms']}")
except Exception as e:
    print(f"bench idamoe {sys.argv[2]}: FAILED ({e}); see .err")
EOF
    done
    python3 scripts/gpu_hf_peer.py bench --model "$M" --batch 4 --seq 1024 --steps 8 --warmup 3 \
      > "$OUT/peer_$arch.json" 2> "$OUT/peer_$arch.err"
    python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(f\"bench HF peer {sys.argv[2]:17s} B4xT1024 bf16: step {j['step_s_median']*1e3:.1f} ms, {j['tokens_per_s_median']:.0f} tok/s, peak {j['peak_mem_gib']:.1f} GiB ({j['peer']}, torch {j['torch']})\")" \
      "$OUT/peer_$arch.json" "$arch" 2>/dev/null | tee -a "$SUMMARY" || note "bench HF peer $arch: FAILED (peer_$arch.err)"
  done
fi

say "summary"
cat "$SUMMARY"
