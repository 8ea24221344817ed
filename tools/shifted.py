"""When one step beats two: drift away from what only the demonstrations teach, in the shifted world.

    python -m tools.reproduce shifted-lr --out results                     # 1. the learning rates
    python -m tools.reproduce shifted --out results --seeds $(seq 0 11)    # 2. the first half
    python -m tools.reproduce shifted --out results --seeds $(seq 12 23)   # 3. as the seed rule says
    python -m tools.reproduce shifted --out results --quick                # the pipeline in a minute

The idea
--------
The paper argues that SFT-then-RL lets "offline expert knowledge become brittle as the policy
drifts", and that one objective per step keeps the policy "anchored to the expert's data
manifold". In the main table demonstrations and RL prompts share one distribution, so nothing can
drift away from what only the demonstrations teach. The shifted worlds (toy.py) give it room:
demonstrations teach all ten instruction types, RL prompts ask only for the five of family R. The
arms, the evaluation, the endpoint, the learning-rate grid, the claims and the seed rule were
fixed before any run (tools/claims.py, "the shifted family"); this file runs them.

How an arm is run and scored
----------------------------
Every arm starts from its seed's shared base student (tools/reproduce.py). It trains in chunks
that end at its evaluation points, each chunk one `train.py ... --steps N --resume auto`, which
continues bit for bit where the last chunk stopped (the resume is exact on the CPU, tested), and
its model is scored after each chunk on the seed's held-out prompts: greedy answers up to 128 new
tokens, scored at 64 (the world's evaluation length: the first 64 tokens of the same greedy
answer are the 64-token answer) and at 128, per family -- D-only, R-only, mixed, all -- with the
share of answers cut at the limit and the accuracy of those that finished; drift is the mean
per-token log-prob, under the policy, of the teacher's answers to the D-only prompts (each
answer's mean, then their mean). Scores are kept in each run's directory, so a command run again
continues where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tools import claims
from tools import reproduce as rp

# name -> (starts from: None = the base, "S" = S's final model; method, world, extra args, rate of)
ARMS = {
    "S": (None, "sft", "toy:shifted", [], "sft"),
    "A": ("S", "grpo", "toy:shifted", [], "grpo"),
    "B": ("S", "grpo", "toy:unshifted", [], "grpo"),
    "A" + claims.NOLENGTH: ("S", "grpo", "toy:shifted-nolength", [], "grpo"),
    "C": (None, "uniapl", "toy:shifted", [], "uniapl"),
    "C0": (None, "uniapl", "toy:shifted", ["--lambda-adv", "0"], "uniapl"),
    "Ceq": (None, "uniapl", "toy:shifted", ["--sft-batch-size", "2"], "uniapl"),
    "C" + claims.NOLENGTH: (None, "uniapl", "toy:shifted-nolength", [], "uniapl"),
}
FAMILIES = ("D-only", "R-only", "mixed", "all")
KEY = {"D-only": "d_only", "R-only": "r_only", "mixed": "mixed", "all": "all"}


class Plan:
    """The pre-registered sizes (claims.py), or --quick's tiny ones (a test of the pipeline)."""

    def __init__(self, quick: bool):
        self.stage1, self.steps = (2, 6) if quick else (claims.SHIFT_STAGE1, claims.SHIFT_STEPS)
        self.eval_at = (2, 4, 6) if quick else claims.SHIFT_EVAL_AT
        self.lr_seeds = claims.SHIFT_LR_SEEDS[:1] if quick else claims.SHIFT_LR_SEEDS
        self.n_eval, self.n_validation = (12, 12) if quick else (claims.SHIFT_N_EVAL,
                                                                 claims.SHIFT_N_VALIDATION)
        self.grid = {m: rates[:2] for m, rates in claims.SHIFT_LR_GRID.items()} if quick else \
            claims.SHIFT_LR_GRID

    def span(self, arm: str) -> tuple[int, int]:
        """(first step, last step) of an arm on the shared timeline."""
        start = self.stage1 if ARMS[arm][0] == "S" else 0
        return start, self.stage1 if arm == "S" else self.steps


