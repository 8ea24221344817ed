"""The paper's experiment on the toy world: every method of its tables, from one capable base model.

    python -m tools.reproduce lr-grid --out results      # 1. each method's learning rate (validation, 2 seeds)
    python -m tools.reproduce --out results              # 2. the main table (seeds 0-4)
    python -m tools.reproduce seeds --out results        # 3. how many seeds each claim needs
    python -m tools.reproduce --out results --seeds $(seq 0 19) --configs base grpo sft uniapl ...
    python -m tools.reproduce ablations --out results    # 4. the reconstruction's choices, the paper's reward
    python -m tools.reproduce teacher --out results --seeds $(seq 0 39)   # 5. a stronger teacher
    python -m tools.reproduce discriminators --out results   # 6. D against the verifier, among siblings
    python -m tools.reproduce report --out results       # tables, claims and figures again, from the JSON
    python -m tools.reproduce --quick                    # the whole pipeline in a minute (a CI test)
    python -m tools.reproduce shifted-lr --out results   # 7. the shifted world (tools/shifted.py)
    python -m tools.reproduce shifted --out results --seeds $(seq 0 11)
    python -m tools.reproduce gsm8k-lr --out results     # 8. GSM8K in miniature (tools/process_rewards.py)
    python -m tools.reproduce gsm8k --out results --seeds $(seq 0 9)
    (the same table on Qwen3-0.6B, on a GPU: python -m tools.reproduce_real)

The idea
--------
The paper's claims are comparisons between post-training methods that all start from the same
*capable* instruct model (Qwen3-0.6B). So does this experiment: for each seed it first makes a
**base student** -- the toy model after BASE_STEPS of SFT on the scripted teacher, clearly
competent but below its teacher (0.342 +- 0.065 against the teacher's 0.662 over seeds 0-49,
results/toy_table.md) -- and every method then refines that base for the same number of
optimizer steps. What it took for the RL baseline to work: a base that can already follow
instructions (GRPO from a near-chance base collapsed into repetitions that satisfy "no commas"
and "at least N words" at once, at every setting tried) and a learning rate below SFT's (the
grid's best for GRPO is 1e-4, for SFT 3e-4; GRPO at 1e-3 collapses to 0.135 on validation).

* **Data.** Runs train on the "holdout" world, whose training prompts never combine three held-out
  pairs of instructions; evaluation (N_EVAL prompts per seed) reports those combinations apart.
  No evaluation or validation prompt is in any training set of its seed (toy.py, tested).
* **Fair optimisation.** `lr-grid` trains every method at each rate of a grid (two seeds) and scores
  it on the *validation* split; a grid that finds its best rate at an edge is extended beyond it.
  A staged pipeline takes, for each stage, the rate its stage's method chose alone.
* **Statistics** (tools/claims.py, fixed before the runs): paired differences over seeds, exact
  t intervals, two-sided paired t-tests, Holm's correction over the family of claims.
* Runs that finished with the settings asked for are kept: a command run again continues.
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

from tools import claims

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository

BASE_STEPS, BASE_LR = 200, 1e-3     # the base student: SFT on the scripted teacher
STEPS, N_EVAL, N_VALIDATION = 60, 1000, 500
LR_GRID = [1e-4, 3e-4, 1e-3]          # extended past an edge optimum (cmd_lr_grid)
SINGLE = ["sft", "a-sft", "grpo", "a-grpo", "uniapl", "chord-mu", "chord-phi", "a-chord-mu",
          "a-chord-phi"]
MAIN = [("base", [])] + [(m, [(m, [])]) for m in SINGLE] + [  # name -> stages (method, extra args)
    ("sft -> grpo", [("sft", []), ("grpo", [])]),
    ("sft -> a-grpo", [("sft", []), ("a-grpo", [])]),
    ("a-sft -> a-grpo", [("a-sft", []), ("a-grpo", [])]),
]
ABLATIONS = [
    ("uniapl, adv as reward", [("uniapl", ["--adv-mode", "reward"])]),
    ("uniapl, coef over batch", [("uniapl", ["--adv-coef-norm", "batch"])]),
    ("uniapl, lambda 1e-2", [("uniapl", ["--lambda-adv", "1e-2"])]),
    ("uniapl, lambda 1", [("uniapl", ["--lambda-adv", "1"])]),
    ("grpo, binary reward", [("grpo", ["--reward", "all"])]),          # the paper's reward
    ("uniapl, binary reward", [("uniapl", ["--reward", "all"])]),
] + [(f"{m}, flawed teacher", [(m, [])]) for m in ("sft", "grpo", "uniapl")]
TEACHER = [(claims.GRPO_ALONE, [("grpo", [])])] + [
    (claims.teacher_run(name, acc), [(m, ["--teacher-accuracy", f"{acc:g}"]) for m in stages])
    for acc in claims.TEACHERS for name, stages in (("uniapl", ["uniapl"]), ("sft -> grpo", ["sft", "grpo"]))]
SWEEP = {"uniapl, lambda 1e-2": 1e-2, "uniapl": 0.1, "uniapl, lambda 1": 1.0}
QUICK = ["--sft-batch-size", "2", "--rl-batch-size", "2", "--num-generations", "2",
         "--max-completion-length", "12"]


# ----------------------------------------------------------------------------------------------
# One run: the base model, then the stages, then the scores
# ----------------------------------------------------------------------------------------------

def base_model(seed: int, out: str, extra: list[str]) -> str:
    """The shared base student of this seed (cached): SFT on the scripted teacher."""
    import train
    path = os.path.join(out, "base", f"seed{seed}")
    if not os.path.exists(os.path.join(path, "final", "model.safetensors")):
        shutil.rmtree(path, ignore_errors=True)
        train.main(["--model", "toy", "--method", "sft", "--dataset", "toy:holdout", "--steps",
                    str(BASE_STEPS), "--learning-rate", str(BASE_LR), "--seed", str(seed), "--out",
                    path, "--no-progress", "--rollout-engine", "hf",
                    "--save-every", "0", "--no-eval-start", "--eval-limit",
                    "10", *extra])
    return os.path.join(path, "final")


def scores(texts: list[str], rows: list[dict]) -> dict:
    """Prompt-level strict accuracy overall, in domain and on held-out combinations; per id."""
    import ifeval
    import toy
    ood = [i for i, r in enumerate(rows) if toy.is_held_out(r["instruction_id_list"])]
    ind = [i for i in range(len(rows)) if i not in set(ood)]
    part = lambda idx: ifeval.evaluate([rows[i] for i in idx], [texts[i] for i in idx])  # noqa: E731
    every = ifeval.evaluate(rows, texts)
    return {"accuracy": every["prompt_strict"], "inst_strict": every["inst_strict"],
            "in_domain": part(ind)["prompt_strict"], "ood": part(ood)["prompt_strict"] if ood else None,
            "n_ood": len(ood),
            "per_instruction": {k: v["strict"] for k, v in every["per_instruction"].items()}}


def finished(out: str, argv: list[str]) -> bool:
    """Does `out` hold a run that went to its end with the settings this command line asks for?"""
    import settings
    paths = [os.path.join(out, f) for f in ("config.json", "eval_final.json", "final/model.safetensors")]
    if not all(os.path.exists(p) for p in paths):
        return False
    import run_dir
    saved = json.load(open(paths[0]))
    wanted = dataclasses.asdict(settings.parse(argv))
    how = run_dir.RUN_ONLY - {"steps"}          # how a run ran (its engine, ...) is not what it is
    return all(saved.get(k) == v for k, v in wanted.items() if v is not None and k not in how)


def run_job(spec: dict) -> dict:
    """One configuration at one seed, in this process: its stages from the base, then scores on
    the evaluation rows (and, for the main table, its behaviour against the teacher)."""
    import torch

    import checkpoint
    import data
    import eval
    import train
    torch.set_num_threads(1)   # jobs run side by side, one core each
    t0 = time.perf_counter()
    model_arg = base_model(spec["seed"], spec["out"], spec["extra"])
    rows = data.load_rows(spec["eval_dataset"], data.evaluation_split(spec["eval_dataset"]),
                          toy_seed=spec["seed"], toy_eval_n=spec["n_eval"],
                          teacher_accuracy=spec.get("teacher_accuracy", 0.65))
    per_stage, kept = spec["steps"] // max(1, len(spec["stages"])), 0
    for i, (method, args, lr) in enumerate(spec["stages"]):
        out = os.path.join(spec["dir"], f"stage{i + 1}")
        argv = ["--model", model_arg, "--method", method, "--steps", str(per_stage),
                "--seed", str(spec["seed"]), "--out", out, "--no-progress", "--rollout-engine", "hf",
                "--save-every", "0",
                "--no-eval-start", "--dataset", spec["dataset"], "--eval-dataset",
                spec["eval_dataset"], "--toy-eval-size", str(spec["n_eval"]),
                "--learning-rate", str(lr), *args, *spec["extra"]]
        if finished(out, argv):           # an interrupted reproduction picks up where it stopped
            kept += 1
        else:
            shutil.rmtree(out, ignore_errors=True)
            train.main(argv)
        model_arg = os.path.join(out, "final")
    model, tok = checkpoint.load_policy(model_arg, torch.device("cpu"))
    if spec["stages"]:
        texts = [r["response"] for r in json.load(open(os.path.join(out, "eval_final.json")))["responses"]]
    else:                                 # the base itself: answered here
        texts = eval.generate_responses(model, tok, rows, max_new_tokens=64)[0]
    result = {"name": spec["name"], "seed": spec["seed"], "lrs": [lr for _, _, lr in spec["stages"]],
              "wall_s": time.perf_counter() - t0, "kept": kept,
              "run_dir": out if spec["stages"] else model_arg, "n_eval": len(rows),
              **scores(texts, rows), "teacher": eval.teacher_accuracy(rows)["prompt_strict"]}
    if spec.get("behaviour"):
        b = eval.behaviour(model, tok, rows[:100], max_new_tokens=64, seed=spec["seed"])
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
    """What one run needs (a JSON-able dict: it travels to a subprocess). Each stage takes the
    rate its method chose alone (a staged pipeline: one rate per stage)."""
    runs = os.path.join(args.out, "runs")
    teacher = [float(a[a.index("--teacher-accuracy") + 1]) for _, a in stages if "--teacher-accuracy" in a]
    return {"name": name, "teacher_accuracy": teacher[0] if teacher else 0.65,
            "seed": seed, "steps": args.steps, "extra": args.extra, "out": runs,
            "stages": [(m, a, lrs.get(name if len(stages) == 1 else m, lrs.get(m, 1e-3)))
                       for m, a in stages],
            "behaviour": behaviour, "n_eval": n_eval or args.n_eval,
            "dataset": worlds(name, validation)[0], "eval_dataset": worlds(name, validation)[1],
            "tag": tag, "dir": os.path.join(runs, tag, f"{name.replace(' ', '').replace(',', '_')}-s{seed}")}


def run_all(configs, args, tag: str, lrs: dict, seeds, behaviour: bool = True,
            validation: bool = False, n_eval: int | None = None) -> list[dict]:
    """Every configuration at every seed, `args.jobs` at a time; bases first (they are shared)."""
    return run_specs([job_spec(name, stages, seed, args, tag, lrs, behaviour, validation, n_eval)
                      for seed in seeds for name, stages in configs], args)


def run_specs(specs: list[dict], args, keep=None) -> list[dict]:
    """Jobs of any configurations, rates and seeds in one queue (a slow job never leaves the
    other core idle while a batch waits for it); `keep(result)` as each one finishes."""
    runs, seeds = os.path.join(args.out, "runs"), sorted({spec["seed"] for spec in specs})
    if args.jobs == 1:      # one at a time: in this process (no start-up per run: --quick)
        import torch
        threads = torch.get_num_threads()
        base, job = lambda seed: base_model(seed, runs, args.extra), run_job
    else:
        base, job = lambda seed: _spawn_base(seed, runs, args.extra), _spawn
    with ThreadPoolExecutor(args.jobs) as pool:      # the base models, one per seed
        list(pool.map(base, seeds))
    results, t0 = [], time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        for spec, r in zip(specs, pool.map(job, specs)):
            results.append(r)
            if keep:
                keep(r)
            print(f"  [{spec['tag']}] {r['name']:26s} seed {r['seed']} lr {r['lrs']}: accuracy "
                  f"{r['accuracy']:.3f} ({r['wall_s']:.0f} s, {time.perf_counter() - t0:.0f} s "
                  "elapsed)", flush=True)
    if args.jobs == 1:
        torch.set_num_threads(threads)
    return results


def _spawn_base(seed: int, runs: str, extra: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    code = f"from tools import reproduce; reproduce.base_model({seed}, {runs!r}, {extra!r})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"base model, seed {seed}, failed:\n{res.stderr[-3000:]}")


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def complete_seeds(results: list[dict], arms) -> list[int]:
    """The seeds at which every arm has a result (the shifted and GSM8K families' rules count these)."""
    return sorted(s for s in {r["seed"] for r in results}
                  if {r["name"] for r in results if r["seed"] == s} >= set(arms))


def interim(complete: int, need: int, ruled: bool) -> str:
    """What a report says in place of its verdicts before the seed rule's seeds have run (`ruled`:
    the rule has set `need`; before, it is the least the rule can ask for)."""
    return (f"**Interim: the claims are not judged yet**: every arm has run at {complete} of the "
            f"{'' if ruled else 'at least '}{need} seeds the rule asks for. The runs go on; no "
            f"difference between arms is read before then.\n")


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def table(results: list[dict], configs, header: str) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    lines = [header, "", "| run | lr (per stage) | seeds | IF accuracy | in domain | held-out combinations | "
             "inst-level | length W1 | log-prob W1 | mean length | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, _ in configs:
        rs = by.get(name)
        if rs:
            ran = [r["wall_s"] for r in rs if not r.get("kept")]   # a kept run's time: not measured
            wall = f"{statistics.mean(ran):.0f}" if ran else "-"
            lines.append(f"| {name} | {', '.join(f'{x:g}' for x in rs[0]['lrs']) or '-'} | {len(rs)} | "
                         f"{mean_std([r['accuracy'] for r in rs])} | "
                         f"{mean_std([r['in_domain'] for r in rs])} | {mean_std([r['ood'] for r in rs])} | "
                         f"{mean_std([r['inst_strict'] for r in rs])} | "
                         f"{mean_std([r.get('length_w1') for r in rs])} | "
                         f"{mean_std([r.get('logprob_w1') for r in rs])} | "
                         f"{mean_std([r.get('length_mean') for r in rs])} | {wall} |")
    return "\n".join(lines) + "\n"


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
    """Each single-stage method at each rate of the grid, two seeds, on the validation split; a
    method whose best rate is at an edge of what it tried gets the next rate beyond (twice at
    most), so that every chosen rate has a worse one on each side."""
    saved = load(args.out, "lr_grid") or {"results": []}
    results = [r for r in saved["results"] if r["name"] in SINGLE and saved.get("steps") == args.steps]

    def keep(r: dict) -> None:           # each run as it finishes; "best": none chosen yet
        results.append(r)
        write(args.out, "lr_grid", {"grid": LR_GRID, "steps": args.steps, "best": None,
                                    "results": results}, None)
    tried = lambda name: sorted({r["lrs"][0] for r in results if r["name"] == name})  # noqa: E731
    todo = {name: list(LR_GRID) for name in SINGLE}
    for _ in range(1 if args.quick else 3):
        done = {(r["name"], r["lrs"][0], r["seed"]) for r in results}
        run_specs([job_spec(name, [(name, [])], seed, args, f"lr{lr:g}", {name: lr}, behaviour=False,
                            validation=True, n_eval=N_VALIDATION)
                   for lr in sorted({x for rates in todo.values() for x in rates})
                   for name, rates in todo.items() if lr in rates
                   for seed in args.seeds[:2] if (name, lr, seed) not in done], args, keep)
        todo = {}
        for name in SINGLE:   # an edge rate strictly better than its neighbour: try one beyond
            rates, acc = tried(name), mean_accuracy(results, name)
            if len(rates) > 1 and acc[rates[0]] > acc[rates[1]]:
                todo[name] = [rates[0] / math.sqrt(10)]
            elif len(rates) > 1 and acc[rates[-1]] > acc[rates[-2]]:
                todo[name] = [rates[-1] * math.sqrt(10)]
        todo = {n: [float(f"{x:.2g}") for x in v] for n, v in todo.items()}
        if not todo:
            break
    best = {name: choose_lr(results, name) for name in SINGLE}
    rates = sorted({r["lrs"][0] for r in results})
    lines = ["| run | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
             "|---|" + "---|" * (len(rates) + 1)]
    for name in SINGLE:
        acc = mean_accuracy(results, name)
        lines.append(f"| {name} | " + " | ".join(f"{acc[lr]:.3f}" if lr in acc else "-" for lr in rates)
                     + f" | {best[name]:g} |")
    md = (f"Learning-rate grid: prompt-level strict accuracy on the toy *validation* split "
          f"({N_VALIDATION} prompts disjoint from training and evaluation), mean of seeds "
          f"{args.seeds[:2]}, {args.steps} steps from the shared base model; a best rate at an "
          f"edge of the grid was extended beyond. Machine: {args.machine}.\n\n" + "\n".join(lines) + "\n")
    write(args.out, "lr_grid", {"grid": LR_GRID, "steps": args.steps, "best": best, "results": results}, md)
    print(md)
    return best


def grid_search(results: list[dict], name: str, rates: list[float], seeds, run, rounds: int = 3) -> float:
    """One method's grid on the validation split, extended past an edge: `run([(rate, seed),
    ...])` runs the pairs `results` lacks (appending theirs); while the best rate is at an edge of
    what was tried and strictly better than its neighbour, the next rate beyond it (x or / sqrt 10)
    is tried, `rounds` at most. The chosen rate (`choose_lr`)."""
    for _ in range(rounds):
        todo = [(lr, seed) for lr in rates for seed in seeds if not any(
            r["name"] == name and r["lrs"] == [lr] and r["seed"] == seed for r in results)]
        if todo:
            run(todo)
        acc = mean_accuracy(results, name)
        tried = sorted(acc)
        if acc[tried[0]] > acc[tried[1]]:
            rates = [float(f"{tried[0] / math.sqrt(10):.2g}")]
        elif acc[tried[-1]] > acc[tried[-2]]:
            rates = [float(f"{tried[-1] * math.sqrt(10):.2g}")]
        else:
            break
    return choose_lr(results, name)


def grid_table(results: list[dict], best: dict, first: str = "run") -> str:
    """Each grid's mean validation accuracy per rate, and the rate chosen."""
    rates = sorted({r["lrs"][0] for r in results})
    lines = [f"| {first} | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
             "|---|" + "---|" * (len(rates) + 1)]
    for name, chosen in best.items():
        acc = mean_accuracy(results, name)
        lines.append(f"| {name} | " + " | ".join(f"{acc[lr]:.3f}" if lr in acc else "-" for lr in rates)
                     + f" | {chosen:g} |")
    return "\n".join(lines)


def mean_accuracy(results: list[dict], name: str) -> dict[float, float]:
    """A method's validation accuracy per rate, the mean over its seeds."""
    by: dict[float, list[float]] = {}
    for r in results:
        if r["name"] == name:
            by.setdefault(r["lrs"][0], []).append(r["accuracy"])
    return {lr: statistics.mean(xs) for lr, xs in sorted(by.items())}


def choose_lr(results: list[dict], name: str) -> float:
    """The rate with the best mean validation accuracy over seeds (ties: the smaller rate)."""
    acc = mean_accuracy(results, name)
    return max(acc, key=acc.get)


def chosen_lrs(args) -> tuple[dict, str]:
    saved = load(args.out, "lr_grid")
    if saved and not saved.get("best"):
        raise SystemExit("results of an unfinished lr grid: run `python -m tools.reproduce lr-grid` "
                         "again (it keeps the finished runs) before the tables")
    if saved:
        return saved["best"], "per-method learning rates (lr_grid.md)"
    return {}, "learning rate 1e-3 for every method (no lr_grid.json: run `python -m tools.reproduce lr-grid`)"


def run_table(args, name: str, configs: list, behaviour: bool = True, report=None) -> list[dict]:
    """Run `configs` (or those named by --configs) at --seeds. Each run is written to
    OUT/<name>.json the moment it finishes, and a (configuration, seed) that the JSON already
    holds at the same steps, evaluation size and rates is not run again: a table grows over
    several sittings, on any machine, and an interrupted one loses only the runs in flight. A
    JSON made with other steps or another evaluation size is replaced, never mixed in."""
    lrs, source = chosen_lrs(args)
    wanted = [c for c in configs if not args.configs or c[0] in args.configs]
    saved = load(args.out, name) or {"results": []}
    if saved["results"] and (saved.get("steps"), saved.get("n_eval")) != (args.steps, args.n_eval):
        print(f"{name}.json was made with {saved.get('steps')} steps and {saved.get('n_eval')} "
              f"evaluation prompts: replaced by this command's runs")
        saved = {"results": []}
    results, wall = saved["results"], saved.get("wall_s", 0)
    done = {(r["name"], r["seed"], tuple(r["lrs"])) for r in results}
    tag = name.removeprefix("toy_").replace("table", "main")
    specs = [job_spec(cname, stages, seed, args, tag, lrs, behaviour) for seed in args.seeds
             for cname, stages in wanted]
    specs = [x for x in specs if (x["name"], x["seed"], tuple(lr for *_, lr in x["stages"])) not in done]
    t0 = time.perf_counter()

    def keep(r: dict) -> None:
        results[:] = [x for x in results if (x["name"], x["seed"]) != (r["name"], r["seed"])] + [r]
        write(args.out, name, {"steps": args.steps, "n_eval": args.n_eval, "lrs": source,
                               "base_steps": BASE_STEPS, "machine": args.machine,
                               "wall_s": wall + time.perf_counter() - t0, "results": results}, None)
    run_specs(specs, args, keep)
    (report or cmd_report)(args)
    return results


def cmd_seeds(args) -> dict:
    """How many seeds each claim needs: from the spread of its paired differences so far, the
    seeds to detect a 3-point gap (the middle of the paper's 1-6) and the claim's own measured gap
    with power 0.8 at the family's strictest level."""
    results = all_results(args)
    rows = claims.judge(results)
    m = sum(r["ci"] is not None for r in rows)
    lines = ["| claim | seeds so far | sd of the paired difference | mean difference | seeds for a "
             "0.03 gap | seeds for the measured gap |", "|---|---|---|---|---|---|"]
    out = {}
    for r in rows:
        ci = r["ci"]
        if not ci or r["key"] != "accuracy":
            continue
        need3 = claims.seeds_needed(ci["sd"], 0.03, m)
        need = claims.seeds_needed(ci["sd"], abs(ci["mean"]), m) if ci["mean"] else None
        out[r["claim"]] = {"n": ci["n"], "sd": ci["sd"], "mean": ci["mean"], "seeds_for_0.03": need3,
                           "seeds_for_measured": need}
        lines.append(f"| {r['claim']} | {ci['n']} | {ci['sd']:.3f} | {ci['mean']:+.3f} | {need3} | "
                     f"{need if need is not None else '-'} |")
    md = ("Seeds the accuracy claims need (power 0.8, two-sided alpha 0.05 / "
          f"{m} claims): computed from the runs so far.\n\n" + "\n".join(lines) + "\n")
    write(args.out, "toy_seeds", out, md)
    print(md)
    return out


def cmd_report(args) -> str:
    """Tables, claims and figures from OUT/toy_table.json and OUT/toy_ablations.json."""
    from tools import plots
    main, abl = load(args.out, "toy_table"), load(args.out, "toy_ablations") or {"results": []}
    results, allr = main["results"], main["results"] + abl["results"]
    base = [r["accuracy"] for r in results if r["name"] == "base"]
    seeds = sorted({r["seed"] for r in results})
    header = (f"Toy world, every run from the shared base student of its seed (SFT on the scripted "
              f"teacher, {main['base_steps']} steps; its own accuracy: {mean_std(base)}), "
              f"{main['steps']} optimizer steps per run (staged: half each), seeds {seeds[0]}-"
              f"{seeds[-1]} (the seeds column says how many each row ran), {main['lrs']}; held-out "
              f"prompt-level strict IF accuracy (greedy, {main['n_eval']} prompts per seed, of which "
              f"about {statistics.mean(r['n_ood'] for r in results):.0f} combine a held-out pair). "
              f"Teacher on the same prompts: {statistics.mean(r['teacher'] for r in results):.3f}. "
              f"Machine: {main['machine']}; {main['wall_s'] / 60:.0f} min of runs.")
    md = table(results, MAIN, header) + "\n" + claims.claims_table(allr)
    with open(os.path.join(args.out, "toy_table.md"), "w") as f:
        f.write(md)
    plots.plot_bars(results, MAIN[1:], os.path.join(args.out, "toy_methods.png"),
                    base=statistics.mean(base) if base else None)
    plots.plot_bars(results, MAIN[1:], os.path.join(args.out, "toy_behaviour.png"),
                    keys=("length_w1", "logprob_w1"),
                    labels=("length W1 to the teacher (tokens)", "mean log-prob W1 to the teacher"))
    plots.plot_claims([(r["claim"], r["ci"]) for r in claims.judge(allr) if r["key"] == "accuracy"],
                      os.path.join(args.out, "toy_claims.png"))
    picked = [r for name in ("sft", "grpo", "a-grpo", "uniapl", "sft -> grpo", "chord-mu")
              for r in results if r["name"] == name and r["seed"] == seeds[0]
              and os.path.exists(os.path.join(r["run_dir"], "metrics.jsonl"))]   # runs of this machine
    if picked:
        plots.plot_curves([r["run_dir"] for r in picked], os.path.join(args.out, "toy_curves.png"),
                          labels=[f"{r['name']} (seed {seeds[0]})" for r in picked])
    if abl["results"]:
        configs = [c for c in MAIN if c[0] in ("uniapl", "grpo", "sft")] + ABLATIONS
        amd = table(allr, configs, f"Ablations: the same world, base and steps; {abl['lrs']}. Machine: "
                                   f"{abl['machine']}; {abl['wall_s'] / 60:.0f} min of runs.")
        lines = ["| comparison | paired difference a - b (95% CI) | p | seeds |", "|---|---|---|---|"]
        for a, b in [("uniapl, coef over batch", "uniapl"), ("uniapl", "uniapl, lambda 1e-2"),
                     ("grpo, binary reward", "grpo"), ("uniapl, binary reward", "uniapl")]:
            ci = claims.paired(allr, a, b)
            lines.append(f"| {a} vs {b} | " + (f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}] "
                                              f"| {ci['p']:.2g} | {ci['n']}" if ci else "- | - | 0") + " |")
        amd += ("\nComparisons outside the family of claims (unadjusted p):\n\n" + "\n".join(lines) +
                "\n\nDoes a method inherit its teacher's flaw? (the teacher never leaves commas out)\n\n"
                + flaw_table(abl["results"]))
        with open(os.path.join(args.out, "toy_ablations.md"), "w") as f:
            f.write(amd)
        plots.plot_sweep(allr, SWEEP, os.path.join(args.out, "toy_lambda_sweep.png"))
        md += "\n" + amd
    if load(args.out, "toy_teacher"):
        md += "\n" + teacher_report(args)
    if load(args.out, "toy_polar_claims"):
        md += "\n" + polar_report(args)
    print(md)
    return md


