"""The GPU suite: every figure of the real path from one command, each part in its own process
with its own time limit, written down the moment it is known.

    python -m tools.gpu_suite                          # one GPU, 9 minutes: results/gpu_suite_<gpu>.*
    python -m tools.gpu_suite --only train_cli         # one part (the environment always runs)
    python -m tools.gpu_suite --device cpu --model-shape toy --out /tmp/rehearsal   # the CPU rehearsal

A GPU is lent rarely and for minutes, so the suite is built to give back every figure it can in
one call (one 10-minute command: `--budget-s` 540 by default): each measurement runs in a
process of its own (a crash, an out-of-memory or a hang costs that part alone; vLLM's allocator,
one per process, is never built twice in one), under a time limit cut from the budget (a part
that finishes early leaves its time to the next), prints its figures as it goes, and the JSON and
markdown are rewritten after every part -- a part that failed or had no time left holds
{"error": "..."} under its key. Every process compiles the static engine's decode step once;
they share one inductor cache directory (`--compile-cache`), so the first pays for inductor's
code generation and the later ones load it. In order of importance -- what was never measured
first, the yardsticks measured before (hf, TRL) last:

    environment           GPU, driver, torch, transformers, triton, vLLM, Liger, TRL versions (a
                          floor of 30 s of its own: it always runs)
    graphs                the CUDA graphs proven, not assumed (under 2 minutes): the compiled
                          engine's greedy answers against the eager engine's over a training call,
                          an evaluation of another row count and cache length, training again,
                          and a sampled call whose rows end early (finished rows compacted away);
                          compiles, graphs recorded (and recorded again), inputs copied into them
                          (a copied KV cache is flagged), compactions, inductor's skips and their
                          reasons per call
    steps                 one real-shape UniAPL step with the default engine (static; vLLM too
                          where installed): 8 prompts x G = 8 rollouts of up to 512 tokens + 8
                          demonstrations, a POLAR-1.8B-shaped scorer; the warm-up step and the
                          first decode step (the compile) apart from the steady ones, phase times,
                          generated tokens/s, a peak per phase and per step, compiles counted
    eval                  IFEval's evaluation (541 prompts, greedy, 1,280 tokens) as the engine
                          plans it: one call of the plan's size timed, x the plan's calls
    logprobs_correctness  every log-prob path on this device against float64 maths: values and
                          both gradients, fp32 and bf16, temperature 1 and 0.7
    logprobs_speed        the log-prob table at N = 8,192 and 32,768: naive, chunked torch,
                          Triton, Liger; fraction of the measured matmul floor
    reference             the same step with the hf engine, the grpo preset, and TRL's
                          GRPOTrainer at the same settings (HF generate; vLLM colocated where
                          installed): the yardsticks
    train_cli             `python train.py --model <a Qwen3-format directory at 0.6B's width and
                          depth>` at the real defaults: two steps, evaluations, a checkpoint, a
                          resume (the CPU rehearsal's world, tools/worlds.py, written at full size)

The first figures get their time first: the graphs check has a floor of 2 minutes and the step a
floor of 4 (with a share of what is left), before any later part is given a second. A step or an
evaluation whose decode step ran without CUDA graphs says so in its figure, loudly.

It needs only torch, transformers and triton (the GPU image's own, possibly older: torch 2.11,
transformers 5.17) and sentencepiece for the POLAR-format files; a part whose optional package is
missing (TRL, vLLM, Liger) says so in one line and the rest go on. Random weights at the real
shapes: every rollout and answer runs to its length limit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
# part -> (its floor in seconds, its share of what is left after the floors), in the order they
# run: what was never measured first, and before anything competes with it the time the decode
# step's compile needs (the graphs check compiles it: 1-2.5 min cold on a GPU host; the step part
# then loads it from the shared inductor cache; a small share beyond its floor, so that where the
# budget is ample -- the CPU's rehearsal at 0.6B's shape -- a slower compile still finishes: at
# --budget-s 540 it adds ~10 s); train_cli, which compiles another graph (another vocabulary), last
PARTS = {"environment": (30, 0), "graphs": (120, 2), "steps": (240, 4), "eval": (0, 7),
         "logprobs_correctness": (0, 2), "logprobs_speed": (0, 2), "reference": (0, 6),
         "train_cli": (0, 7)}
JOB_WEIGHTS = {"static": 3, "vllm": 2, "hf": 2, "grpo": 1, "trl_hf": 2, "trl_vllm": 2}   # within a part
OPTIONAL = ["vllm", "liger_kernel", "trl", "datasets", "sentencepiece"]


# ----------------------------------------------------------------------------------------------
# The parent: parts in order, each job in its own process, the budget shared out
# ----------------------------------------------------------------------------------------------

def jobs_of(part: str, device: str) -> list[str]:
    """The processes a part runs: one per rollout engine for steps, TRL's with and without vLLM."""
    import importlib.util
    vllm = device == "cuda" and importlib.util.find_spec("vllm") is not None
    if part == "steps":                       # the default engines
        return ["static"] + (["vllm"] if vllm else [])
    if part == "reference":                   # the yardsticks, measured before
        return ["hf", "grpo", "trl_hf"] + (["trl_vllm"] if vllm else [])
    return [part]


