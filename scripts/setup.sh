#!/usr/bin/env bash
# Installs every Debian 12 package idamoe needs (--peer-bench: and the HF peer benchmark's). Idempotent: apt-get update runs once,
# and only when something is missing. Works as root, or through sudo.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-14-dev              # ASan + UBSan + libFuzzer build (scripts/sanitize.sh, part of the tests)
  libtorch-dev libgloo-dev               # LibTorch 1.13 (CPU) + c10d Gloo headers
  libopenblas0-pthread                   # Debian's LibTorch calls the system BLAS; reference BLAS is ~40x slower
  libsentencepiece-dev sentencepiece     # SentencePiece tokenizers (+ trainer for the demo)
  libstb-dev                             # stb_image (PNG, BMP, GIF) / stb_image_write
  libjpeg62-turbo-dev                    # JPEG: libjpeg-turbo, the decoder Pillow uses (bit-identical pixels)
  nlohmann-json3-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev catch2
  libpcre2-dev libutf8proc-dev           # byte-level BPE pre-tokenizer regex, NFC normalisation
  openmpi-bin libopenmpi-dev             # mpirun launches
  python3 python3-numpy python3-pil python3-matplotlib   # reference tensors and demo plots
)
# `setup.sh --peer-bench`: also what scripts/bench_vs_hf.py needs to run the Hugging Face peer
# (/work/shared/peers/hf_step_bench.py: transformers from source on Debian's torch, no PyPI).
if [ "${1:-}" = "--peer-bench" ]; then
  PKGS+=(python3-torch python3-regex python3-yaml python3-tqdm python3-filelock python3-packaging python3-requests)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup.sh: need root or sudo to install packages" >&2; exit 1; fi
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup.sh: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Prefer the optimised OpenBLAS for libblas.so.3 (LibTorch's BLAS calls go there).
if command -v update-alternatives >/dev/null 2>&1; then
  alt=$(update-alternatives --list libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-pthread | head -1 || true)
  if [ -n "$alt" ]; then $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu "$alt" >/dev/null; fi
  alt=$(update-alternatives --list liblapack.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-pthread | head -1 || true)
  if [ -n "$alt" ]; then $SUDO update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$alt" >/dev/null; fi
fi
echo "setup.sh: done"
