"""The paper's experiment on the toy world: every method of its tables, from one shared base model.

    python -m tools.reproduce lr-grid --out results    # 1. each method's learning rate, on a validation split
    python -m tools.reproduce --out results            # 2. the main table (5 seeds, 300 prompts)
    python -m tools.reproduce ablations --out results  # 3. coefficient, reward shaping, lambda, flawed teacher
    python -m tools.reproduce discriminators --out results   # 4. does the discriminator track the reward?
    python -m tools.reproduce report --out results     # tables, claims and figures again, from the JSON
    python -m tools.reproduce --quick                  # the whole pipeline in a minute (a CI test)

The idea
--------
The paper's claims (PAPER.md) are comparisons between post-training methods that all start from
the same capable model. So does this script: for each seed it first makes a **base student** --
the toy model after a short SFT on a teacher that ignores every instruction (toy.py, "base"): it
speaks the toy language and the chat format but follows instructions about as well as chance --
and every method then starts from that base. Runs train on the "holdout" world, whose training
prompts never combine the instructions of three held-out pairs; evaluation on 300 held-out prompts
reports those combinations separately (out-of-domain).

Methods (the paper's rows; "A-" adds the adversarial term): SFT, A-SFT, GRPO, A-GRPO, UniAPL, the
staged SFT -> GRPO, SFT -> A-GRPO and A-SFT -> A-GRPO (two stages of half the steps each),
CHORD-mu, CHORD-phi and A-CHORD-phi. Every run gets the same number of optimizer steps.

Fair optimisation: `lr-grid` trains every method at each learning rate of one small grid, one
seed, and scores it on a *validation* split (toy.py: prompts disjoint from training and from
evaluation); the main table then uses each method's best rate, read from OUT/lr_grid.json (the
toy default 1e-3 for all when that file is absent -- the table says which).

Statistics: mean +- std over seeds, and for each comparison the paper makes the paired difference
(same seed, same base model, same evaluation prompts) with a 95% t-interval. Figures: one per claim.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository

MAIN = [  # name -> stages: (method, extra args); stages split the step budget
    ("sft", [("sft", [])]),
    ("a-sft", [("a-sft", [])]),
    ("grpo", [("grpo", [])]),
    ("a-grpo", [("a-grpo", [])]),
    ("uniapl", [("uniapl", [])]),
    ("sft -> grpo", [("sft", []), ("grpo", [])]),
    ("sft -> a-grpo", [("sft", []), ("a-grpo", [])]),
    ("a-sft -> a-grpo", [("a-sft", []), ("a-grpo", [])]),
    ("chord-mu", [("chord-mu", [])]),
    ("chord-phi", [("chord-phi", [])]),
    ("a-chord-phi", [("a-chord-phi", [])]),
]
ABLATIONS = [
    ("uniapl, adv as reward", [("uniapl", ["--adv-mode", "reward"])]),
    ("uniapl, coef over batch", [("uniapl", ["--adv-coef-norm", "batch"])]),
    ("uniapl, raw coef", [("uniapl", ["--adv-coef-norm", "none"])]),
    ("a-grpo, coef over batch", [("a-grpo", ["--adv-coef-norm", "batch"])]),
    ("uniapl, lambda 1e-3", [("uniapl", ["--lambda-adv", "1e-3"])]),
    ("uniapl, lambda 1e-2", [("uniapl", ["--lambda-adv", "1e-2"])]),
    ("uniapl, lambda 1", [("uniapl", ["--lambda-adv", "1"])]),
] + [(f"{m}, flawed teacher", [(m, [])]) for m in ("sft", "grpo", "a-grpo", "uniapl")]
SWEEP = {"uniapl, lambda 1e-3": 1e-3, "uniapl, lambda 1e-2": 1e-2, "uniapl": 0.1,
         "uniapl, lambda 1": 1.0}
LR_GRID = [3e-4, 1e-3, 3e-3]
# the paper's claims: (claim, a, b, measured by, +1: higher is better / -1: lower is better);
# b = "teacher": the teacher's own accuracy on the same prompts
CLAIMS = [("UniAPL beats GRPO", "uniapl", "grpo", "accuracy", 1),
          ("UniAPL beats SFT -> GRPO", "uniapl", "sft -> grpo", "accuracy", 1),
          ("UniAPL beats SFT", "uniapl", "sft", "accuracy", 1),
          ("A-GRPO beats GRPO", "a-grpo", "grpo", "accuracy", 1),
          ("SFT -> A-GRPO beats SFT -> GRPO", "sft -> a-grpo", "sft -> grpo", "accuracy", 1),
          ("A-SFT -> A-GRPO beats SFT -> GRPO", "a-sft -> a-grpo", "sft -> grpo", "accuracy", 1),
          ("A-CHORD beats CHORD (phi)", "a-chord-phi", "chord-phi", "accuracy", 1),
          ("UniAPL's answers match the teacher's length better than GRPO's (W1)", "uniapl", "grpo",
           "length_w1", -1),
          ("UniAPL's answers match the teacher's log-probs better than GRPO's (W1)", "uniapl", "grpo",
           "logprob_w1", -1),
          ("UniAPL generalises to held-out combinations better than GRPO", "uniapl", "grpo", "ood", 1),
          ("The student (UniAPL) beats its teacher", "uniapl", "teacher", "accuracy", 1),
          ("ADV as a loss beats ADV as reward shaping", "uniapl", "uniapl, adv as reward",
           "accuracy", 1),
          ("Too large a lambda_adv hurts (0.1 beats 1)", "uniapl", "uniapl, lambda 1", "accuracy", 1)]
BASE_STEPS = 60
QUICK = ["--sft-batch-size", "2", "--rl-batch-size", "2", "--num-generations", "2",
         "--max-completion-length", "12"]


# ----------------------------------------------------------------------------------------------
# One run: the base model, then the stages, then the scores
# ----------------------------------------------------------------------------------------------

def base_model(seed: int, out: str, extra: list[str]) -> str:
    """The shared base student of this seed (cached): SFT on the instruction-ignoring teacher."""
    import train
    path = os.path.join(out, "base", f"seed{seed}")
    if not os.path.exists(os.path.join(path, "final", "model.safetensors")):
        shutil.rmtree(path, ignore_errors=True)
        train.main(["--model", "toy", "--method", "sft", "--dataset", "toy:base", "--steps",
                    str(BASE_STEPS), "--seed", str(seed), "--out", path, "--no-progress",
                    "--save-every", "0", "--no-eval-start", "--eval-limit", "10", *extra])
    return os.path.join(path, "final")


def scores(run_dir: str, rows: list[dict]) -> dict:
    """Prompt-level strict accuracy overall, in domain and on held-out combinations; per id."""
    import ifeval
    import toy
    final = json.load(open(os.path.join(run_dir, "eval_final.json")))
    texts = [r["response"] for r in final["responses"]]
    ood = [i for i, r in enumerate(rows) if toy.is_held_out(r["instruction_id_list"])]
    ind = [i for i in range(len(rows)) if i not in set(ood)]
    part = lambda idx: ifeval.evaluate([rows[i] for i in idx], [texts[i] for i in idx])  # noqa: E731
    return {"accuracy": final["prompt_strict"], "inst_strict": final["inst_strict"],
            "in_domain": part(ind)["prompt_strict"], "ood": part(ood)["prompt_strict"] if ood else None,
            "n_ood": len(ood), "per_instruction": {k: v["strict"] for k, v in
                                                    final["per_instruction"].items()}}


def finished(out: str, argv: list[str]) -> bool:
    """Does `out` hold a run that went to its end with the settings this command line asks for?"""
    import settings
    paths = [os.path.join(out, f) for f in ("config.json", "eval_final.json", "final/model.safetensors")]
    if not all(os.path.exists(p) for p in paths):
        return False
    saved = json.load(open(paths[0]))
    wanted = dataclasses.asdict(settings.parse(argv))
    return all(saved.get(k) == v for k, v in wanted.items() if v is not None)


def run_job(spec: dict) -> dict:
    """One configuration at one seed, in this process."""
    import torch

    import checkpoint
    import data
    import evaluate
    import train
    torch.set_num_threads(1)   # jobs run side by side, one core each
    t0 = time.perf_counter()
    model_arg = base_model(spec["seed"], spec["out"], spec["extra"])
    per_stage, kept = spec["steps"] // len(spec["stages"]), 0
    for i, (method, args) in enumerate(spec["stages"]):
        out = os.path.join(spec["dir"], f"stage{i + 1}")
        argv = ["--model", model_arg, "--method", method, "--steps", str(per_stage),
                "--seed", str(spec["seed"]), "--out", out, "--no-progress", "--save-every", "0",
                "--no-eval-start", "--dataset", spec["dataset"], "--eval-dataset",
                spec["eval_dataset"], "--toy-eval-size", str(spec["n_eval"]),
                "--learning-rate", str(spec["lr"]), *args, *spec["extra"]]
        if finished(out, argv):           # an interrupted reproduction picks up where it stopped
            kept += 1
        else:
            shutil.rmtree(out, ignore_errors=True)
            train.main(argv)
        model_arg = os.path.join(out, "final")
    wall = time.perf_counter() - t0
    cfg = json.load(open(os.path.join(out, "config.json")))
    rows = data.load_rows(cfg["eval_dataset"], data.evaluation_split(cfg["eval_dataset"]),
                          toy_seed=spec["seed"], toy_eval_n=spec["n_eval"],
                          teacher_accuracy=cfg["teacher_accuracy"])
    result = {"name": spec["name"], "seed": spec["seed"], "lr": spec["lr"], "wall_s": wall, "kept": kept,
              "run_dir": out, "n_eval": len(rows), **scores(out, rows),
              "teacher": evaluate.teacher_accuracy(rows)["prompt_strict"]}
    if spec.get("behaviour"):
        model, tok = checkpoint.load_policy(model_arg, torch.device("cpu"))
        b = evaluate.behaviour(model, tok, rows[:100], max_new_tokens=cfg["max_completion_length"],
                               seed=spec["seed"])
        result |= {"length_w1": b["length"]["w1"], "logprob_w1": b["logprob"]["w1"],
                   "length_mean": b["length"]["student_mean"],
                   "teacher_length_mean": b["length"]["teacher_mean"]}
    return result


def _spawn(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-m", "tools.reproduce", "_job", json.dumps(spec)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"run {spec['name']!r} seed {spec['seed']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def worlds(name: str, validation: bool) -> tuple[str, str]:
    """(training rows, evaluation rows) of a configuration: the holdout world evaluated on every
    combination (or on the validation split), or the flawed teacher's world."""
    if name.endswith("flawed teacher"):
        return "toy:flawed", "toy:flawed"
    return "toy:holdout", "toy:validation" if validation else "toy"


