"""Plots: training curves, behaviour histograms (eval.py), the reproduction's figures.

    python -m tools.plots RUN_DIR [RUN_DIR ...] --out curves.png   # one line per run, one panel per metric
    python -m tools.plots --behaviour RUN/final/eval.json         # eval.py --behaviour's histograms

Per-step RL metrics are noisy, so training curves are drawn as a trailing moving average (the
window is in the panel title); evaluation points are drawn as they are. Each run keeps one colour
in every panel. matplotlib is the only plotting dependency; without it, one line says what to install.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import numpy as np


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        raise SystemExit("plots need matplotlib: pip install matplotlib") from None


def plot_behaviour(result: dict, path: str, title: str = "") -> None:
    """Two histograms: response length and mean token log-prob, student vs teacher."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "length", "response length (tokens)"),
                           (axes[1], "logprob", "mean token log-prob under the student")):
        d = result[key]
        bins = np.histogram_bin_edges(d["student"] + d["teacher"], bins=20)
        ax.hist(d["teacher"], bins=bins, alpha=0.55, label="teacher responses")
        ax.hist(d["student"], bins=bins, alpha=0.55, label="student samples")
        ax.set_xlabel(label)
        ax.set_title(f"W1 {d['w1']:.3g}, KS {d['ks']:.2f}")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------

