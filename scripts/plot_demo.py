#!/usr/bin/python3
"""Plots for the built-in demo: IDA-MoE vs. the linear_aux router, side by side.

  scripts/plot_demo.py --out runs/demo/plots \
      --metrics ida=runs/demo/stage3_ida/metrics.jsonl --metrics linear_aux=runs/demo/stage3_linear_aux/metrics.jsonl \
      --answers ida=runs/demo/eval_ida/answers.jsonl   --answers linear_aux=runs/demo/eval_linear_aux/answers.jsonl \
      --routing ida=runs/demo/eval_ida/routing.jsonl   --routing linear_aux=runs/demo/eval_linear_aux/routing.jsonl \
      --questions runs/demo/data/eval_questions.jsonl

Draws (each from whatever inputs exist; a missing file or key skips that panel with a note):
  cv_mean.png         CV_mean of expert load over training steps, one line per router (IDA-MoE Fig. 5)
  entropy_hist.png    histogram of per-token routing entropy (IDA-MoE Fig. 6)
  routing_heatmap.png routing probability, token x expert, one sample, last MoE layer (IDA-MoE Fig. 3)
  expert_load.png     final per-layer expert load shares
  summary.md          side-by-side table: CV_mean, entropy, loss, accuracy per question category

Inputs (JSON Lines; unknown keys are ignored, missing ones tolerated):
  metrics:  {"step": int, "loss": float, "cv_mean": float, "entropy": float | [per layer],
             "cv": [per layer], "expert_load": [[per expert] per layer] | {"<layer>": [per expert]}}
            (the same keys are also looked up under a nested "moe" object)
  answers:  LLaVA answers {"question_id", "text"} (+ optional "answer"/"gt", "category")
  routing:  {"question_id", "layer": int, "probs": [[per expert] per token], "tokens": [str] (optional)}
  questions: the eval split {"question_id", "category", "answer"}, used when answers lack them

Self-check: scripts/plot_demo.py --make-synthetic DIR writes synthetic inputs to DIR and plots them.
"""
import argparse
import json
import math
import os
import random
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# ---- reading ---------------------------------------------------------------------------------

def read_jsonl(path):
    """Records of a JSONL file; bad lines are counted and reported, not fatal."""
    out, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad += 1
    if bad:
        print(f"plot_demo: {path}: skipped {bad} malformed line(s)", file=sys.stderr)
    return out


def named_files(specs, kind):
    """'name=path' (or a bare path, named by its folder) -> {name: records}; missing files are noted."""
    runs = {}
    for spec in specs or []:
        name, _, path = spec.partition("=")
        if not path:
            path, name = name, os.path.basename(os.path.dirname(os.path.abspath(name))) or name
        if not os.path.isfile(path):
            print(f"plot_demo: {kind} for '{name}': {path} does not exist, skipped", file=sys.stderr)
            continue
        runs[name] = read_jsonl(path)
    return runs


def lookup(rec, *keys):
    """First of `keys` found at the top level or under rec['moe'] / rec['router']."""
    for scope in (rec, rec.get("moe"), rec.get("router")):
        if isinstance(scope, dict):
            for k in keys:
                if k in scope and scope[k] is not None:
                    return scope[k]
    return None


def as_number(v):
    """A scalar from a number or the mean of a (nested) list of numbers; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, dict):
        v = list(v.values())
    if isinstance(v, list):
        xs = [as_number(x) for x in v]
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None
    return None


def cv(counts):
    """Coefficient of variation std/mean with the unbiased std, as IDA_MoE's compute_cv (protocol §7)."""
    n = len(counts)
    if n < 2:
        return None
    m = sum(counts) / n
    var = sum((c - m) ** 2 for c in counts) / (n - 1)
    return math.sqrt(var) / (m + 1e-8)


def series(records, *keys):
    steps, ys = [], []
    for i, r in enumerate(records):
        y = as_number(lookup(r, *keys))
        if y is None:
            continue
        steps.append(r.get("step", i))
        ys.append(y)
    return steps, ys


def cv_series(records):
    """CV_mean per record: the logged cv_mean, else the mean of per-layer cv, else from expert_load."""
    steps, ys = series(records, "cv_mean", "cv")
    if ys:
        return steps, ys
    for i, r in enumerate(records):
        loads = layer_loads(r)
        vals = [cv(v) for v in loads.values()]
        vals = [v for v in vals if v is not None]
        if vals:
            steps.append(r.get("step", i))
            ys.append(sum(vals) / len(vals))
    return steps, ys