def run_suite(args) -> dict:
    out_json = os.path.join(args.out, f"gpu_suite_{args.name}.json")
    os.makedirs(args.out, exist_ok=True)
    result = {"command": " ".join(["python -m tools.gpu_suite", *args.argv]), "budget_s": args.budget_s,
              **{p: {"error": "not run: the budget was spent first"} for p in PARTS}}
    t0 = time.perf_counter()
    parts = [p for p in PARTS if not args.only or p in args.only or p == "environment"]
    # every child's inductor cache: --compile-cache wins over the environment, since inductor writes
    # its default directory into os.environ of any process that has compiled (and so of its children)
    if args.compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.compile_cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="gpu_suite_inductor_"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    result["compile_cache"] = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    for i, part in enumerate(parts):
        left = args.budget_s - (time.perf_counter() - t0)
        floors = sum(PARTS[p][0] for p in parts[i + 1:])          # kept for the parts after it
        weights = sum(PARTS[p][1] for p in parts[i:]) or 1
        share = min(left, PARTS[part][0] + max(0.0, left - floors - PARTS[part][0]) * PARTS[part][1] / weights)
        if part == "environment":             # always runs
            share = PARTS[part][0]
        jobs = jobs_of(part, args.device)
        record, part_start = {}, time.perf_counter()
        for j, job in enumerate(jobs):
            weights = [JOB_WEIGHTS.get(x, 1) for x in jobs[j:]]
            limit = (share - (time.perf_counter() - part_start)) * weights[0] / sum(weights)
            if limit < 5 and part != "environment":
                record[job] = {"error": f"not run: {limit:.0f} s of the budget left for it"}
                continue
            print(f"[gpu_suite] {part}/{job}: up to {limit:.0f} s", flush=True)
            record[job] = run_job(part, job, limit, args)
            status = record[job].get("error", "done")
            print(f"[gpu_suite] {part}/{job}: {status} ({record[job]['time_s']:.0f} s)", flush=True)
            result[part] = record[part] if jobs == [part] else dict(record)
            result["wall_s"] = time.perf_counter() - t0
            save(result, out_json)
    result["wall_s"] = time.perf_counter() - t0
    save(result, out_json)
    print(f"[gpu_suite] {result['wall_s']:.0f} s; wrote {out_json} and its .md")
    return result