def cmd_teacher(args) -> list[dict]:
    """The teacher's strength: UniAPL, and SFT -> GRPO, with teachers of the accuracies in
    claims.TEACHERS answering the same prompts, from the same base students; GRPO once (it
    reads no answer). Accuracy only: no behaviour measures."""
    return run_table(args, "toy_teacher", TEACHER, behaviour=False,
                     report=lambda a: print(teacher_report(a)))


def ci_cell(ci: dict | None) -> str:
    return f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci else "-"


def seeds_needed_table(judged: list[dict], gap: float = 0.03) -> str:
    """Seeds each judged claim needs for `gap` (power 0.8, alpha 0.05 / the family's size)."""
    lines = ["| claim | seeds so far | sd of the paired difference | seeds for a 0.03 gap |",
             "|---|---|---|---|"]
    for row in judged:
        if row["ci"]:
            lines.append(f"| {row['claim']} | {row['ci']['n']} | {row['ci']['sd']:.3f} | "
                         f"{claims.seeds_needed(row['ci']['sd'], gap, len(judged))} |")
    return "\n".join(lines)


def teacher_report(args) -> str:
    """The teacher-strength table, its claims (a family of their own) and the plot of the gaps."""
    from tools import plots
    saved = load(args.out, "toy_teacher")
    results = saved["results"]
    rs = lambda n, seeds=None: [r for r in results if r["name"] == n  # noqa: E731
                                and (seeds is None or r["seed"] in seeds)]
    lines = ["| teacher (setting) | its accuracy on the evaluation prompts | seeds | UniAPL | "
             "SFT -> GRPO | GRPO | UniAPL - SFT -> GRPO (95% CI) | UniAPL - GRPO (95% CI) |",
             "|---|---|---|---|---|---|---|---|"]
    gaps = {"UniAPL - SFT -> GRPO": [], "UniAPL - GRPO": []}
    for acc in claims.TEACHERS:
        uni, staged = claims.teacher_run("uniapl", acc), claims.teacher_run("sft -> grpo", acc)
        if not rs(uni):
            continue
        cis = [claims.paired(results, uni, staged), claims.paired(results, uni, claims.GRPO_ALONE)]
        for xs, ci in zip(gaps.values(), cis):
            if ci:
                xs.append((acc, ci))
        seeds = {r["seed"] for r in rs(uni)}      # each row's means over its own seeds
        lines.append(f"| {acc:g} | {mean_std([r['teacher'] for r in rs(uni)])} | {len(seeds)} | "
                     f"{mean_std([r['accuracy'] for r in rs(uni)])} | "
                     f"{mean_std([r['accuracy'] for r in rs(staged, seeds)])} | "
                     f"{mean_std([r['accuracy'] for r in rs(claims.GRPO_ALONE, seeds)])} | "
                     f"{ci_cell(cis[0])} | {ci_cell(cis[1])} |")
    m = len(claims.TEACHER_CLAIMS)
    need = seeds_needed_table(claims.judge(results, claims.TEACHER_CLAIMS))
    ran = [r["wall_s"] for r in results if not r.get("kept")]
    md = (f"The teacher's strength: the same base students (SFT on the world's teacher, 0.65, "
          f"{saved['base_steps']} steps), then {saved['steps']} optimizer steps of UniAPL or SFT -> "
          "GRPO (half each) whose demonstrations -- and UniAPL's discriminator reference -- come "
          "from a teacher of the accuracy in the first column answering the same prompts "
          "(toy.reanswer); GRPO reads no answer and runs once. Learning rates: those chosen at "
          f"0.65 (lr_grid.md). Held-out prompt-level strict accuracy, {saved['n_eval']} prompts per "
          f"seed. Machine: {saved['machine']}; {saved['wall_s'] / 60:.0f} min of runs"
          + (f" ({statistics.mean(ran):.0f} s per run)" if ran else "") + ".\n\n"
          + "\n".join(lines) + "\n\n" + claims.claims_table(results, claims.TEACHER_CLAIMS)
          + f"\nSeeds each claim needs (power 0.8, two-sided alpha 0.05 / {m}), from its spread:\n\n"
          + need + "\n")
    with open(os.path.join(args.out, "toy_teacher.md"), "w") as f:
        f.write(md)
    if any(gaps.values()):
        plots.plot_teacher_gaps(gaps, os.path.join(args.out, "toy_teacher.png"))
    return md