def job_spec(name: str, stages: list, seed: int, args, tag: str, lrs: dict, behaviour: bool = True,
             validation: bool = False, n_eval: int | None = None) -> dict:
    """What one run needs (a JSON-able dict: it travels to a subprocess)."""
    runs = os.path.join(args.out, "runs")
    return {"name": name, "stages": stages, "seed": seed, "steps": args.steps, "extra": args.extra,
            "out": runs, "behaviour": behaviour, "lr": lrs.get(name, lrs.get(stages[-1][0], 1e-3)),
            "n_eval": n_eval or args.n_eval, "dataset": worlds(name, validation)[0],
            "eval_dataset": worlds(name, validation)[1],
            "dir": os.path.join(runs, tag, f"{name.replace(' ', '').replace(',', '_')}-s{seed}")}


def run_all(configs, args, tag: str, lrs: dict, seeds, behaviour: bool = True,
            validation: bool = False, n_eval: int | None = None) -> list[dict]:
    """Every configuration at every seed, `args.jobs` at a time; bases first (they are shared)."""
    runs = os.path.join(args.out, "runs")
    specs = [job_spec(name, stages, seed, args, tag, lrs, behaviour, validation, n_eval)
             for seed in seeds for name, stages in configs]
    with ThreadPoolExecutor(args.jobs) as pool:      # the base models, one per seed
        list(pool.map(lambda seed: _spawn_base(seed, runs, args.extra), seeds))
    results, t0 = [], time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(_spawn, specs):
            results.append(r)
            print(f"  [{tag}] {r['name']:26s} seed {r['seed']} lr {r['lr']:g}: accuracy "
                  f"{r['accuracy']:.3f} ({r['wall_s']:.0f} s, {time.perf_counter() - t0:.0f} s "
                  "elapsed)", flush=True)
    return results