CURVES = [("reward", "mean rollout reward"), ("eval/prompt_strict", "held-out prompt-level strict"),
          ("loss", "unified loss"), ("sft/nll", "L_SFT (NLL)"), ("grpo/loss", "L_GRPO"),
          ("adv/loss", "L_ADV"), ("completion_len", "completion length (tokens)"),
          ("adv/corr_d_r", "corr(discriminator, reward)")]


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: not found (is {run_dir} a training run directory?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (per-step metrics of RL are noisy; eval points are not smoothed)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y - (ys[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(run_dirs: list[str], path: str, labels: list[str] | None = None,
                smooth: int = 10) -> None:
    """Reward, IF accuracy, losses and completion length against the step, one line per run."""
    plt = pyplot()
    labels = labels or [os.path.normpath(d) for d in run_dirs]
    runs = dict(zip(labels, (read_metrics(d) for d in run_dirs)))
    present = [(k, t) for k, t in CURVES if any(k in m for ms in runs.values() for m in ms)]
    cols = 2
    fig, axes = plt.subplots((len(present) + 1) // cols, cols,
                             figsize=(10, 2.8 * ((len(present) + 1) // cols)), squeeze=False)
    for ax, (key, title) in zip(axes.flat, present):
        for color, (name, ms) in enumerate(runs.items()):   # one colour per run in every panel
            pts = [(m["step"], m[key]) for m in ms if key in m and m[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                is_eval = key.startswith("eval/")
                ax.plot(xs, ys if is_eval else _smooth(list(ys), smooth), label=name,
                        color=f"C{color}", marker="o" if is_eval else None, markersize=3,
                        linewidth=1)
        ax.set_title(title + ("" if key.startswith("eval/") else f" (moving avg {smooth})"),
                     fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=f"C{i}", label=name) for i, name in enumerate(runs)]
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.03 * ((len(handles) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The reproduction's figures (tools/reproduce.py): one per claim
# ----------------------------------------------------------------------------------------------

def plot_claims(rows: list, path: str, colors: list[str] | None = None) -> None:
    """One paired interval per claim ((claim, ci) rows; a row whose ci is None is left out)."""
    plt = pyplot()
    colors = [c for c, (_, ci) in zip(colors or ["C0"] * len(rows), rows) if ci]
    rows = [(c, ci) for c, ci in rows if ci]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1))
    for i, ((_claim, ci), color) in enumerate(zip(rows, colors)):
        ax.errorbar(ci["mean"], i, xerr=[[ci["mean"] - ci["low"]], [ci["high"] - ci["mean"]]],
                    fmt="o", capsize=3, color=color)
    ax.axvline(0, color="gray", linestyle="--")
    ax.set_yticks(range(len(rows)), [c for c, _ in rows], fontsize=8)
    ax.set_xlabel("paired difference of IF accuracy (95% CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(results: list[dict], configs, path: str, keys=("accuracy", "ood"),
              labels=("all prompts", "held-out combinations"), base: float | None = None) -> None:
    plt = pyplot()
    names = [n for n, _ in configs if any(r["name"] == n for r in results)]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.6))
    for j, (key, label) in enumerate(zip(keys, labels)):
        means, errs = [], []
        for n in names:
            xs = [r[key] for r in results if r["name"] == n and r.get(key) is not None]
            means.append(statistics.mean(xs) if xs else 0)
            errs.append(statistics.stdev(xs) if len(xs) > 1 else 0)
        ax.bar([i + 0.4 * j for i in range(len(names))], means, 0.4, yerr=errs, capsize=2,
               label=label)
    if keys[0] == "accuracy":
        ax.axhline(statistics.mean(r["teacher"] for r in results), color="gray", linestyle="--",
                   label="teacher")
    if base is not None:
        ax.axhline(base, color="gray", linestyle=":", label="base student (start of every run)")
    ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("prompt-level strict IF accuracy" if keys[0] == "accuracy" else "")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(results: list[dict], sweep: dict, path: str) -> None:
    plt = pyplot()
    pts = [(lam, [r["accuracy"] for r in results if r["name"] == n]) for n, lam in sweep.items()]
    pts = [(lam, xs) for lam, xs in pts if xs]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar([p[0] for p in pts], [statistics.mean(x) for _, x in pts],
                yerr=[statistics.stdev(x) if len(x) > 1 else 0 for _, x in pts], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("lambda_adv (uniapl, alpha 0.5)")
    ax.set_ylabel("held-out IF accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_teacher_gaps(gaps: dict, path: str) -> None:
    """Each comparison's paired gap (mean and 95% interval over seeds) against the teacher's
    accuracy: where, if anywhere, does the one-step objective pull ahead?"""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for k, (label, pts) in enumerate(gaps.items()):
        x = [acc + 0.006 * (k - 0.5) for acc, _ in pts]     # side by side, not on top
        y = [ci["mean"] for _, ci in pts]
        err = [[ci["mean"] - ci["low"] for _, ci in pts], [ci["high"] - ci["mean"] for _, ci in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("teacher accuracy (its demonstrations' share that pass)")
    ax.set_ylabel("accuracy gap (95% CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_shifted(results: list[dict], arms: list[str], families, key: dict, path: str) -> None:
    """tools/shifted.py's curves: accuracy per instruction family, and the teacher's log-prob on
    the D-only prompts, against the step of the shared timeline; each arm's mean over seeds with
    a band of one standard error (the nolength arms dashed: their families differ)."""
    plt = pyplot()
    panels = [(f"{fam} prompts (64 tokens)", key[fam]) for fam in families] + \
        [("teacher's log-prob on D-only prompts", "teacher_logp_d")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4))
    for k, arm in enumerate(arms):
        rs = [r for r in results if r["name"] == arm]
        if not rs:
            continue
        steps = sorted({int(t) for r in rs for t in r["evals"]})
        for ax, (title, metric) in zip(axes, panels):
            pts = [(t, [r["evals"][str(t)][metric] for r in rs if str(t) in r["evals"]
                        and r["evals"][str(t)].get(metric) is not None]) for t in steps]
            pts = [(t, ys) for t, ys in pts if ys]
            mean = np.array([statistics.mean(ys) for _, ys in pts])
            se = np.array([statistics.stdev(ys) / len(ys) ** 0.5 if len(ys) > 1 else 0 for _, ys in pts])
            x = [t for t, _ in pts]
            ax.plot(x, mean, color=f"C{k}", ls="--" if "nolength" in arm else "-", marker=".", label=arm)
            ax.fill_between(x, mean - se, mean + se, color=f"C{k}", alpha=0.15)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_polar_validation(res: dict, path: str) -> None:
    """tools/toy_polar.py's checks: pairs ordered right (toy POLAR at each stage, lexical), and
    the rank correlation with the reward among sibling rollouts, per student."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    kinds = list(res["accuracy"])
    stages = [("untrained", res["accuracy_untrained"]), ("pre-trained", res["accuracy_pretrained"]),
              ("fine-tuned", res["accuracy"]), ("lexical", res["accuracy_lexical"])]
    width = 0.8 / len(stages)
    for i, (label, acc) in enumerate(stages):
        left.bar(np.arange(len(kinds)) + (i - 1.5) * width, [acc[k] for k in kinds], width, label=label)
    left.axhline(0.5, color="grey", lw=0.8)
    left.set_xticks(np.arange(len(kinds)), [k.replace("/", "\n") for k in kinds], fontsize=8)
    left.set_ylabel("pairs in the right order (held-out prompts)")
    left.legend(fontsize=8)
    students = sorted({k.split(" / ")[1] for k in res["siblings"]})
    for i, disc in enumerate(sorted({k.split(" / ")[0] for k in res["siblings"]})):
        rho = [res["siblings"].get(f"{disc} / {s}", {}).get("spearman_mean") or 0 for s in students]
        right.bar(np.arange(len(students)) + (i - 0.5) * 0.4, rho, 0.4, label=disc)
    right.axhline(0, color="grey", lw=0.8)
    right.set_xticks(np.arange(len(students)), students, fontsize=8)
    right.set_ylabel("mean Spearman(d, reward) among siblings")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="Training curves of runs, or the behaviour histograms of "
                                "an evaluation (eval.py --behaviour).")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR")
    p.add_argument("--behaviour", metavar="EVAL_JSON", help="eval.py's JSON with a 'behaviour' part")
    p.add_argument("--out", default=None, help="PNG path (default: curves.png, or beside EVAL_JSON)")
    p.add_argument("--smooth", type=int, default=10, help="moving-average window (steps)")
    args = p.parse_args(argv)
    if args.behaviour:
        with open(args.behaviour) as f:
            result = json.load(f)
        if "behaviour" not in result:
            raise SystemExit(f"{args.behaviour} has no 'behaviour' part: run eval.py --behaviour")
        out = args.out or os.path.splitext(args.behaviour)[0] + "_behaviour.png"
        plot_behaviour(result["behaviour"], out, title=args.behaviour)
    elif args.runs:
        out = args.out or "curves.png"
        plot_curves(args.runs, out, smooth=args.smooth)
    else:
        raise SystemExit("give RUN_DIR(s) or --behaviour EVAL_JSON")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
