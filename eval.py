"""Evaluation: IFEval-style accuracy of a model, and how its behaviour compares with the teacher's.

    python eval.py --model runs/uniapl-.../final                  # toy or any HF model directory
    python eval.py --model Qwen/Qwen3-0.6B --eval-dataset google/IFEval
    python eval.py --model DIR --behaviour                        # + distributions vs the teacher
    python eval.py --plot RUN_DIR [RUN_DIR ...]                   # training curves

The idea
--------
* **Accuracy.** Greedy generation (as IFEval reports), then ifeval.evaluate's four numbers:
  prompt- and instruction-level accuracy, strict and loose.
* **Behaviour against the teacher** (the paper's claim that UniAPL's outputs match the expert's
  length and log-probability distributions). For an evaluation set with teacher responses:
    - length (tokens) of the student's own samples vs the teacher's responses;
    - mean token log-probability, under the student, of the student's samples and of the
      teacher's responses (how "typical" the expert's text is for the student);
    - distances between the two distributions: Wasserstein-1 (mean absolute difference of
      quantile functions) and Kolmogorov-Smirnov (largest gap of the empirical CDFs), computed
      here in a few lines of numpy rather than imported;
    - PNG histograms of both (matplotlib).
  Student samples here are drawn at the training temperature (not greedy), since distributions are
  what is compared.
* **Training curves** from one or several runs' metrics.jsonl: reward, IF accuracy, losses and
  completion length against the step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import numpy as np
import torch

import data
import grpo
import ifeval
from logprobs import sequence_logprobs


def generate_responses(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                       batch_size: int = 32, greedy: bool = True, temperature: float = 1.0,
                       autocast=contextlib.nullcontext) -> tuple[list[str], list[int]]:
    """One response per prompt; returns (texts, lengths in tokens incl. EOS)."""
    texts, lengths = [], []
    for i in range(0, len(prompts), batch_size):
        with autocast():
            ro = grpo.generate(model, tokenizer, prompts[i:i + batch_size], 1, greedy=greedy,
                               temperature=temperature, max_new_tokens=max_new_tokens)
        texts += ro.texts
        lengths += ro.completion_mask.sum(1).tolist()
    return texts, lengths


def evaluate_model(model, tokenizer, rows: list[dict], *, max_new_tokens: int,
                   batch_size: int = 32, autocast=contextlib.nullcontext) -> dict:
    """Greedy responses and IFEval's metrics; the dict also carries the responses."""
    texts, _ = generate_responses(model, tokenizer, [r["prompt"] for r in rows],
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  autocast=autocast)
    metrics = ifeval.evaluate(rows, texts)
    metrics["responses"] = [{"key": r["key"], "prompt": r["prompt"], "response": t}
                            for r, t in zip(rows, texts)]
    return metrics