def run_job(part: str, job: str, limit: float, args) -> dict:
    """One job in a new process (and process group, so that a timeout ends its children too);
    whatever it reported before a crash or the time limit is kept, with the error beside it."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    spec = {"part": part, "job": job, "device": args.device, "shape": args.model_shape,
            "set": args.set, "n": args.n, "out": path}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tools.gpu_suite", "_job", json.dumps(spec)],
                            cwd=ROOT, start_new_session=True)
    try:
        code, error = proc.wait(timeout=limit), None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code, error = None, f"timed out after {limit:.0f} s"
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        record = {}
    finally:
        os.remove(path) if os.path.exists(path) else None
    if error or (code and "error" not in record):
        record["error"] = error or f"exited with code {code} (its output is above)"
    record.update(time_s=time.perf_counter() - t0, limit_s=limit)
    return record


def save(result: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    try:
        md = markdown(result)
    except Exception as e:   # the JSON is what matters; a formatting slip must not end the suite
        md = f"(the markdown could not be built: {type(e).__name__}: {e}; the JSON holds every figure)"
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(md + "\n")


# ----------------------------------------------------------------------------------------------
# The child: one job, its figures reported as they come
# ----------------------------------------------------------------------------------------------

def job_main(spec: dict) -> None:
    def report(record: dict) -> None:           # atomically: the parent may read it any time
        with open(spec["out"] + ".tmp", "w") as f:
            json.dump(record, f, indent=1, default=str)
        os.replace(spec["out"] + ".tmp", spec["out"])
    try:
        report(run_part(spec, report))
    except BaseException as e:                  # recorded, then the process ends with an error
        report({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})
        traceback.print_exc()
        sys.exit(1)


def run_part(spec: dict, report) -> dict:
    import torch

    from tools import bench
    from tools.shapes import QWEN3_H, QWEN3_V
    device, shape, part, job = torch.device(spec["device"]), spec["shape"], spec["part"], spec["job"]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the GPU suite needs a CUDA GPU (none is visible); --device cpu rehearses it")
    s = bench.shape_settings(shape, spec["set"])
    h, v = (QWEN3_H, QWEN3_V) if shape != "toy" else (32, 1000)
    if part == "environment":
        return environment(device)
    if part == "graphs":
        return bench.graphs_check(shape, device, s, report=report)
    if part == "_hang":            # the suite's own test: one figure reported, then no end
        report({"figure": 1.0})
        time.sleep(3600)
    if part == "logprobs_correctness":
        return bench.logprobs_correctness(device.type, 1024 if device.type == "cuda" else 64, h, v)
    if part == "steps" or (part == "reference" and job == "hf"):
        return bench.bench_step(shape, device, dataclasses.replace(s, rollout_engine=job),
                                warmup=1, repeats=1 if job == "hf" else 2, report=report)
    if part == "reference":
        if job == "grpo":
            best = jobs_of("steps", device.type)[0]
            return bench.bench_step(shape, device, dataclasses.replace(s, method="grpo", rollout_engine=best),
                                    warmup=1, repeats=1, report=report)
        return bench.bench_trl(shape, device, s, use_vllm=job == "trl_vllm")
    if part == "train_cli":
        return train_cli(device, shape, spec["set"], report)
    if part == "eval":
        return bench.bench_eval(shape, device, s, prompts=541, report=report)
    if part == "logprobs_speed":
        sizes = spec["n"] or ([8192, 32768] if device.type == "cuda" else [256])
        dtype = "bf16" if device.type == "cuda" else "fp32"
        return bench.bench_logprobs(device.type, dtype, sizes, 3, h, v, report=report)
    raise ValueError(f"unknown part {part!r}")


def environment(device) -> dict:
    import importlib.metadata

    import torch
    versions = {}
    for name in ["torch", "transformers", "triton", "tokenizers", "accelerate", *OPTIONAL]:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "versions": versions}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        env |= {"gpu": props.name, "gpu_memory_GiB": props.total_memory / 2**30,
                "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda}
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                            "--format=csv,noheader"], capture_output=True,
                                           text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = None
    print("  " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    return env


def train_cli(device, shape: str, overrides: list[str], report) -> dict:
    """`python train.py` end to end, as a user runs it: a Qwen3-format policy directory (Qwen3-0.6B's
    width and depth, the toy tokenizer so that rewards mean something, random weights), a
    POLAR-format discriminator, argilla- and IFEval-format rows; two steps with a checkpoint at
    each, evaluations before and after, then a resume for a third step."""
    import toy
    from tools import worlds
    from tools.shapes import QWEN3_06B
    world = tempfile.mkdtemp(prefix="gpu_suite_world_")
    full = {k: QWEN3_06B[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "num_key_value_heads", "head_dim")}
    t0 = time.perf_counter()
    worlds.write_qwen3_policy(f"{world}/policy", **(full if shape != "toy" else {}))
    worlds.write_polar_checkpoint(f"{world}/polar", fmt="bin")
    rows, evals = toy.train_eval_rows(0, n_train=200, n_eval=16)
    worlds.write_argilla_rows(f"{world}/train.jsonl", rows)
    worlds.write_ifeval_rows(f"{world}/eval.jsonl", evals)
    record = {"world_written_s": time.perf_counter() - t0, "model_shape": shape, "runs": []}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in (o.split("=", 1) for o in overrides)]
    base = [sys.executable, "train.py", "--model", f"{world}/policy", "--dataset", f"{world}/train.jsonl",
            "--eval-dataset", f"{world}/eval.jsonl", "--discriminator-model", f"{world}/polar",
            "--device", device.type, "--out", f"{world}/run", "--eval-limit", "16", "--save-every", "1",
            "--no-progress", *flags]
    for extra in (["--steps", "2"], ["--steps", "3", "--resume", "auto"]):
        t0 = time.perf_counter()
        res = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True)
        run = {"args": extra, "wall_s": time.perf_counter() - t0, "returncode": res.returncode,
               "output_tail": (res.stdout + res.stderr)[-1500:]}
        record["runs"].append(run)
        report(record)
        print(f"  train.py {' '.join(extra)}: exit {res.returncode}, {run['wall_s']:.1f} s", flush=True)
        if res.returncode:
            raise RuntimeError(f"train.py {' '.join(extra)} failed: "
                               f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    with open(f"{world}/run/metrics.jsonl") as f:
        record["metrics"] = [json.loads(line) for line in f]
    for tag in ("start", "final"):
        with open(f"{world}/run/eval_{tag}.json") as f:
            ev = json.load(f)
        record[f"eval_{tag}"] = {k: ev[k] for k in ("prompt_strict", "inst_strict", "n_prompts",
                                                    "truncated_frac")}
    record["checkpoints"] = sorted(os.listdir(f"{world}/run/checkpoints"))
    return record


# ----------------------------------------------------------------------------------------------
# The markdown, rebuilt from the JSON after every part
# ----------------------------------------------------------------------------------------------

def markdown(r: dict) -> str:
    from tools import bench
    env = r["environment"]
    where = env.get("gpu") or f"CPU ({env.get('machine')}, {env.get('cpus')} cores)" \
        if "error" not in env else "?"
    lines = [f"# GPU suite on {where}", "", f"`{r['command']}`: {r.get('wall_s', 0):.0f} s of a "
             f"{r['budget_s']:.0f} s budget.", ""]
    if "error" not in env:
        lines += ["## environment", "", ", ".join(f"{k} {v or 'not installed'}"
                                                  for k, v in env["versions"].items()) +
                  (f"; driver {env.get('driver')}, CUDA {env.get('cuda')}" if env.get("gpu") else ""), ""]
    for part in PARTS:
        if part == "environment":
            continue
        lines += [f"## {part}", ""]
        rec = r[part]
        if "error" in rec:
            lines += [f"failed or not run: {rec['error']}", ""]
            continue
        if part == "graphs":
            lines += ["| call | rows | answer tokens | cache (rows, slots) | compiled s | eager s | rows equal "
                      "| compiles | CUDA graphs (again) | skips | compactions |", "|---" * 11 + "|"]
            for c in rec.get("calls", []):
                lines.append(f"| {c['call']} | {c['rows']} | {c['answer_tokens']} | {c['cache']} | "
                             f"{_f(c['compiled_s'])} | {_f(c['eager_s'])} | {c['equal_rows']}/{c['rows']} | "
                             f"{c['compiles']} | {c['cuda_graphs']} ({c.get('cuda_graphs_recorded_again')}) | "
                             f"{c['cudagraph_skips']} | "
                             f"{c.get('compactions', '-')} |")
            notes = {bench.graphs_note(c, "cuda" if env.get("gpu") else "cpu") for c in rec.get("calls", [])}
            notes |= {"**THE KV CACHE WAS COPIED INTO THE GRAPHS** (its static marks lost)"
                      for c in rec.get("calls", []) if c.get("cache_copied")}
            lines += [n.strip() for n in notes if n]
        elif part == "logprobs_correctness":
            lines.append(bench.correctness_table(rec))
        elif part == "logprobs_speed":
            lines.append(bench.logprobs_table(rec))
        elif part == "steps":
            for job, step in rec.items():
                lines += [f"### {job}", "", bench.step_table(step) if "engine" in step else "",
                          f"error: {step['error']}" if "error" in step else "", ""]
        elif part == "reference":
            if "engine" in rec.get("hf", {}):
                lines += ["### hf", "", bench.step_table(rec["hf"]), ""]
            lines += ["| run | engine | warm-up step s | median step s | peak GiB (CUDA) | note |",
                      "|---|---|---|---|---|---|"]
            for job, t in rec.items():
                warm = (t.get("warmup") or [{}])[0].get("time/step", t.get("warmup_step_s"))
                peak = t.get("step_peak_GiB", t.get("peak_process_GiB"))    # ours: per step; TRL: the run's
                lines.append(f"| {job} | {t.get('engine', '-')} | {_f(warm)} | {_f(t.get('median_step_s'))} | "
                             f"{_f(peak)} | {t.get('error', '')} |")
        elif part == "train_cli":
            lines += [f"* train.py {' '.join(x['args'])}: exit {x['returncode']}, {x['wall_s']:.1f} s"
                      for x in rec.get("runs", [])]
            if "eval_final" in rec:
                lines.append(f"* evaluation before / after: {rec['eval_start']} / {rec['eval_final']}; "
                             f"steps logged {[m['step'] for m in rec['metrics']]}; checkpoints "
                             f"{rec['checkpoints']}")
        elif part == "eval":
            lines.append(f"{rec['prompts']} prompts x up to {rec['max_new_tokens']} tokens, engine "
                         f"{rec['engine']}: planned as {rec['calls']} call(s) of {rec['prompts_per_call']} "
                         f"prompts; a call of {rec['measured_prompts']} took {_f(rec.get('first_call_s'))} s "
                         f"the first time (first decode step {_f(rec.get('first_decode_step_s'))} s, "
                         f"{rec.get('compiles')} compile(s)), then {_f(rec.get('wall_s'))} s = "
                         f"{_f(rec.get('tokens_per_s'))} tokens/s; the evaluation: about "
                         f"{_f(rec.get('ifeval_estimate_s'))} s"
                         + bench.graphs_note(rec.get("graphs"), "cuda" if env.get("gpu") else "cpu"))
        lines.append("")
    return "\n".join(lines)


def _f(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_job":
        return job_main(json.loads(argv[1]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--model-shape", choices=["qwen3-0.6b", "toy"], default="qwen3-0.6b")
    p.add_argument("--budget-s", type=float, default=540,
                   help="seconds for the whole suite (540: one 10-minute call with room to start)")
    p.add_argument("--compile-cache", default=None, help="inductor's cache directory, shared by "
                   "every part (default: a new temporary one; pass one kept between calls)")
    p.add_argument("--out", default="results")
    p.add_argument("--name", default=None, help="file name suffix (default: the GPU's name, or cpu)")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="setting overrides")
    p.add_argument("--n", type=int, nargs="+", default=None, help="logprobs_speed's token counts")
    p.add_argument("--only", nargs="+", choices=list(PARTS), help="run these parts only")
    args = p.parse_args(argv)
    args.argv = argv
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("tools.gpu_suite needs a CUDA GPU (none is visible); "
                             "--device cpu --model-shape toy rehearses it here")
        args.name = args.name or torch.cuda.get_device_name(0).lower().replace("nvidia ", "").replace(" ", "-")
    args.name = args.name or "cpu"
    return run_suite(args)


if __name__ == "__main__":
    main()