# ----------------------------------------------------------------------------------------------
# Scoring a model: per family, at two answer lengths, and the teacher's log-prob (drift)
# ----------------------------------------------------------------------------------------------

def score(model, tok, rows: list[dict], shift: str, limits=claims.SHIFT_LIMITS) -> dict:
    """Prompt-level strict accuracy per family at each answer limit, the share cut at the limit,
    the accuracy of the answers that finished, mean length; the teacher's log-prob on D-only."""
    import eval
    import ifeval
    import rollouts
    import toy
    ro = rollouts.HFEngine(batch_size=128).generate(model, tok, rows, 1, greedy=True,
                                                     max_new_tokens=max(limits))
    n = ro.completion_mask.sum(1).tolist()                       # tokens incl. the stop token
    fams = [toy.family(r["instruction_id_list"], shift) for r in rows]
    out = {}
    for limit in limits:
        texts, done = cut(ro, tok, limit)
        tag = "" if limit == limits[0] else f"_{limit}"
        for fam in FAMILIES:
            idx = [i for i, f in enumerate(fams) if fam == "all" or f == fam]
            ok = [i for i in idx if done[i]]
            out[KEY[fam] + tag] = accuracy(rows, texts, idx)
            out[f"truncated_{KEY[fam]}{tag}"] = 1 - len(ok) / len(idx) if idx else None
            out[f"finished_{KEY[fam]}{tag}"] = accuracy(rows, texts, ok)
            out[f"length_{KEY[fam]}{tag}"] = statistics.mean(min(n[i], limit) for i in idx) if idx else None
        if tag == "":
            every = ifeval.evaluate(rows, texts)["per_instruction"]
            out["per_instruction"] = {k: v["strict"] for k, v in every.items()}
    d_rows = [r for r, f in zip(rows, fams) if f == "D-only"]
    lp = eval.mean_token_logprobs(model, tok, [r["prompt"] for r in d_rows], [r["response"] for r in d_rows],
                                  batch_size=128)
    out["teacher_logp_d"] = statistics.mean(lp) if lp else None
    return out


def cut(ro, tok, limit: int) -> tuple[list[str], list[bool]]:
    """Greedy answers cut at `limit` new tokens, and which of them finished within it: the
    first `limit` tokens of a longer greedy answer are the answer a `limit`-token call gives."""
    n = ro.completion_mask.sum(1).tolist()
    texts = tok.batch_decode([ids[:min(k, limit)].tolist() for ids, k in zip(ro.completion_ids, n)],
                             skip_special_tokens=True)
    return texts, [not t and k <= limit for k, t in zip(n, ro.truncated.tolist())]


def accuracy(rows: list[dict], texts: list[str], idx: list[int]) -> float | None:
    """Prompt-level strict accuracy of the answers `idx` (None: no such prompt)."""
    import ifeval
    return ifeval.evaluate([rows[i] for i in idx], [texts[i] for i in idx])["prompt_strict"] if idx else None


# ----------------------------------------------------------------------------------------------
# One seed: every arm, in chunks, scored after each
# ----------------------------------------------------------------------------------------------

def run_seed(spec: dict) -> list[dict]:
    """Every arm at one seed (in this process): results with the scores at each evaluation
    point and the endpoints (the mean of the last three; S: its final model's)."""
    import torch

    import data
    torch.set_num_threads(1)
    plan, seed = Plan(spec["quick"]), spec["seed"]
    base = rp.base_model(seed, os.path.join(spec["out"], "runs"), spec["extra"])
    rows = data.load_rows("toy", "eval", toy_seed=seed, toy_eval_n=plan.n_eval)
    return [run_arm(arm, spec, plan, base, rows) for arm in ARMS]     # S first: A and B start from it