def layer_loads(rec):
    """{layer: [load per expert]} from expert_load as a list of lists or a dict."""
    v = lookup(rec, "expert_load", "expert_counts", "load")
    out = {}
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, list) and all(isinstance(c, (int, float)) for c in x):
                out[str(k)] = [float(c) for c in x]
    elif isinstance(v, list):
        ids = lookup(rec, "moe_layers", "layers")  # the decoder indices of the MoE layers, when logged
        if not (isinstance(ids, list) and len(ids) == len(v)):
            ids = list(range(len(v)))
        if v and all(isinstance(c, (int, float)) for c in v):
            out["0"] = [float(c) for c in v]
        else:
            for i, x in zip(ids, v):
                if isinstance(x, list) and all(isinstance(c, (int, float)) for c in x):
                    out[str(i)] = [float(c) for c in x]
    return out


def entropy(p):
    s = sum(p)
    if s <= 0:
        return None
    return -sum((x / s) * math.log2(x / s) for x in p if x > 0)  # bits, as the trainer logs it (IDA-MoE §5.4)


def normalise(ans):
    a = str(ans).strip().lower()
    while a.endswith("."):
        a = a[:-1]
    return a.strip()


# ---- figures ---------------------------------------------------------------------------------

def note_axes(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="gray", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_cv(metrics, out):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    drawn = False
    for name, recs in metrics.items():
        steps, ys = cv_series(recs)
        if ys:
            ax.plot(steps, ys, label=name, linewidth=1.6)
            drawn = True
    if drawn:
        ax.set_xlabel("training step")
        ax.set_ylabel("CV$_{mean}$ of expert load (lower = more balanced)")
        ax.set_title("Expert-load balance during stage 3 (cf. IDA-MoE Fig. 5)")
        ax.grid(alpha=0.3)
        ax.legend()
    else:
        note_axes(ax, "no cv_mean / cv / expert_load in the metrics files")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def token_entropies(routing_recs):
    out = []
    for r in routing_recs:
        probs = r.get("probs")
        if isinstance(probs, list):
            for p in probs:
                if isinstance(p, list):
                    e = entropy([float(x) for x in p if isinstance(x, (int, float))])
                    if e is not None:
                        out.append(e)
        te = r.get("token_entropy")
        if isinstance(te, list):
            out.extend(float(x) for x in te if isinstance(x, (int, float)))
    return out


def plot_entropy(routing, metrics, out):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    sources = {n: token_entropies(r) for n, r in routing.items()}
    label = "per-token routing entropy (bits)"
    if not any(sources.values()):  # fall back to logged per-step mean entropies
        sources = {n: series(r, "routing_entropy", "entropy")[1] for n, r in metrics.items()}
        label = "logged mean routing entropy per step (bits)"
    sources = {n: v for n, v in sources.items() if v}
    if sources:
        hi = max(max(v) for v in sources.values())
        bins = [hi * i / 30 for i in range(31)] if hi > 0 else 30
        for name, v in sources.items():
            ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (mean {sum(v) / len(v):.3f})", density=True)
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.set_title("Routing entropy (cf. IDA-MoE Fig. 6; lower = more decisive)")
        ax.legend()
        ax.grid(alpha=0.3)
    else:
        note_axes(ax, "no routing probabilities or entropy values found")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def pick_sample(recs, question_id):
    """The routing record of the last MoE layer for one sample (the requested one, else the first)."""
    recs = [r for r in recs if isinstance(r.get("probs"), list) and r["probs"]]
    if not recs:
        return None
    qid = question_id if question_id is not None else recs[0].get("question_id")
    same = [r for r in recs if r.get("question_id") == qid] or recs
    return max(same, key=lambda r: r.get("layer", 0) if isinstance(r.get("layer"), int) else 0)


def plot_heatmap(routing, out, question_id=None):
    names = list(routing) or ["(none)"]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.6 + 1.5 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        rec = pick_sample(routing.get(name, []), question_id)
        if rec is None:
            note_axes(ax, f"{name}: no routing probabilities")
            continue
        rows = [[float(x) for x in p] for p in rec["probs"] if isinstance(p, list)]
        width = max(len(p) for p in rows)
        grid = [[p[e] if e < len(p) else 0.0 for p in rows] for e in range(width)]  # expert x token
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_ylabel("expert")
        ax.set_yticks(range(width))
        ax.set_title(f"{name}: question {rec.get('question_id', '?')}, MoE layer {rec.get('layer', '?')}", fontsize=10)
        tokens = rec.get("tokens")
        if isinstance(tokens, list) and len(tokens) == len(rows) and len(rows) <= 60:
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([str(t) for t in tokens], rotation=90, fontsize=6)
        else:
            ax.set_xlabel("token index")
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    fig.suptitle("Routing probability, token x expert (cf. IDA-MoE Fig. 3)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_load(metrics, out):
    finals = {}
    for name, recs in metrics.items():
        for r in reversed(recs):
            loads = layer_loads(r)
            if loads:
                finals[name] = loads
                break
    names = list(finals) or ["(none)"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        loads = finals.get(name)
        if not loads:
            note_axes(ax, "no expert_load in the metrics files")
            continue
        layers = sorted(loads, key=lambda k: int(k) if str(k).isdigit() else k)
        n_exp = max(len(v) for v in loads.values())
        width = 0.8 / max(n_exp, 1)
        for e in range(n_exp):
            shares = []
            for l in layers:
                v = loads[l]
                tot = sum(v) or 1.0
                shares.append(v[e] / tot if e < len(v) else 0.0)
            ax.bar([i + e * width for i in range(len(layers))], shares, width=width, label=f"expert {e}")
        ax.axhline(1.0 / max(n_exp, 1), color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))])
        ax.set_xticklabels([f"layer {l}" for l in layers])
        ax.set_ylabel("share of routed tokens")
        ax.set_title(f"{name}: final expert load")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---- table -----------------------------------------------------------------------------------

