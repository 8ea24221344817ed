"""The paper's 0.6B table on the real model: one command, its GPU-hours printed before it starts.

    python -m tools.reproduce_real --plan-only                 # the runs and their GPU-hours only
    python -m tools.reproduce_real --out results/real          # Qwen3-0.6B, argilla rows, IFEval, POLAR-1.8B
    python -m tools.reproduce_real report --out results/real   # the table and the claims again

The rows are the paper's for Qwen3-0.6B -- SFT, GRPO, SFT -> GRPO, SFT -> A-GRPO, A-GRPO, UniAPL,
CHORD-mu, CHORD-phi and their A- versions -- and its two ablations, lambda_adv and the adversarial
signal as reward shaping. Each row is `python train.py` at the real world's defaults (settings.py:
8 prompts x G = 8 rollouts of 512 tokens + 8 demonstrations, POLAR-1.8B, bf16 autocast), starting
from `--model` itself (the paper's base), for `--steps` optimizer steps (a staged row: half each),
then evaluated once on google/IFEval; the base is evaluated once too. The learning rates are
ours (the paper's are not public): `--lr-sft`, `--lr-rl`, `--lr-mixed`.

Each run is a process of its own (a fresh GPU; vLLM's allocator, one per process), in its own
directory with its config, metrics, checkpoints and evaluations; a command run again keeps every
finished run and resumes an interrupted one from its last checkpoint. The report is the toy's
(tools/claims.py: paired tests over seeds, Holm's correction); with one seed it is a table, not a
test -- the claims need several.

The plan's GPU-hours come from the newest GPU suite result in results/ (a step per rollout
engine, the evaluation's estimate for IFEval's 541 prompts); without one, from stated
assumptions (the fast path's goals), marked as such.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

from tools import claims

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [                                  # name -> stages: (method, extra train.py arguments)
    ("sft", [("sft", [])]), ("grpo", [("grpo", [])]), ("a-grpo", [("a-grpo", [])]),
    ("uniapl", [("uniapl", [])]), ("sft -> grpo", [("sft", []), ("grpo", [])]),
    ("sft -> a-grpo", [("sft", []), ("a-grpo", [])]),
    ("chord-mu", [("chord-mu", [])]), ("chord-phi", [("chord-phi", [])]),
    ("a-chord-mu", [("a-chord-mu", [])]), ("a-chord-phi", [("a-chord-phi", [])]),
    ("uniapl, adv as reward", [("uniapl", ["--adv-mode", "reward"])]),
    ("uniapl, lambda 1", [("uniapl", ["--lambda-adv", "1"])]),
]
ASSUMED = {"step_s": 6.0, "sft_step_s": 1.5, "eval_s": 120.0}   # the fast path's goals, if unmeasured


def gpu_figures() -> tuple[dict, str]:
    """Step and evaluation times from the newest results/gpu_suite_*.json, or the assumptions."""
    found = sorted(glob.glob(os.path.join(ROOT, "results", "gpu_suite_*.json")), key=os.path.getmtime)
    found = [f for f in found if not f.endswith("_cpu.json")]
    if found:
        r = json.load(open(found[-1]))
        steps = [s for s in r.get("steps", {}).values() if isinstance(s, dict) and "median_step_s" in s]
        if steps and "ifeval_estimate_s" in r.get("eval", {}):
            best = min(steps, key=lambda s: s["median_step_s"])
            phases = best["phase_s"]
            sft = sum(phases.get(p, 0) for p in ("forward", "backward", "optimizer"))
            return ({"step_s": best["median_step_s"], "sft_step_s": sft,
                     "eval_s": r["eval"]["ifeval_estimate_s"]},
                    f"measured: {os.path.relpath(found[-1], ROOT)} (engine {best['engine']})")
    return dict(ASSUMED), ("ASSUMED, no GPU suite result in results/: a step of 6 s (the static "
                           "engine's goal), an SFT step of 1.5 s, an evaluation of 120 s")


def plan(args) -> tuple[list[dict], str]:
    """Every run with its estimated seconds, and the table that says so."""
    fig, source = gpu_figures()
    runs, lines = [], ["| run | seeds | stages | steps | estimated GPU-hours |", "|---|---|---|---|---|"]
    for name, stages in [("base", [])] + selected(args):
        per = args.steps // max(1, len(stages))
        secs = fig["eval_s"] + sum(per * (fig["sft_step_s"] if m == "sft" else fig["step_s"])
                                   for m, _ in stages)
        runs += [{"name": name, "stages": stages, "seed": s, "est_s": secs} for s in args.seeds]
        lines.append(f"| {name} | {len(args.seeds)} | {' -> '.join(m for m, _ in stages) or 'evaluate'} | "
                     f"{args.steps if stages else 0} | {secs * len(args.seeds) / 3600:.2f} |")
    total = sum(r["est_s"] for r in runs) / 3600
    return runs, (f"Plan: {len(runs)} runs, about **{total:.1f} GPU-hours** on one GPU. Step and "
                  f"evaluation times: {source}.\n\n" + "\n".join(lines) + "\n")


def selected(args) -> list:
    return [c for c in CONFIGS if not args.configs or c[0] in args.configs]


def lr_of(method: str, args) -> float:
    """SFT stages --lr-sft, uniapl --lr-mixed, every other (GRPO-like) one --lr-rl."""
    return {"sft": args.lr_sft, "a-sft": args.lr_sft, "uniapl": args.lr_mixed}.get(method, args.lr_rl)


def run_one(run: dict, args) -> dict:
    """One row at one seed: its stages as train.py processes (kept if finished, resumed if not)."""
    name, seed, stages = run["name"], run["seed"], run["stages"]
    where = os.path.join(args.out, "runs", f"{name.replace(' ', '').replace(',', '_')}-s{seed}")
    t0, model = time.perf_counter(), args.model
    common = ["--dataset", args.dataset, "--eval-dataset", args.eval_dataset, "--seed", str(seed),
              "--no-progress", "--eval-every", "0", *(["--discriminator-model", args.discriminator_model]
                                                      if args.discriminator_model else []),
              "--device", args.device, *args.train_args]
    if not stages:                         # the base: one evaluation of --model itself
        out = os.path.join(where, "eval.json")
        if not os.path.exists(out):
            os.makedirs(where, exist_ok=True)
            subprocess.run([sys.executable, "eval.py", "--model", model, "--dataset", args.eval_dataset,
                            "--out", out, *limits(args, "--limit", "--max-new-tokens")], cwd=ROOT, check=True)
        final = json.load(open(out))
    for i, (method, extra) in enumerate(stages):
        out = os.path.join(where, f"stage{i + 1}")
        if not os.path.exists(os.path.join(out, "final", "uniapl.json")):
            resume = ["--resume", "auto"] if os.path.isdir(os.path.join(out, "checkpoints")) and \
                os.listdir(os.path.join(out, "checkpoints")) else []
            if not resume:
                import shutil
                shutil.rmtree(out, ignore_errors=True)
            subprocess.run([sys.executable, "train.py", "--model", model, "--method", method,
                            "--steps", str(args.steps // len(stages)), "--out", out, "--no-eval-start",
                            "--learning-rate", str(lr_of(method, args)), *common, *extra, *resume,
                            *limits(args, "--eval-limit", "--eval-max-new-tokens")], cwd=ROOT, check=True)
        model = os.path.join(out, "final")
        final = json.load(open(os.path.join(out, "eval_final.json")))
    return {"name": name, "seed": seed, "lrs": [lr_of(m, args) for m, _ in stages],
            "accuracy": final["prompt_strict"], "inst_strict": final["inst_strict"],
            "prompt_loose": final["prompt_loose"], "inst_loose": final["inst_loose"],
            "n_eval": final["n_prompts"], "teacher": None, "run_dir": where,
            "wall_s": time.perf_counter() - t0}


def limits(args, limit_flag: str, length_flag: str) -> list[str]:
    """The evaluation's prompt limit and answer length, in train.py's or eval.py's words."""
    return ([limit_flag, str(args.eval_limit)] if args.eval_limit else []) + \
        ([length_flag, str(args.eval_max_new_tokens)] if args.eval_max_new_tokens else [])