def run_arm(arm: str, spec: dict, plan: Plan, base: str, rows: list[dict]) -> dict:
    """One arm in chunks that end at its evaluation points, scored after each (both kept)."""
    import torch

    import checkpoint
    import train
    origin, method, world, extra, rate_of = ARMS[arm]
    seed, t0, out = spec["seed"], time.perf_counter(), arm_dir(spec["out"], arm, spec["seed"])
    start, end = plan.span(arm)
    # the families of the arm's world (the control B is scored by the shifted world's)
    shift = "shifted-nolength" if world.endswith("nolength") else "shifted"
    scored = lambda model: score(*checkpoint.load_policy(model, torch.device("cpu")), rows, shift)  # noqa: E731
    base_scores = cached(os.path.join(spec["out"], "runs", "shifted", f"base-s{seed}.json"), shift,
                         lambda: scored(base))
    model = base if origin is None else os.path.join(arm_dir(spec["out"], origin, seed), "final")
    argv = ["--model", model, "--method", method, "--dataset", world, "--seed", str(seed),
            "--learning-rate", str(spec["lrs"][rate_of]), "--no-progress", "--rollout-engine", "hf",
            "--no-eval-start",
            "--eval-limit", "1", "--save-every", str(plan.steps), "--save-total-limit", "1",
            "--out", out, "--resume", "auto", *extra, *spec["extra"]]

    def chunk(at: int) -> dict:          # train on to step `at` of the timeline, then score
        train.main([*argv, "--steps", str(at - start)])
        return scored(os.path.join(out, "final"))

    evals = {str(at): cached(os.path.join(out, "shifted_scores.json"), str(at), lambda at=at: chunk(at))
             for at in plan.eval_at if start < at <= end}
    return endpoint(arm, seed, spec["lrs"][rate_of], evals, base_scores, time.perf_counter() - t0)


def arm_dir(out: str, arm: str, seed: int) -> str:
    name = arm.replace(" ", "").replace("(", "-").replace(")", "")
    return os.path.join(out, "runs", "shifted", f"{name}-s{seed}")


def cached(path: str, key: str, compute):
    """`compute()` once: its result is kept under `key` in the JSON file at `path`."""
    saved = json.load(open(path)) if os.path.exists(path) else {}
    if key not in saved:
        saved[key] = compute()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(saved, f)
        os.replace(path + ".tmp", path)
    return saved[key]


def endpoint(arm: str, seed: int, lr: float, evals: dict, base: dict, wall_s: float) -> dict:
    """The arm's result: each score's endpoint (the mean of its last three evaluations; S, whose
    final model is where A and B start: that model's) and every evaluation, the base's as step 0."""
    last = [evals[k] for k in sorted(evals, key=int)][-1 if arm == "S" else -3:]
    keys = [k for k, v in last[0].items() if not isinstance(v, dict)]
    mean = lambda xs: statistics.mean(xs) if xs and None not in xs else None  # noqa: E731
    return {"name": arm, "seed": seed, "lrs": [lr], "wall_s": wall_s, "evals": {"0": base, **evals},
            **{k: mean([e[k] for e in last]) for k in keys}}


# ----------------------------------------------------------------------------------------------
# The commands: the learning-rate grid, the arms, the report
# ----------------------------------------------------------------------------------------------