POLAR_BASELINES = (claims.GRPO_ALONE, claims.SFT_GRPO)   # they read no discriminator


def polar_configs(polar_dir: str) -> list:
    """The toy POLAR family's arms: the teacher table's GRPO and SFT -> GRPO (they read no
    discriminator) and every arm that reads one, now the toy POLAR at `polar_dir`."""
    disc = ["--discriminator", "polar", "--discriminator-model", polar_dir]
    return [c for c in TEACHER if c[0] in POLAR_BASELINES] + [
        (claims.polar_run("a-grpo"), [("a-grpo", disc)]),
        (claims.polar_run("uniapl"), [("uniapl", disc)]),
        (claims.polar_run("sft -> a-grpo"), [("sft", []), ("a-grpo", disc)]),
        (claims.polar_run("uniapl, adv as reward"), [("uniapl", ["--adv-mode", "reward", *disc])]),
        (claims.polar_run("uniapl, lambda 1"), [("uniapl", ["--lambda-adv", "1", *disc])])]



def cmd_polar(args) -> list[dict]:
    """The adversarial claims again with the toy POLAR (claims.POLAR_CLAIMS). The baselines' runs
    of the teacher table (OUT/toy_teacher.json), made on this machine with these steps and
    evaluation size, are taken as they are; any other seed of theirs runs here."""
    polar_dir = os.path.abspath(os.path.join(args.out, "runs", "toy_polar"))
    if not os.path.exists(os.path.join(polar_dir, "config.json")):
        raise SystemExit(f"no toy POLAR in {polar_dir}: build it first "
                         f"(python -m tools.toy_polar --out {args.out})")
    teacher, saved = load(args.out, "toy_teacher"), load(args.out, "toy_polar_claims")
    if teacher and (teacher["steps"], teacher["n_eval"], teacher["machine"]) == (args.steps, args.n_eval,
                                                                              args.machine):
        saved = saved or {"steps": args.steps, "n_eval": args.n_eval, "lrs": teacher["lrs"],
                          "base_steps": BASE_STEPS, "machine": args.machine, "wall_s": 0, "results": []}
        have = {(r["name"], r["seed"]) for r in saved["results"]}
        taken = [r for r in teacher["results"] if r["name"] in POLAR_BASELINES
                 and r["seed"] in args.seeds and (r["name"], r["seed"]) not in have]
        if taken:
            print(f"{len(taken)} runs of GRPO and SFT -> GRPO taken from {args.out}/toy_teacher.json")
            write(args.out, "toy_polar_claims", dict(saved, results=saved["results"] + taken), None)
    return run_table(args, "toy_polar_claims", polar_configs(polar_dir), behaviour=False,
                     report=lambda a: print(polar_report(a)))