def accuracy(answers, questions):
    """{category: (correct, total)} plus 'all'."""
    by_id = {q.get("question_id"): q for q in questions}
    out = {}
    for a in answers:
        q = by_id.get(a.get("question_id"), {})
        gt = a.get("answer", a.get("gt", q.get("answer")))
        pred = a.get("text", a.get("prediction"))
        if gt is None or pred is None:
            continue
        cat = a.get("category", q.get("category", "all"))
        ok = normalise(pred) == normalise(gt)
        for c in {cat, "all"}:
            n_ok, n = out.get(c, (0, 0))
            out[c] = (n_ok + ok, n + 1)
    return out


def summary(metrics, answers, routing, questions, path):
    names = sorted(set(metrics) | set(answers) | set(routing))
    rows = []
    if not names:
        text = "# Demo: routers side by side\n\nNo metrics, answers or routing files were found.\n"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return text

    def last(recs, *keys):
        _, ys = series(recs, *keys)
        return f"{ys[-1]:.4f}" if ys else "n/a"

    def cv_last(recs):
        _, ys = cv_series(recs)
        return f"{ys[-1]:.4f}" if ys else "n/a"

    def tok_ent(recs):
        e = token_entropies(recs)
        return f"{sum(e) / len(e):.4f}" if e else "n/a"

    accs = {n: accuracy(answers.get(n, []), questions) for n in names}
    cats = sorted({c for a in accs.values() for c in a if c != "all"}) + ["all"]
    rows.append(("final CV_mean (lower = balanced)", {n: cv_last(metrics.get(n, [])) for n in names}))
    rows.append(("final logged entropy", {n: last(metrics.get(n, []), "routing_entropy", "entropy") for n in names}))
    rows.append(("mean per-token routing entropy", {n: tok_ent(routing.get(n, [])) for n in names}))
    rows.append(("final loss", {n: last(metrics.get(n, []), "loss", "ce_loss") for n in names}))
    for c in cats:
        vals = {}
        for n in names:
            ok, tot = accs[n].get(c, (0, 0))
            vals[n] = f"{100.0 * ok / tot:.1f}% ({ok}/{tot})" if tot else "n/a"
        rows.append((f"accuracy: {c}", vals))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, vals in rows:
        lines.append(f"| {label} | " + " | ".join(vals[n] for n in names) + " |")
    text = "# Demo: routers side by side\n\n" + "\n".join(lines) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


# ---- synthetic inputs (self-check) -----------------------------------------------------------

