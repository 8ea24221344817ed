"""The paper's open question on the GSM8K toy: process rewards, one step against two, a flawed teacher.

    python -m tools.reproduce gsm8k-lr --out results                     # 1. the learning rates
    python -m tools.reproduce gsm8k --out results --seeds $(seq 0 9)     # 2. the first ten seeds
    python -m tools.reproduce gsm8k --out results --seeds $(seq 10 19)   # 3. as the seed rule says
    python -m tools.reproduce gsm8k --out results --quick                # the pipeline in a minute

The design, the claims and the seed rule were fixed before any run (tools/claims.py, "the GSM8K
family"); this file runs them. Every arm refines its seed's base student (SFT on gsm8k.py's toy
teacher) for the same number of steps, on the normal world or the flawed teacher's, at its
method's rate from the validation grid, and is scored on the seed's held-out problems by
gsm8k.evaluate: the answer's accuracy, clean solutions, and the flawed teacher's error rate.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tools import claims
from tools import reproduce as rp

# name -> [(method, world, extra args), ...] from the base: one stage, or two (half the steps each)
ARMS = {
    "base": [],
    "sft": [("sft", "toy", [])],
    "grpo": [("grpo", "toy", [])],
    "uniapl": [("uniapl", "toy", [])],
    "sft -> grpo": [("sft", "toy", []), ("grpo", "toy", [])],
    "grpo, answer + steps": [("grpo", "toy", claims.GSM8K_PROCESS)],
    "uniapl, answer + steps": [("uniapl", "toy", claims.GSM8K_PROCESS)],
    "sft" + claims.FLAWED: [("sft", "toy:flawed", [])],
    "uniapl" + claims.FLAWED: [("uniapl", "toy:flawed", [])],
}
KEYS = ("accuracy", "steps_right", "clean", "flaw_rate")


class Plan:
    """The pre-registered sizes (claims.py), or --quick's tiny ones (a test of the pipeline)."""

    def __init__(self, quick: bool):
        self.base_steps, self.steps = (4, 4) if quick else (claims.GSM8K_BASE_STEPS, claims.GSM8K_STEPS)
        self.n_eval, self.n_validation = (12, 12) if quick else (claims.GSM8K_N_EVAL, 500)
        self.grid = {m: rates[:2] for m, rates in claims.GSM8K_LR_GRID.items()} if quick else \
            claims.GSM8K_LR_GRID
        self.lr_seeds = (0,) if quick else (0, 1)


def base_model(seed: int, out: str, extra: list[str], plan: Plan) -> str:
    """The seed's base student (kept): SFT on the toy teacher, GSM8K_BASE_STEPS at GSM8K_BASE_LR."""
    import train
    path = os.path.join(out, "runs", "gsm8k", "base", f"seed{seed}")
    if not os.path.exists(os.path.join(path, "final", "model.safetensors")):
        shutil.rmtree(path, ignore_errors=True)
        train.main(["--task", "gsm8k", "--model", "toy", "--method", "sft", "--steps", str(plan.base_steps),
                    "--learning-rate", str(claims.GSM8K_BASE_LR), "--seed", str(seed), "--out", path,
                    "--no-progress", "--rollout-engine", "hf",
                    "--save-every", "0", "--no-eval-start", "--eval-limit", "1", *extra])
    return os.path.join(path, "final")