def polar_report(args) -> str:
    """The toy POLAR family: its table, its claims (Holm over the family), the seeds their spread
    asks for, and beside each claim the main table's verdict with the lexical discriminator."""
    from tools import plots
    saved = load(args.out, "toy_polar_claims")
    results, m = saved["results"], len(claims.POLAR_CLAIMS)
    lexical = {row["claim"]: row for row in claims.judge(all_results(args))}
    beside = ["| claim | toy POLAR: a - b (95% CI) | seeds | verdict | lexical (main table): a - b "
              "(95% CI) | seeds | verdict |", "|---|---|---|---|---|---|---|"]
    family, drawn = claims.judge(results, claims.POLAR_CLAIMS), []
    for row in family:
        lex = lexical.get(row["claim"].removesuffix(" (toy POLAR)"), {"ci": None, "verdict": "not run"})
        beside.append(f"| {row['claim'].removesuffix(' (toy POLAR)')} | {ci_cell(row['ci'])} | "
                      f"{row['ci']['n'] if row['ci'] else 0} | {row['verdict']} | {ci_cell(lex['ci'])} | "
                      f"{lex['ci']['n'] if lex['ci'] else 0} | {lex['verdict']} |")
        drawn += [(row["claim"], row["ci"]), (row["claim"].replace("toy POLAR", "lexical"), lex["ci"])]
    ran = [r["wall_s"] for r in results if not r.get("kept")]
    header = (f"The adversarial claims with the toy POLAR (`python -m tools.toy_polar`, scored through "
              f"`--discriminator polar`): the same base students, {saved['steps']} optimizer steps "
              f"(staged: half each), {saved['lrs']}; held-out prompt-level strict accuracy, "
              f"{saved['n_eval']} prompts per seed. GRPO and SFT -> GRPO read no discriminator: "
              f"their runs are the teacher table's. Machine: {saved['machine']}; "
              f"{saved['wall_s'] / 60:.0f} min of runs" + (f" ({statistics.mean(ran):.0f} s per run)"
                                                           if ran else "") + ".")
    md = (table(results, polar_configs(""), header) + "\n" + claims.claims_table(results, claims.POLAR_CLAIMS)
          + f"\nSeeds each claim needs (power 0.8, two-sided alpha 0.05 / {m}), from its spread:\n\n"
          + seeds_needed_table(family) + "\n\nThe same claims with the lexical discriminator (the main table's "
          "runs and family, from earlier sittings):\n\n" + "\n".join(beside) + "\n")
    same = claims.paired((load(args.out, "toy_teacher") or {"results": []})["results"] + results,
                         claims.polar_run("uniapl"), claims.teacher_run("uniapl", 0.65))
    if same:
        md += ("\nOutside the family (unadjusted): UniAPL with the toy POLAR minus UniAPL with lexical, "
               f"both run on this machine (the teacher table's): {ci_cell(same)}, p {same['p']:.2g}, "
               f"{same['n']} seeds.\n")
    with open(os.path.join(args.out, "toy_polar_claims.md"), "w") as f:
        f.write(md)
    plots.plot_claims(drawn, os.path.join(args.out, "toy_polar_claims.png"), colors=["C1", "C0"] * m)
    return md