def cmd_lr_grid(args) -> dict:
    """SFT on S's steps, then GRPO on A's from S at SFT's choice, and UniAPL on C's, at each rate
    of the pre-registered grid, seeds 0-1, scored on the validation split (all types); a best
    rate at an edge is extended beyond it (twice at most)."""
    plan = Plan(args.quick)
    best, results = {}, (rp.load(args.out, "toy_shifted_lr") or {"results": []})["results"]

    def run(method: str, todo: list) -> None:
        specs = [{"seed": seed, "method": method, "lr": lr, "sft_lr": best.get("sft"), "out": args.out,
                  "extra": args.extra, "quick": args.quick} for lr, seed in todo]
        with ThreadPoolExecutor(args.jobs) as pool:
            for r in pool.map(lambda spec: spawn(spec, "_grid"), specs):
                results.append(r)
                rp.write(args.out, "toy_shifted_lr", {"results": results}, None)
                print(f"  [shifted lr] {r['name']} lr {r['lrs'][0]:g} seed {r['seed']}: {r['accuracy']:.3f}",
                      flush=True)
    for method in ("sft", "grpo", "uniapl"):       # GRPO's grid needs SFT's choice first
        best[method] = rp.grid_search(results, method, list(plan.grid[method]), plan.lr_seeds,
                                      lambda todo, m=method: run(m, todo), rounds=1 if args.quick else 3)
    lines = [rp.grid_table(results, best, "stage")]
    md = (f"Shifted world, learning-rate grid (tools/claims.py): prompt-level strict accuracy on "
          f"{plan.n_validation} *validation* prompts of every type, mean of seeds "
          f"{list(plan.lr_seeds)}: SFT for {plan.stage1} steps from the base, GRPO on the R "
          f"prompts for {plan.steps - plan.stage1} steps from that SFT at its chosen rate, UniAPL for "
          f"{plan.steps} steps from the base. Machine: {args.machine}.\n\n" + "\n".join(lines) + "\n")
    rp.write(args.out, "toy_shifted_lr", {"results": results, "best": best}, md)
    print(md)
    return best


def grid_job(spec: dict) -> dict:
    """One rate of the grid at one seed, scored on the validation split."""
    import torch

    import checkpoint
    import data
    import ifeval
    import train
    torch.set_num_threads(1)
    plan, seed, t0 = Plan(spec["quick"]), spec["seed"], time.perf_counter()
    runs = os.path.join(spec["out"], "runs")
    model = rp.base_model(seed, runs, spec["extra"])

    def run(method, lr, steps, model):
        out = os.path.join(runs, "shifted-lr", f"{method}-lr{lr:g}-s{seed}")
        train.main(["--model", model, "--method", method, "--dataset", "toy:shifted", "--seed", str(seed),
                    "--learning-rate", str(lr), "--steps", str(steps), "--out", out, "--resume", "auto",
                    "--no-progress", "--rollout-engine", "hf",
                    "--no-eval-start", "--eval-limit", "1", "--save-every", "0",
                    *spec["extra"]])
        return os.path.join(out, "final")

    if spec["method"] == "grpo":              # from S at SFT's chosen rate
        model = run("sft", spec["sft_lr"], plan.stage1, model)
    steps = {"sft": plan.stage1, "grpo": plan.steps - plan.stage1, "uniapl": plan.steps}[spec["method"]]
    policy, tok = checkpoint.load_policy(run(spec["method"], spec["lr"], steps, model), torch.device("cpu"))
    import eval
    rows = data.load_rows("toy:validation", "eval", toy_seed=seed, toy_eval_n=plan.n_validation)
    texts = eval.generate_responses(policy, tok, rows, max_new_tokens=64)[0]
    return {"name": spec["method"], "seed": seed, "lrs": [spec["lr"]], "wall_s": time.perf_counter() - t0,
            "accuracy": ifeval.evaluate(rows, texts)["prompt_strict"]}