def run_arm(spec: dict) -> dict:
    """One arm at one seed (in this process): its stages from the base (finished ones kept), then
    gsm8k.evaluate on the seed's held-out problems (or on the validation split, for the grid)."""
    import torch

    import checkpoint
    import data
    import eval
    import gsm8k
    torch.set_num_threads(1)
    plan, seed, t0 = Plan(spec["quick"]), spec["seed"], time.perf_counter()
    model = base_model(seed, spec["out"], spec["extra"], plan)
    stages = ARMS[spec["name"]]
    for i, (method, world, extra) in enumerate(stages):
        out = os.path.join(spec["dir"], f"stage{i + 1}")
        argv = ["--task", "gsm8k", "--model", model, "--method", method, "--dataset", world,
                "--steps", str(plan.steps // len(stages)), "--seed", str(seed), "--out", out,
                "--learning-rate", str(spec["lrs"][method]), "--no-progress", "--rollout-engine", "hf",
                "--save-every", "0",
                "--no-eval-start", "--eval-limit", "1", *extra, *spec["extra"]]
        if not rp.finished(out, argv):
            shutil.rmtree(out, ignore_errors=True)
            import train
            train.main(argv)
        model = os.path.join(out, "final")
    split = "toy:validation" if spec["validation"] else "toy"
    rows = data.load_rows(split, "eval", toy_seed=seed, toy_eval_n=spec["n_eval"], task=gsm8k)
    policy, tok = checkpoint.load_policy(model, torch.device("cpu"), toy_tokenizer=gsm8k.toy_tokenizer)
    texts = eval.generate_responses(policy, tok, rows, max_new_tokens=64)[0]
    scores = gsm8k.evaluate(rows, texts)
    return {"name": spec["name"], "seed": seed, "lrs": [spec["lrs"][m] for m, _, _ in stages],
            "wall_s": time.perf_counter() - t0, **{k: scores[k] for k in KEYS}}


def spawn(spec: dict) -> dict:
    """One arm in a fresh process of one thread (--jobs side by side), or here (--quick)."""
    if spec["quick"]:
        import torch
        threads = torch.get_num_threads()
        try:
            return run_arm(spec)
        finally:
            torch.set_num_threads(threads)
    import subprocess
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-m", "tools.process_rewards", json.dumps(spec)],
                         capture_output=True, text=True, env=env, cwd=rp.ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{spec['name']} seed {spec['seed']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_specs(specs: list[dict], args, keep) -> None:
    """Bases first, one per seed (the arms share them; a base's own spec scores it), then every
    other arm, args.jobs at a time; `keep(result)` as each one finishes."""
    bases = {spec["seed"]: spec for spec in specs if spec["name"] == "base"}
    first = [bases.get(seed) or {**specs[0], "name": "base", "seed": seed}
             for seed in sorted({spec["seed"] for spec in specs})]
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(spawn, first):
            if r["seed"] in bases:
                keep(r)
        for r in pool.map(spawn, [spec for spec in specs if spec["name"] != "base"]):
            keep(r)
            flaw = "-" if r["flaw_rate"] is None else f"{r['flaw_rate']:.3f}"
            print(f"  [gsm8k] {r['name']:24s} seed {r['seed']} lr {r['lrs']}: accuracy {r['accuracy']:.3f}, "
                  f"clean {r['clean']:.3f}, no-borrow {flaw} ({r['wall_s']:.0f} s)", flush=True)


def spec(name: str, seed: int, args, lrs: dict, tag: str, validation: bool = False) -> dict:
    plan = Plan(args.quick)
    return {"name": name, "seed": seed, "lrs": lrs, "out": args.out, "extra": args.extra,
            "quick": args.quick, "validation": validation,
            "n_eval": plan.n_validation if validation else plan.n_eval,
            "dir": os.path.join(args.out, "runs", "gsm8k", tag,
                                f"{name.replace(' ', '').replace(',', '_')}-s{seed}")}


def cmd_lr_grid(args) -> dict:
    """Each method alone from the base at each rate of its grid, on the validation split; a best
    rate at an edge is extended beyond it (twice at most)."""
    plan, best = Plan(args.quick), {}
    results = (rp.load(args.out, "toy_gsm8k_lr") or {"results": []})["results"]
    keep = lambda r: (results.append(r), rp.write(args.out, "toy_gsm8k_lr", {"results": results}, None))  # noqa: E731
    for method, rates in plan.grid.items():
        best[method] = rp.grid_search(
            results, method, list(rates), plan.lr_seeds, rounds=1 if args.quick else 3,
            run=lambda todo, m=method: run_specs([spec(m, s, args, {m: lr}, f"lr{lr:g}", validation=True)
                                                  for lr, s in todo], args, keep))
    lines = [rp.grid_table(results, best, "method")]
    md = (f"GSM8K toy, learning-rate grid (tools/claims.py): answer accuracy on {plan.n_validation} "
          f"*validation* problems, mean of seeds {list(plan.lr_seeds)}, {plan.steps} steps from each "
          f"seed's base student. Machine: {args.machine}.\n\n" + "\n".join(lines) + "\n")
    rp.write(args.out, "toy_gsm8k_lr", {"results": results, "best": best}, md)
    print(md)
    return best


def cmd_gsm8k(args) -> list[dict]:
    """Every arm at every seed asked for (finished runs kept), then the report."""
    lr = rp.load(args.out, "toy_gsm8k_lr")
    if not lr or not lr.get("best"):
        raise SystemExit("the GSM8K toy's learning rates first: python -m tools.reproduce gsm8k-lr "
                         "--out " + args.out)
    saved = rp.load(args.out, "toy_gsm8k") or {"results": []}
    results = [r for r in saved["results"] if r["seed"] not in args.seeds]
    keep = lambda r: (results.append(r), rp.write(args.out, "toy_gsm8k", {"results": results}, None))  # noqa: E731
    run_specs([spec(name, s, args, lr["best"], "arms") for s in args.seeds for name in ARMS], args, keep)
    md = report(results, lr["best"], args)
    rp.write(args.out, "toy_gsm8k", {"results": results, "lrs": lr["best"]}, md)
    print(md)
    return results


def report(results: list[dict], lrs: dict, args) -> str:
    from tools import plots
    # the seeds every arm has run (a base student trained ahead of its arms is not a seed yet)
    seeds = rp.complete_seeds(results, ARMS) or sorted({r["seed"] for r in results})
    lines = ["| arm | seeds | answer accuracy | calculations right | clean solutions | no-borrow error |",
             "|---|---|---|---|---|---|"]
    for name in ARMS:
        rs = [r for r in results if r["name"] == name]
        if rs:
            cells = [rp.mean_std([r[k] for r in rs]) for k in KEYS]
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    first = [r for r in results if r["seed"] < claims.GSM8K_SEEDS_FIRST]
    complete = rp.complete_seeds(results, ARMS)
    done = set(complete) >= set(range(claims.GSM8K_SEEDS_FIRST))     # every arm of seeds 0-9
    rule = (f"The seed rule, applied to seeds 0-{claims.GSM8K_SEEDS_FIRST - 1}: "
            f"**{claims.gsm8k_seeds(first)} seeds**." if done else
            f"The seed rule applies once seeds 0-{claims.GSM8K_SEEDS_FIRST - 1} have run every arm.")
    # claims are judged only at the seeds the rule asks for (every arm of each): no peeking before
    if args.quick or (done and len(complete) >= claims.gsm8k_seeds(first)):
        judged = claims.judge(results, claims.GSM8K_CLAIMS)
        plots.plot_claims([(r["claim"], r["ci"]) for r in judged], os.path.join(args.out, "toy_gsm8k.png"))
        verdicts = claims.claims_table(results, claims.GSM8K_CLAIMS)
    else:
        verdicts = rp.interim(len(complete), claims.gsm8k_seeds(first) if done else claims.GSM8K_SEEDS_MIN,
                               done)
    return (f"GSM8K toy (gsm8k.py; design and claims fixed before the runs in tools/claims.py): seeds "
            f"{seeds[0]}-{seeds[-1]} ({len(seeds)}), {Plan(args.quick).n_eval} held-out problems per seed, "
            f"{Plan(args.quick).steps} steps per arm from each seed's base student, rates {lrs}. "
            f"Machine: {args.machine}.\n\n" + "\n".join(lines) + "\n\n" + verdicts + "\n" + rule + "\n")


if __name__ == "__main__":        # one arm (spawn): python -m tools.process_rewards SPEC
    print(json.dumps(run_arm(json.loads(sys.argv[1]))))