def all_results(args) -> list[dict]:
    return sum(((load(args.out, n) or {"results": []})["results"] for n in ("toy_table", "toy_ablations")), [])


def cmd_discriminators(args) -> dict:
    """Where the coefficient uses it -- among sibling rollouts of one prompt -- does the
    discriminator rank them as the verifier does? For the base and a trained student (seed 0):
    8 samples per prompt, the rank correlation of d with the reward inside each group that has a
    spread of rewards; and, over fixed answers, how well d separates a correct teacher answer
    from a violating one."""
    import numpy as np
    import torch

    import checkpoint
    import data
    import discriminator as D
    import ifeval
    import rollouts
    import toy
    seed, runs, G = args.seeds[0], os.path.join(args.out, "runs"), 8
    rows = data.load_rows("toy", "eval", toy_seed=seed, toy_eval_n=args.n_eval)[:100]
    discs = {"lexical": D.Lexical()}
    base_dir = os.path.join(runs, "base", f"seed{seed}", "final")
    if os.path.exists(base_dir):
        discs["embedding (the base student as encoder)"] = D.Embedding(base_dir)
    out, lines = {}, ["| discriminator | student | groups with a reward spread | mean Spearman(d, r) "
                      "within a group | groups where it is > 0 |", "|---|---|---|---|---|"]
    for who, path in (("base", base_dir), ("trained (uniapl)",
                                           os.path.join(runs, "main", f"uniapl-s{seed}", "stage1", "final"))):
        if not os.path.exists(path):
            continue
        model, tok = checkpoint.load_policy(path, torch.device("cpu"))
        torch.manual_seed(seed)
        ro = rollouts.HFEngine().generate(model, tok, rows, G, max_new_tokens=64)
        r = np.array([ifeval.reward(t, x["instruction_id_list"], x["kwargs"], x["prompt"])
                      for t, x in zip(ro.texts, ro.rows)]).reshape(-1, G)
        for name, disc in discs.items():
            d = disc.score([x["prompt"] for x in ro.rows], [x["response"] for x in ro.rows],
                           ro.texts).numpy().reshape(-1, G)
            rho = group_spearman(d, r)
            out[f"{name} / {who}"] = {"groups": len(rho), "spearman_mean": float(np.mean(rho)) if rho else None,
                                      "positive": float(np.mean([x > 0 for x in rho])) if rho else None}
            lines.append(f"| {name} | {who} | {len(rho)} of {len(r)} | "
                         f"{np.mean(rho):+.3f} | {np.mean([x > 0 for x in rho]):.2f} |" if rho else
                         f"| {name} | {who} | 0 of {len(r)} | - | - |")
    rng = random.Random(seed)           # fixed answers: a correct and a violating teacher answer
    fixed = []
    for x in rows:
        ids, kw = x["instruction_id_list"], x["kwargs"]
        fixed.append((toy.teacher_response(rng, x["prompt"], ids, kw),
                       toy.teacher_response(rng, x["prompt"], ids, kw),
                       toy.teacher_response(rng, x["prompt"], ids, kw, violate=rng.choice(ids))))
    aucs = ["| discriminator | AUC: d of a correct vs a violating teacher answer |", "|---|---|"]
    for name, disc in discs.items():
        good = disc.score([x["prompt"] for x in rows], [f[0] for f in fixed], [f[1] for f in fixed]).numpy()
        bad = disc.score([x["prompt"] for x in rows], [f[0] for f in fixed], [f[2] for f in fixed]).numpy()
        auc = float(np.mean([(p > n) + 0.5 * (p == n) for p in good for n in bad]))
        out[f"{name} / fixed"] = {"auc": auc}
        aucs.append(f"| {name} | {auc:.3f} |")
    md = (f"Discriminator validation on {len(rows)} toy evaluation prompts (seed {seed}): {G} sampled "
          "rollouts per prompt (temperature 1) from each student, scored by the verifier (r) and the "
          "discriminator against a teacher reference (d); the coefficient normalises d within the "
          "group, which keeps its ranking, so the rank correlation inside a group is the "
          "coefficient's.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(aucs) + "\n")
    write(args.out, "toy_discriminators", out, md)
    print(md)
    return out


def group_spearman(d, r) -> list[float]:
    """Spearman's correlation of d and r [groups, G] inside each group where both vary."""
    import numpy as np
    return [float(np.corrcoef(_ranks(d[i]), _ranks(r[i]))[0, 1]) for i in range(len(r))
            if r[i].std() > 0 and d[i].std() > 0]


def _ranks(x):
    import numpy as np
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):      # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def load(out: str, name: str) -> dict | None:
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