def _spawn_base(seed: int, runs: str, extra: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    code = (f"from tools import reproduce; reproduce.base_model({seed}, {runs!r}, {extra!r})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"base model, seed {seed}, failed:\n{res.stderr[-3000:]}")


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


# paired difference over seeds: mean(a_s - b_s) +- t_{0.975, n-1} * sd / sqrt(n)


def paired(results: list[dict], a: str, b: str, key: str = "accuracy") -> dict | None:
    by = {(r["name"], r["seed"]): r[key] for r in results if r.get(key) is not None}
    if b == "teacher":
        by |= {("teacher", r["seed"]): r["teacher"] for r in results if r["name"] == a}
    diffs = [by[(a, s)] - by[(b, s)] for (n, s) in by if n == a and (b, s) in by]
    if len(diffs) < 2:
        return None
    m, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = T975.get(len(diffs) - 1, 1.96) * sd / math.sqrt(len(diffs))
    return {"mean": m, "low": m - half, "high": m + half, "n": len(diffs)}


def verdict(ci: dict | None, sign: int = 1) -> str:
    """reproduced: the 95% interval lies on the claimed side of 0; the opposite side: the
    opposite holds here; otherwise inconclusive."""
    if ci is None:
        return "not run"
    low, high = sorted((sign * ci["low"], sign * ci["high"]))
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced (the opposite holds)"
    return "inconclusive"


# ----------------------------------------------------------------------------------------------
# Tables and figures
# ----------------------------------------------------------------------------------------------

def wall(rs: list[dict]) -> str:
    """Mean wall time of the runs that ran in this sitting (a kept run's time was not measured)."""
    ran = [r["wall_s"] for r in rs if not r.get("kept")]
    return f"{statistics.mean(ran):.0f}" if ran else "-"


def table(results: list[dict], configs, header: str) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    lines = [header, "", "| run | lr | IF accuracy | in domain | held-out combinations | inst-level | "
             "length W1 | log-prob W1 | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, _ in configs:
        rs = by.get(name)
        if rs:
            lines.append(f"| {name} | {rs[0]['lr']:g} | {mean_std([r['accuracy'] for r in rs])} | "
                         f"{mean_std([r['in_domain'] for r in rs])} | {mean_std([r['ood'] for r in rs])} | "
                         f"{mean_std([r['inst_strict'] for r in rs])} | "
                         f"{mean_std([r.get('length_w1') for r in rs])} | "
                         f"{mean_std([r.get('logprob_w1') for r in rs])} | "
                         f"{wall(rs)} |")
    return "\n".join(lines) + "\n"


def claims_table(results: list[dict]) -> tuple[str, list]:
    rows, lines = [], ["| claim | measured by | paired difference a - b (95% CI) | seeds | on this toy |",
                       "|---|---|---|---|---|"]
    for claim, a, b, key, sign in CLAIMS:
        ci = paired(results, a, b, key)
        if key == "accuracy":
            rows.append((claim, ci))
        lines.append(f"| {claim} | {key} ({'higher' if sign > 0 else 'lower'} is better) | " +
                     (f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci else "-") +
                     f" | {ci['n'] if ci else 0} | {verdict(ci, sign)} |")
    return "\n".join(lines) + "\n", rows


def flaw_table(results: list[dict]) -> str:
    """How well each method follows the instruction its teacher always breaks, vs the others."""
    import toy
    lines = ["| method (flawed teacher) | no-comma accuracy | other instructions | IF accuracy |",
             "|---|---|---|---|"]
    by: dict[str, list[dict]] = {}
    for r in results:
        if r["name"].endswith("flawed teacher"):
            by.setdefault(r["name"], []).append(r)
    for name, rs in by.items():
        flaw = [r["per_instruction"].get(toy.FLAW) for r in rs]
        other = [statistics.mean(v for k, v in r["per_instruction"].items() if k != toy.FLAW)
                 for r in rs]
        lines.append(f"| {name.split(',')[0]} | {mean_std(flaw)} | {mean_std(other)} | "
                     f"{mean_std([r['accuracy'] for r in rs])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------

def cmd_lr_grid(args) -> dict:
    results = []
    for lr in LR_GRID:
        results += run_all(MAIN, args, f"lr{lr:g}", {n: lr for n, _ in MAIN}, args.seeds[:1],
                           behaviour=False, validation=True, n_eval=200)
    best = {}
    lines = ["| run | " + " | ".join(f"lr {lr:g}" for lr in LR_GRID) + " | chosen |",
             "|---|" + "---|" * (len(LR_GRID) + 1)]
    for name, _ in MAIN:
        acc = {r["lr"]: r["accuracy"] for r in results if r["name"] == name}
        best[name] = max(acc, key=lambda lr: (acc[lr], -abs(math.log(lr / 1e-3))))
        lines.append(f"| {name} | " + " | ".join(f"{acc.get(lr, float('nan')):.3f}" for lr in LR_GRID)
                     + f" | {best[name]:g} |")
    md = (f"Learning-rate grid: prompt-level strict accuracy on the toy *validation* split (200 "
          f"prompts disjoint from training and evaluation), seed {args.seeds[0]}, {args.steps} steps "
          f"from the shared base model; ties go to the rate nearest 1e-3. Machine: {args.machine}.\n\n"
          + "\n".join(lines) + "\n")
    write(args.out, "lr_grid", {"grid": LR_GRID, "best": best, "results": results}, md)
    print(md)
    return best


def chosen_lrs(args) -> tuple[dict, str]:
    path = os.path.join(args.out, "lr_grid.json")
    if os.path.exists(path):
        return json.load(open(path))["best"], f"per-method learning rates from {path}"
    return {}, "learning rate 1e-3 for every method (no lr_grid.json: run `python -m tools.reproduce lr-grid`)"


def cmd_main(args) -> list[dict]:
    lrs, source = chosen_lrs(args)
    t0 = time.perf_counter()
    results = run_all(MAIN, args, "main", lrs, args.seeds)
    with open(os.path.join(args.out, "toy_table.json"), "w") as f:
        json.dump({"steps": args.steps, "seeds": args.seeds, "lrs": source,
                   "base_accuracy": base_scores(args), "wall_s": time.perf_counter() - t0,
                   "machine": args.machine, "results": results}, f, indent=1)
    cmd_report(args)
    return results


def cmd_ablations(args) -> list[dict]:
    lrs, source = chosen_lrs(args)
    t0 = time.perf_counter()
    results = run_all(ABLATIONS, args, "ablations", lrs, args.seeds)
    with open(os.path.join(args.out, "toy_ablations.json"), "w") as f:
        json.dump({"steps": args.steps, "seeds": args.seeds, "lrs": source, "machine": args.machine,
                   "wall_s": time.perf_counter() - t0, "results": results}, f, indent=1)
    cmd_report(args)
    return results


def sitting(saved: dict) -> str:
    """The wall time of a command, and whether it kept runs from an interrupted earlier sitting."""
    kept = any(r.get("kept") for r in saved["results"])
    return f"{saved['wall_s'] / 60:.0f} min" + (" in its last sitting, which kept the finished runs "
                                                 "of an interrupted one" if kept else "")


def cmd_report(args) -> str:
    """Tables, claims and figures from OUT/toy_table.json and OUT/toy_ablations.json."""
    from tools import plots
    main = json.load(open(os.path.join(args.out, "toy_table.json")))
    abl_path = os.path.join(args.out, "toy_ablations.json")
    abl = json.load(open(abl_path)) if os.path.exists(abl_path) else {"results": []}
    results, allr = main["results"], main["results"] + abl["results"]
    header = (f"Toy world, every run from the shared base model of its seed (SFT on an instruction-"
              f"ignoring teacher, {BASE_STEPS} steps; its own accuracy: "
              f"{mean_std(main['base_accuracy'])}), {main['steps']} optimizer steps per run, seeds "
              f"{main['seeds']}, {main['lrs']}; held-out prompt-level strict IF accuracy (greedy, "
              f"{results[0]['n_eval']} prompts per seed, of which about "
              f"{statistics.mean(r['n_ood'] for r in results):.0f} combine a held-out pair). Teacher "
              f"on the same prompts: {statistics.mean(r['teacher'] for r in results):.3f}. Machine: "
              f"{main.get('machine', args.machine)}; {sitting(main)}.")
    claims, rows = claims_table(allr)
    md = table(results, MAIN, header) + "\n" + claims
    with open(os.path.join(args.out, "toy_table.md"), "w") as f:
        f.write(md)
    plots.plot_bars(results, MAIN, os.path.join(args.out, "toy_methods.png"),
                    base=statistics.mean(main["base_accuracy"]))
    plots.plot_bars(results, MAIN, os.path.join(args.out, "toy_behaviour.png"),
                    keys=("length_w1", "logprob_w1"),
                    labels=("length W1 to the teacher (tokens)", "mean log-prob W1 to the teacher"))
    plots.plot_claims(rows, os.path.join(args.out, "toy_claims.png"))
    first = min(main["seeds"])
    picked = [r for name in ("sft", "grpo", "a-grpo", "uniapl", "sft -> grpo", "chord-mu")
              for r in results if r["name"] == name and r["seed"] == first]
    plots.plot_curves([r["run_dir"] for r in picked], os.path.join(args.out, "toy_curves.png"),
                      labels=[f"{r['name']} (seed {first})" for r in picked])
    if abl["results"]:
        configs = [c for c in MAIN if c[0] == "uniapl"] + ABLATIONS
        amd = table(allr, configs, f"Ablations: toy world from the shared base model, "
                                   f"{abl['steps']} steps, seeds {abl['seeds']}, {abl['lrs']}. "
                                   f"Machine: {abl['machine']}; {sitting(abl)}.")
        lines = ["| comparison | paired difference a - b (95% CI) | verdict |", "|---|---|---|"]
        for a, b in [("uniapl", "uniapl, adv as reward"), ("uniapl, coef over batch", "uniapl"),
                     ("uniapl, raw coef", "uniapl"), ("a-grpo, coef over batch", "a-grpo"),
                     ("uniapl", "uniapl, lambda 1"), ("uniapl", "uniapl, lambda 1e-3")]:
            ci = paired(allr, a, b)
            lines.append(f"| {a} vs {b} | " + (f"{ci['mean']:+.3f} [{ci['low']:+.3f}, "
                                              f"{ci['high']:+.3f}]" if ci else "-") +
                         f" | {verdict(ci)} |")
        amd += "\n" + "\n".join(lines) + "\n\nDoes a method inherit its teacher's flaw? (the " \
            "teacher never leaves commas out)\n\n" + flaw_table(abl["results"])
        with open(os.path.join(args.out, "toy_ablations.md"), "w") as f:
            f.write(amd)
        plots.plot_sweep(allr, SWEEP, os.path.join(args.out, "toy_lambda_sweep.png"))
        md += "\n" + amd
    print(md)
    return md


def base_scores(args) -> list[float]:
    import torch

    import checkpoint
    import data
    import evaluate
    out = []
    for seed in args.seeds:
        path = os.path.join(args.out, "runs", "base", f"seed{seed}", "final")
        model, tok = checkpoint.load_policy(path, torch.device("cpu"))
        rows = data.load_rows("toy", "eval", toy_seed=seed, toy_eval_n=args.n_eval)
        out.append(evaluate.evaluate_model(model, tok, rows, max_new_tokens=64)["prompt_strict"])
    return out


def cmd_discriminators(args) -> dict:
    """Over fixed responses -- a second correct teacher answer, a violating one, the base
    student's sample, the trained uniapl student's sample -- does the discriminator's score (and
    the coefficient made of it) rank them as the verifier does?"""
    import numpy as np
    import torch

    import data
    import discriminator as D
    import evaluate
    import ifeval
    import toy
    seed, runs = args.seeds[0], os.path.join(args.out, "runs")
    rows = data.load_rows("toy", "eval", toy_seed=seed, toy_eval_n=args.n_eval)[:200]
    import checkpoint
    students = {}
    for who, path in (("base student", os.path.join(runs, "base", f"seed{seed}", "final")),
                      ("trained student (uniapl)",
                       os.path.join(runs, "main", f"uniapl-s{seed}", "stage1", "final"))):
        if os.path.exists(path):
            model, tok = checkpoint.load_policy(path, torch.device("cpu"))
            torch.manual_seed(seed)
            students[who] = evaluate.generate_responses(model, tok, rows, max_new_tokens=64,
                                                        greedy=False)[0]
    rng = random.Random(seed)
    cands, refs, prompts, kinds, rewards = [], [], [], [], []
    for i, r in enumerate(rows):
        ids, kw = r["instruction_id_list"], r["kwargs"]
        ref = toy.teacher_response(rng, r["prompt"], ids, kw)
        options = {"teacher, correct": toy.teacher_response(rng, r["prompt"], ids, kw),
                   "teacher, violating": toy.teacher_response(rng, r["prompt"], ids, kw,
                                                              violate=rng.choice(ids))}
        options |= {who: texts[i] for who, texts in students.items()}
        for kind, text in options.items():
            cands.append(text), refs.append(ref), prompts.append(r["prompt"]), kinds.append(kind)
            rewards.append(ifeval.reward(text, ids, kw, r["prompt"]))
    group = len(cands) // len(rows)
    discs = {"lexical": D.Lexical()}
    base_dir = os.path.join(runs, "base", f"seed{seed}", "final")
    if os.path.exists(base_dir):
        discs["embedding (the base student as encoder)"] = D.Embedding(base_dir)
    out, lines = {}, ["| discriminator | Spearman(d, reward) | Spearman(c, reward) | AUC d: correct vs "
                      "violating teacher | " + " | ".join(f"mean d: {k}" for k in dict.fromkeys(kinds))
                      + " |", "|---|---|---|---|" + "---|" * len(dict.fromkeys(kinds))]
    r = np.array(rewards)
    for name, disc in discs.items():
        d = disc.score(prompts, refs, cands).float()
        import uniapl
        c = uniapl.adversarial_coefficient(d, group, 2.0, "group").numpy()
        d = d.numpy()
        corr = lambda x: float(np.corrcoef(_ranks(x), _ranks(r))[0, 1])  # noqa: E731
        pos = [d[i] for i, k in enumerate(kinds) if k == "teacher, correct"]
        neg = [d[i] for i, k in enumerate(kinds) if k == "teacher, violating"]
        auc = float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
        means = {k: float(np.mean([d[i] for i, kk in enumerate(kinds) if kk == k]))
                 for k in dict.fromkeys(kinds)}
        out[name] = {"spearman_d": corr(d), "spearman_c": corr(c), "auc": auc, "mean_d": means}
        lines.append(f"| {name} | {corr(d):+.3f} | {corr(c):+.3f} | {auc:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in means.values()) + " |")
    means_r = {k: float(np.mean([rewards[i] for i, kk in enumerate(kinds) if kk == k]))
               for k in dict.fromkeys(kinds)}
    md = (f"Discriminator validation: {len(rows)} toy evaluation prompts (seed {seed}); per prompt "
          f"a reference (a correct teacher answer) and {group} candidates. Verifier reward per kind: "
          + ", ".join(f"{k} {v:.2f}" for k, v in means_r.items()) + ".\n\n" + "\n".join(lines) + "\n")
    write(args.out, "toy_discriminators", {"results": out, "reward_means": means_r}, md)
    print(md)
    return out


def _ranks(x):
    import numpy as np
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):      # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def write(out: str, name: str, obj, md: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(obj, f, indent=1)
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write(md)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_job":
        print(json.dumps(run_job(json.loads(argv[1]))))
        return None
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="main",
                   choices=["main", "lr-grid", "ablations", "discriminators", "report"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run (all stages)")
    p.add_argument("--n-eval", type=int, default=300, help="held-out evaluation prompts per seed")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one core each)")
    p.add_argument("--out", default="runs/reproduce",
                   help="where tables, plots and runs go (README's results: --out results)")
    p.add_argument("--quick", action="store_true", help="tiny runs: a smoke test of the pipeline")
    p.add_argument("--machine", default=None, help="what to call this machine in the tables")
    args = p.parse_args(argv)
    args.extra = []
    if args.quick:
        global BASE_STEPS, LR_GRID
        args.seeds, args.steps, args.n_eval, args.extra = args.seeds[:2], 4, 12, QUICK
        BASE_STEPS, LR_GRID = 2, LR_GRID[:2]
    if args.machine is None:
        import parallel
        args.machine = parallel.device_name("cpu")
    t0 = time.perf_counter()
    result = {"main": cmd_main, "lr-grid": cmd_lr_grid, "ablations": cmd_ablations,
              "discriminators": cmd_discriminators, "report": cmd_report}[args.what](args)
    print(f"\n{args.what}: {time.perf_counter() - t0:.0f} s; wrote {args.out}/")
    return result


if __name__ == "__main__":
    main()