def report(args) -> str:
    saved = json.load(open(os.path.join(args.out, "real_table.json")))
    results = saved["results"]
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    lines = [f"The paper's table on {saved['model']} (train: {saved['dataset']}, evaluation: "
             f"{saved['eval_dataset']}), {saved['steps']} steps per run; IFEval's prompt-level "
             f"strict accuracy, mean ± std over seeds. Machine: {saved['machine']}.", "",
             "| run | seeds | lr (per stage) | prompt strict | inst strict | prompt loose | inst loose |",
             "|---|---|---|---|---|---|---|"]
    for name, _ in [("base", [])] + CONFIGS:
        rs = by.get(name)
        if rs:
            ms = lambda k, rs=rs: (f"{statistics.mean(r[k] for r in rs):.3f}" + (  # noqa: E731
                f" ± {statistics.stdev(r[k] for r in rs):.3f}" if len(rs) > 1 else ""))
            lines.append(f"| {name} | {len(rs)} | {', '.join(f'{x:g}' for x in rs[0]['lrs']) or '-'} | "
                         f"{ms('accuracy')} | {ms('inst_strict')} | {ms('prompt_loose')} | {ms('inst_loose')} |")
    md = "\n".join(lines) + "\n\n" + claims.claims_table(results)
    with open(os.path.join(args.out, "real_table.md"), "w") as f:
        f.write(md)
    print(md)
    return md


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="run", choices=["run", "report"])
    p.add_argument("--model", default="Qwen/Qwen3-0.6B")
    p.add_argument("--dataset", default="argilla/ifeval-like-data:filtered")
    p.add_argument("--eval-dataset", default="google/IFEval")
    p.add_argument("--discriminator-model", default=None, help="default: settings.py's (POLAR-1.8B)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per row (staged: half each)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--configs", nargs="+", default=None, help="only these rows")
    p.add_argument("--lr-sft", type=float, default=1e-5, help="SFT stages (ours)")
    p.add_argument("--lr-rl", type=float, default=1e-6, help="GRPO-like rows and second stages (ours)")
    p.add_argument("--lr-mixed", type=float, default=1e-6, help="uniapl rows (ours)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N prompts")
    p.add_argument("--eval-max-new-tokens", type=int, default=None, help="default: the real world's 1,280")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="appended to every train.py call (last on the command line)")
    p.add_argument("--out", default="results/real")
    p.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    p.add_argument("--machine", default=None)
    args = p.parse_args(argv)
    if args.what == "report":
        return report(args)
    runs, md = plan(args)
    print(md, flush=True)
    if args.plan_only:
        return md
    import parallel
    machine = args.machine or parallel.device_name(parallel.pick_device(args.device))
    path = os.path.join(args.out, "real_table.json")
    os.makedirs(args.out, exist_ok=True)
    saved = json.load(open(path)) if os.path.exists(path) else {"results": []}
    for run in runs:
        print(f"[reproduce_real] {run['name']} seed {run['seed']}", flush=True)
        result = run_one(run, args)
        saved["results"] = [r for r in saved["results"]
                            if (r["name"], r["seed"]) != (run["name"], run["seed"])] + [result]
        saved |= {"model": args.model, "dataset": args.dataset, "eval_dataset": args.eval_dataset,
                  "steps": args.steps, "machine": machine, "plan": md}
        with open(path, "w") as f:
            json.dump(saved, f, indent=1)
    return report(args)


if __name__ == "__main__":
    main()