def write(out: str, name: str, obj, md: str | None) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(obj, f, indent=1)
    if md is not None:
        with open(os.path.join(out, name + ".md"), "w") as f:
            f.write(md)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_job":
        print(json.dumps(run_job(json.loads(argv[1]))))
        return None
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="main",
                   choices=["main", "lr-grid", "seeds", "ablations", "teacher", "polar",
                            "discriminators", "report", "shifted-lr", "shifted", "gsm8k-lr", "gsm8k"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--configs", nargs="+", default=None, help="main/ablations: only these rows")
    p.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per run (all stages)")
    p.add_argument("--n-eval", type=int, default=N_EVAL, help="held-out evaluation prompts per seed")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one core each)")
    p.add_argument("--out", default="runs/reproduce",
                   help="where tables, plots and runs go (RESULTS.md's: --out results)")
    p.add_argument("--quick", action="store_true", help="tiny runs: a smoke test of the pipeline")
    p.add_argument("--machine", default=None, help="what to call this machine in the tables")
    p.add_argument("--report-only", action="store_true",
                   help="shifted, gsm8k: run nothing; write the report of the results kept so far")
    args = p.parse_args(argv)
    args.extra = []
    if args.report_only:
        if args.what not in ("shifted", "gsm8k"):
            raise SystemExit("--report-only: for shifted and gsm8k (the others: python -m tools.reproduce report)")
        args.seeds = []             # every result kept, no seed run again
    if args.quick:
        global BASE_STEPS, LR_GRID, N_VALIDATION
        args.seeds, args.steps, args.n_eval, args.extra, args.jobs = args.seeds[:2], 4, 12, QUICK, 1
        BASE_STEPS, LR_GRID, N_VALIDATION = 2, [1e-3, 3e-3], 12
    if args.machine is None:
        import parallel
        args.machine = parallel.device_name("cpu")
    t0 = time.perf_counter()
    from tools import process_rewards, shifted  # experiments of their own (they import this file)
    result = {"main": lambda a: run_table(a, "toy_table", MAIN), "lr-grid": cmd_lr_grid,
              "seeds": cmd_seeds, "ablations": lambda a: run_table(a, "toy_ablations", ABLATIONS),
              "teacher": cmd_teacher, "polar": cmd_polar, "discriminators": cmd_discriminators,
              "report": cmd_report, "shifted-lr": lambda a: shifted.cmd_lr_grid(a),
              "shifted": lambda a: shifted.cmd_shifted(a), "gsm8k-lr": lambda a: process_rewards.cmd_lr_grid(a),
              "gsm8k": lambda a: process_rewards.cmd_gsm8k(a)}[args.what](args)
    print(f"\n{args.what}: {time.perf_counter() - t0:.0f} s; wrote {args.out}/")
    return result


if __name__ == "__main__":
    main()
