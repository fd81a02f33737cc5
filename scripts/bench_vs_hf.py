#!/usr/bin/python3
"""Training-step throughput of idamoe against the Hugging Face peer (GitHub issue #10).

For each dense architecture (Qwen2, StableLM) it runs, back to back on the same machine:
  1. the peer  /work/shared/peers/hf_step_bench.py  (transformers 4.45 eager, Debian torch 1.13) with
     --save DIR, so both sides train the very same random-init model;
  2. the peer again for one step (--warmup 0 --steps 1): its loss at step 0 (the peer prints only the
     loss of its last step);
  3. `idamoe-train bench --model DIR` with the same threads/batch/seq/steps/warmup, lr 1e-4 constant,
     no weight decay, no clipping, --same-batch (the peer trains on one fixed batch) and
     --matmul-reference (a 1024x1024 fp32 matmul timed in the same process).
Token data: the first batch of our bench is at::randint(V, {B, T}) from a CPU generator seeded with
--seed, i.e. the peer's torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed)); this
script recomputes the peer's batch with Debian's torch and checks it against the ids our bench reports.
So the losses of both sides at step 0 and at the peer's last step must agree to float rounding.
Then an MoE step on the Qwen2 model: 4 experts, top-2, every other layer, --moe ida vs --moe linear_aux.

Peak RSS of each side is the child's ru_maxrss (os.wait4). Run with Debian's python: /usr/bin/python3.

Peer set-up (once per machine, see /work/shared/peers/README.md); the peer's sources are never copied into
this repository:
  scripts/setup.sh --peer-bench    (python3-torch python3-numpy python3-regex python3-yaml python3-tqdm
                                     python3-filelock python3-packaging python3-requests, libopenblas0-pthread)
  transformers 4.45.0.dev0 (upstream commit 52cb4034ada381fe1ffe8d428a1076e5411a8026) under /tmp/hf/src,
  huggingface_hub v0.24.6 under /tmp/hfenv/src, safetensors v0.4.3's Python bindings under /tmp/st:
      git clone https://github.com/huggingface/transformers
      git clone https://github.com/huggingface/huggingface_hub
      git clone https://github.com/huggingface/safetensors
      mkdir -p /tmp/hf /tmp/hfenv /tmp/st
      git -C transformers archive 52cb4034ada381fe1ffe8d428a1076e5411a8026 src/transformers | tar -x -C /tmp/hf
      git -C huggingface_hub archive v0.24.6 src/huggingface_hub | tar -x -C /tmp/hfenv
      git -C safetensors archive v0.4.3 bindings/python/py_src | tar -x -C /tmp/st

Usage: /usr/bin/python3 scripts/bench_vs_hf.py [--threads 2] [--batch 4] [--seq 256] [--steps 6]
           [--warmup 2] [--repeats 1] [--moe-repeats 3] [--out /tmp/bench_vs_hf] [--only qwen2,stablelm,moe]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = dict(hidden=512, layers=8, heads=8, kv_heads=2, inter=1408, vocab=8192)


def run(cmd, env=None):
    """Runs cmd, returns (last JSON line of stdout, peak RSS MiB of that child, wall seconds)."""
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)  # this child's own rusage (communicate() would reap it first)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read()[-4000:])
            raise SystemExit("bench_vs_hf: failed (%d): %s" % (p.returncode, " ".join(cmd)))
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line), ru.ru_maxrss / 1024.0, time.time() - t0


def peer_cmd(a, arch, extra):
    return ["/usr/bin/python3", a.peer, "--arch", arch, "--hidden", str(ARCH["hidden"]), "--layers", str(ARCH["layers"]),
            "--heads", str(ARCH["heads"]), "--kv-heads", str(ARCH["kv_heads"]), "--inter", str(ARCH["inter"]),
            "--vocab", str(ARCH["vocab"]), "--batch", str(a.batch), "--seq", str(a.seq), "--threads", str(a.threads),
            "--seed", str(a.seed)] + extra


def ours_cmd(a, model_dir, extra):
    return [a.binary, "bench", "--model", model_dir, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--threads", str(a.threads), "--seed", str(a.seed), "--lr", "1e-4",
            "--grad-clip", "0", "--same-batch"] + extra


def peer_first_batch(a):
    import torch  # Debian's python3-torch: the peer's own generator
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, ARCH["vocab"], (a.batch, a.seq), generator=g)
    return {"sum": int(ids.sum()), "head": [int(v) for v in ids.flatten()[:8]]}


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def dense(a, arch, peer_env):
    model_dir = os.path.join(a.out, "model_" + arch)
    rows = []
    for r in range(a.repeats):
        l0 = load()
        peer, peer_rss, _ = run(peer_cmd(a, arch, ["--steps", str(a.steps), "--warmup", str(a.warmup), "--save", model_dir]),
                                env=peer_env)
        ours, ours_rss, _ = run(ours_cmd(a, model_dir, ["--matmul-reference"]))
        rows.append(dict(peer=peer, peer_rss=peer_rss, ours=ours, ours_rss=ours_rss, load=[l0, load()]))
        print("  %s run %d: peer %.1f tok/s, idamoe %.1f tok/s (ratio %.2f), load %.1f→%.1f" % (
            arch, r + 1, peer["tokens_per_s"], ours["tokens_per_s_median"],
            ours["tokens_per_s_median"] / peer["tokens_per_s"], l0, load()), flush=True)
    peer0, _, _ = run(peer_cmd(a, arch, ["--steps", "1", "--warmup", "0"]), env=peer_env)
    return dict(arch=arch, rows=rows, peer_loss0=peer0["loss_last"])


def moe(a, model_dir):
    rows = []
    for r in range(a.moe_repeats):
        res = {}
        for kind in (("ida", "linear_aux") if r % 2 == 0 else ("linear_aux", "ida")):  # alternate who goes first
            res[kind], res[kind + "_rss"], _ = run(ours_cmd(a, model_dir, ["--moe", kind, "--experts", "4", "--top-k", "2"]))
        rows.append(res)
        print("  moe run %d: ida %.3f s/step, linear_aux %.3f s/step" % (
            r + 1, res["ida"]["step_s_median"], res["linear_aux"]["step_s_median"]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="peer/ours pairs per dense config; the median ratio is reported")
    ap.add_argument("--moe-repeats", type=int, default=3, help="back-to-back ida/linear_aux pairs; the median ratio is reported")
    ap.add_argument("--only", default="qwen2,stablelm,moe")
    ap.add_argument("--out", default="/tmp/bench_vs_hf")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "idamoe-train"))
    ap.add_argument("--peer", default="/work/shared/peers/hf_step_bench.py")
    ap.add_argument("--peer-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the peer only (e.g. OMP_WAIT_POLICY=PASSIVE, which idamoe sets for itself)")
    a = ap.parse_args()

    missing = [p for p in ("/tmp/hf/src/transformers", "/tmp/hfenv/src/huggingface_hub", "/tmp/st/bindings/python/py_src")
               if not os.path.isdir(p)]
    if missing or not os.path.isfile(a.peer):
        raise SystemExit("bench_vs_hf: peer sources missing (%s); see the set-up notes at the top of %s" %
                         (", ".join(missing + ([a.peer] if not os.path.isfile(a.peer) else [])), __file__))
    if not os.access(a.binary, os.X_OK):
        raise SystemExit("bench_vs_hf: %s not built (scripts/build.sh)" % a.binary)
    os.makedirs(a.out, exist_ok=True)
    peer_env = dict(os.environ)
    for kv in a.peer_env:
        k, v = kv.split("=", 1)
        peer_env[k] = v
    only = a.only.split(",")
    cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
    print("machine: %d x %s; threads %d, batch %d, seq %d, steps %d (+%d warm-up)" % (
        len(cpu), cpu[0] if cpu else "?", a.threads, a.batch, a.seq, a.steps, a.warmup), flush=True)

    results = {"args": vars(a), "dense": [], "moe": None, "peer_first_batch": peer_first_batch(a)}
    for arch in ("qwen2", "stablelm"):
        if arch in only:
            results["dense"].append(dense(a, arch, peer_env))
    if "moe" in only:
        model_dir = os.path.join(a.out, "model_qwen2")
        if not os.path.isdir(model_dir):
            run(peer_cmd(a, "qwen2", ["--steps", "1", "--warmup", "0", "--save", model_dir]), env=peer_env)
        results["moe"] = moe(a, model_dir)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    med = statistics.median
    last = a.warmup + a.steps - 1
    if results["dense"]:
        print()
        print("| config | HF tok/s | idamoe tok/s | ratio | HF GFLOP/s | idamoe GFLOP/s | matmul 1024² GFLOP/s | HF % matmul | "
              "idamoe % matmul | HF peak RSS MiB | idamoe peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in results["dense"]:
        rows = d["rows"]
        gf = rows[0]["ours"]["step_gflop"]  # same model FLOPs per step on both sides (train/flops.h)
        peer_tps = med([r["peer"]["tokens_per_s"] for r in rows])
        ours_tps = med([r["ours"]["tokens_per_s_median"] for r in rows])
        ratio = med([r["ours"]["tokens_per_s_median"] / r["peer"]["tokens_per_s"] for r in rows])
        mm = med([r["ours"]["matmul1024_gflops"] for r in rows])
        peer_gfs = med([gf / r["peer"]["step_s_median"] for r in rows])
        ours_gfs = med([r["ours"]["achieved_gflops_median"] for r in rows])
        print("| %s (%.1f GFLOP/step) | %.1f | %.1f | **%.2f×** | %.1f | %.1f | %.1f | %.0f%% | %.0f%% | %.0f | %.0f |" % (
            d["arch"], gf, peer_tps, ours_tps, ratio, peer_gfs, ours_gfs, mm, 100 * peer_gfs / mm, 100 * ours_gfs / mm,
            max(r["peer_rss"] for r in rows), max(r["ours_rss"] for r in rows)))
    print()
    pfb = results["peer_first_batch"]
    for d in results["dense"]:
        ours = d["rows"][0]["ours"]
        same = ours.get("first_batch") == pfb
        print("%s: first batch identical to the peer's: %s (sum %d); loss step 0: HF %.6f idamoe %.6f (|diff| %.1e); "
              "loss step %d: HF %.6f idamoe %.6f (|diff| %.1e)" % (
                  d["arch"], "yes" if same else "NO", pfb["sum"], d["peer_loss0"], ours["losses"][0],
                  abs(d["peer_loss0"] - ours["losses"][0]), last, d["rows"][0]["peer"]["loss_last"], ours["losses"][last],
                  abs(d["rows"][0]["peer"]["loss_last"] - ours["losses"][last])))
        print("  idamoe step breakdown (ms): %s" % json.dumps({k: round(v, 1) for k, v in ours["step_breakdown_ms"].items()}))
    if results["moe"]:
        rows = results["moe"]
        ida = med([r["ida"]["step_s_median"] for r in rows])
        lin = med([r["linear_aux"]["step_s_median"] for r in rows])
        ratio = med([r["ida"]["step_s_median"] / r["linear_aux"]["step_s_median"] for r in rows])
        print()
        print("| MoE (qwen2 model, 4 experts top-2 on every other layer) | step s | tok/s | peak RSS MiB |")
        print("|---|---|---|---|")
        print("| ida | %.3f | %.1f | %.0f |" % (ida, a.batch * a.seq / ida, max(r["ida_rss"] for r in rows)))
        print("| linear_aux | %.3f | %.1f | %.0f |" % (lin, a.batch * a.seq / lin, max(r["linear_aux_rss"] for r in rows)))
        for kind in ("ida", "linear_aux"):
            print("  %s tokens per expert, last step, per MoE layer: %s" % (kind, json.dumps(rows[0][kind].get("expert_counts_last_step"))))
        tmin = lambda j: min(j["step_s_all"][a.warmup:])  # the least-disturbed step: robust to a busy machine
        print("IDA / linear_aux step time: %.3f (median over %d back-to-back pairs of the median-step ratio); "
              "fastest step: ida %.3f s, linear_aux %.3f s, ratio %.3f" % (
                  ratio, len(rows), min(tmin(r["ida"]) for r in rows), min(tmin(r["linear_aux"]) for r in rows),
                  min(tmin(r["ida"]) for r in rows) / min(tmin(r["linear_aux"]) for r in rows)))
    print("\nraw results: %s" % os.path.join(a.out, "results.json"))


if __name__ == "__main__":
    main()