def cmd_shifted(args) -> list[dict]:
    """Every arm at every seed asked for (finished runs and scores are kept), then the report."""
    lr = rp.load(args.out, "toy_shifted_lr")
    if not lr or not lr.get("best"):
        raise SystemExit("the shifted world's learning rates first: python -m tools.reproduce "
                         "shifted-lr --out " + args.out)
    saved = rp.load(args.out, "toy_shifted") or {"results": []}
    results = [r for r in saved["results"] if r["seed"] not in args.seeds]
    specs = [{"seed": s, "lrs": lr["best"], "out": args.out, "extra": args.extra, "quick": args.quick}
             for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        for rs in pool.map(lambda spec: spawn(spec, "_seed"), specs):
            results += rs
            rp.write(args.out, "toy_shifted", {"results": results, "lrs": lr["best"]}, None)
            print(f"  [shifted] seed {rs[0]['seed']}: " + ", ".join(
                f"{r['name']} D {r['d_only'] or 0:.3f}" for r in rs), flush=True)
    md = report(results, lr["best"], args)
    rp.write(args.out, "toy_shifted", {"results": results, "lrs": lr["best"]}, md)
    print(md)
    return results


def spawn(spec: dict, kind: str):
    """One job in a fresh process of one thread (--jobs side by side), or here (--jobs 1)."""
    if spec["quick"]:
        import torch
        threads = torch.get_num_threads()
        try:
            return {"_grid": grid_job, "_seed": run_seed}[kind](spec)
        finally:
            torch.set_num_threads(threads)
    import subprocess
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-m", "tools.shifted", kind, json.dumps(spec)], capture_output=True,
                         text=True, env=env, cwd=rp.ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(results: list[dict], lrs: dict, args) -> str:
    """The arms' endpoints per family, the claims, the seed rule, and the curves' plot."""
    from tools import plots
    # the seeds every arm has run (a base student trained ahead of its arms is not a seed yet)
    seeds = rp.complete_seeds(results, ARMS) or sorted({r["seed"] for r in results})
    by = {arm: [r for r in results if r["name"] == arm] for arm in ARMS}
    cols = [("D-only", "d_only"), ("R-only", "r_only"), ("mixed", "mixed"), ("all", "all"),
            ("D-only @128", "d_only_128"), ("all @128", "all_128"), ("D cut @64", "truncated_d_only"),
            ("D finished @64", "finished_d_only"), ("D length", "length_d_only"),
            ("teacher log-prob on D", "teacher_logp_d")]
    lines = ["| arm | seeds | " + " | ".join(c for c, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm, rs in by.items():
        if rs:
            cells = [rp.mean_std([r.get(k) for r in rs]) for _, k in cols]
            lines.append(f"| {arm} | {len(rs)} | " + " | ".join(cells) + " |")
    half = [r for r in results if r["seed"] < claims.SHIFT_SEEDS_HALF]
    complete = rp.complete_seeds(results, ARMS)
    done = set(complete) >= set(range(claims.SHIFT_SEEDS_HALF))       # every arm of seeds 0-11
    rule = (f"The seed rule, applied to seeds 0-{claims.SHIFT_SEEDS_HALF - 1}: **{claims.shift_seeds(half)} "
            "seeds**." if done else
            f"The seed rule applies once seeds 0-{claims.SHIFT_SEEDS_HALF - 1} have run every arm.")
    plots.plot_shifted(results, list(ARMS), FAMILIES, KEY, os.path.join(args.out, "toy_shifted.png"))
    # claims are judged only at the seeds the rule asks for (every arm of each): no peeking before
    if args.quick or (done and len(complete) >= claims.shift_seeds(half)):
        verdicts = claims.claims_table(results, claims.SHIFT_CLAIMS)
    else:
        verdicts = rp.interim(len(complete), claims.shift_seeds(half) if done else claims.SHIFT_SEEDS_PLANNED,
                               done)
    return (f"Shifted world (toy.py; design and claims fixed before the runs in tools/claims.py): seeds "
            f"{seeds[0]}-{seeds[-1]} ({len(seeds)}), {Plan(args.quick).n_eval} held-out prompts per seed, "
            f"rates {lrs}; endpoint = the mean of each arm's last three evaluations (S: its final "
            f"model's), scored at 64 new tokens unless marked @128. Machine: {args.machine}.\n\n"
            + "\n".join(lines) + "\n\n" + verdicts + "\n" + rule + "\n")


if __name__ == "__main__":        # the jobs (spawn): python -m tools.shifted _grid|_seed SPEC
    print(json.dumps({"_grid": grid_job, "_seed": run_seed}[sys.argv[1]](json.loads(sys.argv[2]))))