def teacher_accuracy(rows: list[dict]) -> dict:
    """The teacher's own IFEval metrics on rows that carry its responses."""
    with_resp = [r for r in rows if r.get("response")]
    if not with_resp:
        return {}
    m = ifeval.evaluate(with_resp, [r["response"] for r in with_resp])
    return {k: m[k] for k in ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")}


# ----------------------------------------------------------------------------------------------
# Behaviour analysis
# ----------------------------------------------------------------------------------------------

def wasserstein1(a, b) -> float:
    """W1 between two empirical distributions: integral of |F_a - F_b| over the real line."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(a, grid[:-1], side="right") / len(a)
    fb = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(grid)))


def ks_distance(a, b) -> float:
    """Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


@torch.no_grad()
def mean_token_logprobs(model, tokenizer, prompts: list[str], responses: list[str],
                        temperature: float = 1.0, batch_size: int = 32) -> list[float]:
    """Mean log pi(token) over each response's tokens (EOS included), under `model`."""
    out = []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        rows = [{"prompt": p, "response": r} for p, r in
                zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        batch = data.demo_batch(tokenizer, rows, max_response_length=10**9)
        lp = sequence_logprobs(model, batch.input_ids.to(device), batch.attention_mask.to(device),
                               batch.score_mask.to(device), temperature)          # [B, T-1]
        mask = batch.score_mask[:, 1:].to(device).float()
        out += ((lp * mask).sum(1) / mask.sum(1)).tolist()
    return out


def behaviour(model, tokenizer, rows: list[dict], *, max_new_tokens: int, temperature: float = 1.0,
              batch_size: int = 32, seed: int = 0) -> dict:
    """Length and log-prob distributions of student samples vs teacher responses, with distances."""
    rows = [r for r in rows if r.get("response")]
    if not rows:
        raise ValueError("behaviour analysis needs an evaluation set with teacher responses")
    prompts, teacher = [r["prompt"] for r in rows], [r["response"] for r in rows]
    torch.manual_seed(seed)
    samples, student_len = generate_responses(model, tokenizer, prompts, greedy=False,
                                              temperature=temperature, batch_size=batch_size,
                                              max_new_tokens=max_new_tokens)
    teacher_len = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in teacher]
    lp_student = mean_token_logprobs(model, tokenizer, prompts, samples, temperature, batch_size)
    lp_teacher = mean_token_logprobs(model, tokenizer, prompts, teacher, temperature, batch_size)
    return {
        "n": len(rows),
        "length": {"student": student_len, "teacher": teacher_len,
                   "w1": wasserstein1(student_len, teacher_len), "ks": ks_distance(student_len, teacher_len),
                   "student_mean": float(np.mean(student_len)), "teacher_mean": float(np.mean(teacher_len))},
        "logprob": {"student": lp_student, "teacher": lp_teacher,
                    "w1": wasserstein1(lp_student, lp_teacher), "ks": ks_distance(lp_student, lp_teacher),
                    "student_mean": float(np.mean(lp_student)),
                    "teacher_mean": float(np.mean(lp_teacher))},
        "sample_accuracy": ifeval.evaluate(rows, samples)["prompt_strict"],
    }


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        raise SystemExit("plots need matplotlib: pip install matplotlib") from None


def plot_behaviour(result: dict, path: str, title: str = "") -> None:
    """Two histograms: response length and mean token log-prob, student vs teacher."""
    plt = _pyplot()
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
    plt = _pyplot()
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
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="'toy' (fresh random), a run's final/ directory, or a hub id")
    p.add_argument("--eval-dataset", default=None,
                   help="toy | google/IFEval | a local .jsonl/.parquet (default: toy for toy models)")
    p.add_argument("--seed", type=int, default=0, help="toy world seed (selects the eval split)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N prompts only")
    p.add_argument("--behaviour", action="store_true", help="also compare with the teacher")
    p.add_argument("--temperature", type=float, default=1.0, help="for --behaviour samples")
    p.add_argument("--out", default=None, help="JSON path (default: next to the model)")
    p.add_argument("--plot", nargs="+", metavar="RUN_DIR", help="plot training curves instead")
    p.add_argument("--plot-out", default="curves.png")
    args = p.parse_args(argv)
    if args.plot:
        plot_curves(args.plot, args.plot_out)
        print(f"wrote {args.plot_out}")
        return
    if not args.model:
        p.error("--model is required (or --plot RUN_DIR ...)")
    import train  # model loading (toy, local directory, hub id) lives with the training CLI
    device = train.pick_device(None)
    model, tokenizer = train.load_policy(args.model, device, seed=args.seed)
    world = train.world_of(args.model)
    spec = args.eval_dataset or train.DEFAULTS[world]["eval_dataset"]
    rows = data.load_rows(spec, "eval" if spec == "toy" else "train", toy_seed=args.seed)
    rows = rows[:args.limit] if args.limit else rows
    max_new = args.max_new_tokens or train.DEFAULTS[world]["max_completion_length"]
    autocast = train.autocast_for(device)
    result = evaluate_model(model, tokenizer, rows, max_new_tokens=max_new,
                            batch_size=args.batch_size, autocast=autocast)
    result["teacher"] = teacher_accuracy(rows)
    print(json.dumps({k: result[k] for k in ("prompt_strict", "inst_strict", "prompt_loose",
                                             "inst_loose", "n_prompts")}, indent=1))
    out = args.out or (os.path.join(args.model, "eval.json") if os.path.isdir(args.model)
                       else "eval.json")
    if args.behaviour:
        b = behaviour(model, tokenizer, rows, max_new_tokens=max_new, temperature=args.temperature,
                      batch_size=args.batch_size, seed=args.seed)
        result["behaviour"] = b
        png = os.path.splitext(out)[0] + "_behaviour.png"
        plot_behaviour(b, png, title=f"{args.model}")
        print(f"length W1 {b['length']['w1']:.3f}  logprob W1 {b['logprob']['w1']:.3f}  -> {png}")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
