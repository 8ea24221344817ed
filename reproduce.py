"""The toy reproduction table: every method at one step budget, over seeds, plus the lambda sweep.

    python reproduce.py --out results   # 3 seeds, 150 steps per run, 2 at a time (~40 min, 2 CPUs)
    python reproduce.py --quick         # a smoke test of the whole pipeline in under a minute

The idea
--------
The paper's claims (PAPER.md): one unified step beats GRPO and the staged SFT -> GRPO pipeline;
the student can beat its teacher; the trained model's length and log-probability distributions
match the teacher's; the adversarial term works better as a separate loss than as reward shaping;
too large a lambda_adv hurts. This script measures each of them on the toy world, where they can
be seen in minutes -- or not seen. It reports what it measures.

Runs (each seed; every run gets the same total number of optimizer steps):
    sft, grpo, a-grpo, uniapl                        one stage
    sft -> grpo, sft -> a-grpo                       two stages of half the budget each
    uniapl --adv-mode reward                         the reward-shaping ablation
    uniapl with lambda_adv in 1e-4, 1e-3, 1e-2, 1e-1 (the default run), 1

For every run: held-out prompt-level strict accuracy (greedy, the toy eval split), wall time, and
the behaviour analysis of evaluate.py (W1 distance of the student's sample lengths and mean token
log-probs to the teacher's). Results: results/toy_table.md (mean +- std over seeds), .json, and
plots (training curves of the first seed, accuracy against lambda_adv).

Nothing here is tuned per method: every run uses train.py's toy defaults except the method and
the step budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = [  # name -> stages: list of (method, extra args); stages split the step budget
    ("sft", [("sft", [])]),
    ("grpo", [("grpo", [])]),
    ("a-grpo", [("a-grpo", [])]),
    ("uniapl", [("uniapl", [])]),
    ("sft -> grpo", [("sft", []), ("grpo", [])]),
    ("sft -> a-grpo", [("sft", []), ("a-grpo", [])]),
    ("uniapl, adv as reward", [("uniapl", ["--adv-mode", "reward"])]),
    ("uniapl, lambda 1e-4", [("uniapl", ["--lambda-adv", "1e-4"])]),
    ("uniapl, lambda 1e-3", [("uniapl", ["--lambda-adv", "1e-3"])]),
    ("uniapl, lambda 1e-2", [("uniapl", ["--lambda-adv", "1e-2"])]),
    ("uniapl, lambda 1", [("uniapl", ["--lambda-adv", "1"])]),
]
SWEEP = {"uniapl, lambda 1e-4": 1e-4, "uniapl, lambda 1e-3": 1e-3, "uniapl, lambda 1e-2": 1e-2,
         "uniapl": 0.1, "uniapl, lambda 1": 1.0}
QUICK = ["--sft-batch-size", "2", "--rl-batch-size", "2", "--num-generations", "2",
         "--max-completion-length", "12", "--eval-limit", "6"]


def run_job(spec: dict) -> dict:
    """One configuration at one seed, in this process: its stages, then the behaviour analysis."""
    import torch

    import checkpoint
    import data
    import evaluate
    import train
    torch.set_num_threads(1)   # jobs run side by side, one core each
    t0 = time.perf_counter()
    model_arg, per_stage = "toy", spec["steps"] // len(spec["stages"])
    for i, (method, extra) in enumerate(spec["stages"]):
        out = os.path.join(spec["dir"], f"stage{i + 1}")
        train.main(["--model", model_arg, "--method", method, "--steps", str(per_stage),
                    "--seed", str(spec["seed"]), "--out", out, "--no-progress", "--save-every", "0",
                    *extra, *spec["extra"]])
        model_arg = os.path.join(out, "final")
    wall = time.perf_counter() - t0
    device = torch.device("cpu")
    model, tok = checkpoint.load_policy(model_arg, device)
    cfg = json.load(open(os.path.join(out, "config.json")))
    rows = data.load_rows("toy", "eval", toy_seed=spec["seed"])[:cfg["eval_limit"]]
    b = evaluate.behaviour(model, tok, rows, max_new_tokens=cfg["max_completion_length"],
                             seed=spec["seed"])
    final = json.load(open(os.path.join(out, "eval_final.json")))
    return {"name": spec["name"], "seed": spec["seed"], "accuracy": final["prompt_strict"],
            "inst_strict": final["inst_strict"], "teacher": evaluate.teacher_accuracy(rows)["prompt_strict"],
            "length_w1": b["length"]["w1"], "logprob_w1": b["logprob"]["w1"],
            "length_mean": b["length"]["student_mean"], "teacher_length_mean": b["length"]["teacher_mean"],
            "wall_s": wall, "run_dir": out, "n_eval": len(rows)}


def _spawn(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, os.path.join(HERE, "reproduce.py"), "_job", json.dumps(spec)],
                         capture_output=True, text=True, env=env, cwd=HERE)
    if res.returncode != 0:
        raise RuntimeError(f"run {spec['name']!r} seed {spec['seed']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def write_table(results: list[dict], args, out: str) -> str:
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    teacher = statistics.mean(r["teacher"] for r in results)
    lines = [f"Toy world, {args.steps} optimizer steps per run, seeds {args.seeds}, "
             f"{len(by)} configurations; held-out prompt-level strict IF accuracy (greedy, "
             f"{results[0]['n_eval']} prompts per seed). Teacher on the same prompts: "
             f"{teacher:.3f}. Machine: {args.machine}.", "",
             "| run | IF accuracy | inst-level | length W1 to teacher | log-prob W1 to teacher | "
             "wall s |", "|---|---|---|---|---|---|"]
    for name, _ in CONFIGS:
        rs = by.get(name)
        if rs:
            lines.append(f"| {name} | {mean_std([r['accuracy'] for r in rs])} | "
                         f"{mean_std([r['inst_strict'] for r in rs])} | "
                         f"{mean_std([r['length_w1'] for r in rs])} | "
                         f"{mean_std([r['logprob_w1'] for r in rs])} | "
                         f"{statistics.mean(r['wall_s'] for r in rs):.0f} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "toy_table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "toy_table.json"), "w") as f:
        json.dump({"steps": args.steps, "seeds": args.seeds, "machine": args.machine,
                   "results": results}, f, indent=1)
    return table


def plots(results: list[dict], out: str) -> None:
    import plots as plotting
    plt = plotting.pyplot()
    first = min(r["seed"] for r in results)
    picked = [r for name in ("sft", "grpo", "a-grpo", "uniapl", "sft -> grpo")
              for r in results if r["name"] == name and r["seed"] == first]
    plotting.plot_curves([r["run_dir"] for r in picked], os.path.join(out, "toy_curves.png"),
                           labels=[f"{r['name']} (seed {first})" for r in picked])
    pts = [(lam, [r["accuracy"] for r in results if r["name"] == n]) for n, lam in SWEEP.items()]
    pts = [(lam, accs) for lam, accs in pts if accs]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.errorbar([p[0] for p in pts], [statistics.mean(a) for _, a in pts],
                    yerr=[statistics.stdev(a) if len(a) > 1 else 0 for _, a in pts], marker="o", capsize=3)
        grpo = [r["accuracy"] for r in results if r["name"] == "grpo"]
        if grpo:
            ax.axhline(statistics.mean(grpo), color="gray", linestyle="--", label="grpo")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("lambda_adv (uniapl, alpha = 0.5)")
        ax.set_ylabel("held-out IF accuracy")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "lambda_sweep.png"), dpi=110)
        plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_job":
        print(json.dumps(run_job(json.loads(argv[1]))))
        return None
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run (all stages)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one core each)")
    p.add_argument("--out", default="runs/reproduce",
                   help="where the table, plots and runs go (README's results: --out results)")
    p.add_argument("--quick", action="store_true", help="tiny runs: a smoke test of the pipeline")
    p.add_argument("--machine", default=None, help="what to call this machine in the table")
    p.add_argument("--replot", action="store_true", help="redraw the plots from OUT/toy_table.json")
    args = p.parse_args(argv)
    if args.replot:
        plots(json.load(open(os.path.join(args.out, "toy_table.json")))["results"], args.out)
        return None
    extra = []
    if args.quick:
        args.seeds, args.steps, extra = args.seeds[:1], 4, QUICK
    if args.machine is None:
        import dist
        args.machine = dist.device_name("cpu")
    runs_dir = os.path.join(args.out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    specs = [{"name": name, "stages": stages, "seed": seed, "steps": args.steps, "extra": extra,
              "dir": os.path.join(runs_dir, f"{name.replace(' ', '').replace(',', '_')}-s{seed}")}
             for seed in args.seeds for name, stages in CONFIGS]
    for s in specs:   # a fresh run directory each time
        shutil.rmtree(s["dir"], ignore_errors=True)
    t0 = time.perf_counter()
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(_spawn, specs):
            results.append(r)
            print(f"  {r['name']:24s} seed {r['seed']}: accuracy {r['accuracy']:.3f}, "
                  f"{r['wall_s']:.0f} s", flush=True)
    table = write_table(results, args, args.out)
    plots(results, args.out)
    print("\n" + table + f"\ntotal wall time {time.perf_counter() - t0:.0f} s; wrote {args.out}/")
    return results


if __name__ == "__main__":
    main()