def make_synthetic(d, seed=0):
    """Two fake runs with the shapes the trainer logs: a balanced, decisive 'ida' and an imbalanced,
    diffuse 'linear_aux'. Only for checking that the plots draw; no number here is a result."""
    rng = random.Random(seed)
    os.makedirs(d, exist_ok=True)
    cats = ["colour", "shape", "count", "presence", "position", "largest"]
    questions = [{"question_id": i, "category": cats[i % 6], "answer": rng.choice(["red", "2", "yes", "left"])} for i in range(60)]
    with open(os.path.join(d, "questions.jsonl"), "w") as f:
        for q in questions:
            f.write(json.dumps(q) + "\n")
    for name, skew, sharp in (("ida", 0.1, 6.0), ("linear_aux", 0.6, 1.0)):
        with open(os.path.join(d, f"metrics_{name}.jsonl"), "w") as f:
            for step in range(0, 250, 10):
                decay = math.exp(-step / 80)
                loads = [[max(1.0, 100 * (1 + (skew * (e - 1.5) * (1 + decay)) + rng.gauss(0, 0.05))) for e in range(4)] for _ in range(2)]
                rec = {"step": step, "loss": 2.0 * decay + 0.5 + rng.gauss(0, 0.02),
                       "entropy": (0.4 if name == "ida" else 1.2) + 0.3 * decay,
                       "cv": [cv(l) for l in loads], "expert_load": loads, "moe_layers": [0, 2]}
                if step % 20 == 0:
                    rec["cv_mean"] = sum(rec["cv"]) / 2
                f.write(json.dumps(rec) + "\n")
            f.write("not json\n")  # a torn line, as a killed run leaves
        with open(os.path.join(d, f"routing_{name}.jsonl"), "w") as f:
            for qid in range(5):
                for layer in (0, 2):
                    probs = []
                    for _ in range(24):
                        logits = [rng.gauss(0, sharp) for _ in range(4)]
                        m = max(logits)
                        ex = [math.exp(x - m) for x in logits]
                        probs.append([x / sum(ex) for x in ex])
                    f.write(json.dumps({"question_id": qid, "layer": layer, "probs": probs,
                                        "tokens": [f"t{i}" for i in range(24)]}) + "\n")
        with open(os.path.join(d, f"answers_{name}.jsonl"), "w") as f:
            for q in questions:
                right = rng.random() < (0.8 if name == "ida" else 0.7)
                f.write(json.dumps({"question_id": q["question_id"], "text": q["answer"].upper() + "." if right else "blue"}) + "\n")
    return {"metrics": [f"{n}={d}/metrics_{n}.jsonl" for n in ("ida", "linear_aux")],
            "answers": [f"{n}={d}/answers_{n}.jsonl" for n in ("ida", "linear_aux")],
            "routing": [f"{n}={d}/routing_{n}.jsonl" for n in ("ida", "linear_aux")],
            "questions": f"{d}/questions.jsonl"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder for the PNGs and summary.md")
    ap.add_argument("--metrics", action="append", help="NAME=metrics.jsonl (repeatable)")
    ap.add_argument("--answers", action="append", help="NAME=answers.jsonl (repeatable)")
    ap.add_argument("--routing", action="append", help="NAME=routing.jsonl (repeatable)")
    ap.add_argument("--questions", help="eval questions JSONL with answer and category")
    ap.add_argument("--question-id", type=int, help="sample for the routing heatmap (default: the first)")
    ap.add_argument("--make-synthetic", metavar="DIR", help="write synthetic inputs to DIR and plot those")
    args = ap.parse_args()

    if args.make_synthetic:
        syn = make_synthetic(args.make_synthetic)
        args.metrics, args.answers, args.routing, args.questions = syn["metrics"], syn["answers"], syn["routing"], syn["questions"]

    os.makedirs(args.out, exist_ok=True)
    metrics = named_files(args.metrics, "metrics")
    answers = named_files(args.answers, "answers")
    routing = named_files(args.routing, "routing")
    questions = read_jsonl(args.questions) if args.questions and os.path.isfile(args.questions) else []

    plot_cv(metrics, os.path.join(args.out, "cv_mean.png"))
    plot_entropy(routing, metrics, os.path.join(args.out, "entropy_hist.png"))
    plot_heatmap(routing, os.path.join(args.out, "routing_heatmap.png"), args.question_id)
    plot_load(metrics, os.path.join(args.out, "expert_load.png"))
    print(summary(metrics, answers, routing, questions, os.path.join(args.out, "summary.md")))
    print(f"plot_demo: wrote cv_mean.png, entropy_hist.png, routing_heatmap.png, expert_load.png, summary.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
