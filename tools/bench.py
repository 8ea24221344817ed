"""Benchmarks: the fused log-prob gathering, one full UniAPL step, and evaluation throughput.

    python bench.py logprobs                 # CPU sizes; on a GPU machine, GPU sizes (bf16)
    python bench.py logprobs --n 8192 16384 --device cuda
    python bench.py step                     # one unified step of the toy world, share per phase
    python bench.py step --model-shape qwen3-0.6b   # Qwen3-0.6B's real shape, random weights
    python bench.py --suite gpu              # everything a lent GPU should measure, in one call
    ... --out results                        # writes the files README's results come from
    (memory of a real step, measured per token and planned per GPU: memory.py)

The GPU suite (no hub needed: random weights at the real shapes) measures, in one process:
log-probs at the dtype training feeds the head (bf16 rows under autocast) for the naive, chunked
torch, Triton (and Liger, if installed) paths; three UniAPL steps at the real run's batch
(8 prompts x G = 8 rollouts of up to 512 tokens + 8 demonstrations, a POLAR-1.8B-shaped
discriminator) with the time and peak memory of every phase; and greedy evaluation throughput
at IFEval's 1,280-token answers. It writes bench_gpu_suite.json and bench_gpu_suite.md.

With random weights a rollout almost never samples a stop token, so every rollout and every
evaluation answer runs to its length limit: the step is timed at its worst case.

How memory is measured (honestly). On CUDA: the allocator's peak (`max_memory_allocated`) after
resetting it, in one process (the caching allocator does not hide allocations from it). On the
CPU every (variant, N, mode) of the log-prob benchmark runs in its own process and we read the
peak resident set size (`ru_maxrss`), since one variant's freed memory would hide the next one's
peak. "Extra peak" is that peak minus what was resident before the call (inputs built in place),
minus the bytes of the gradients of the inputs in forward+backward -- outputs every variant must
produce. Time is the median of several repeats after one warm-up run, synchronised on CUDA.
Ratios are to the naive path measured in the same invocation on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import logprobs
import parallel
import settings
from tools.shapes import QWEN3_H, QWEN3_V, shaped_world

# ----------------------------------------------------------------------------------------------
# logprobs
# ----------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _liger_logprobs(hidden, weight, targets, temperature):
    """Liger Kernel's fused linear cross-entropy with reduction='none' gives -log p per token."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    return -LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden / temperature, targets)


def measure_one(variant: str, n: int, mode: str, device: str, dtype: str, repeats: int,
                h: int = QWEN3_H, v: int = QWEN3_V) -> dict:
    """Peak extra memory and median time of one variant (on the CPU: in a fresh process)."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    dev = torch.device(device)
    torch.manual_seed(0)
    # Built in place: no temporary larger than the tensor itself, so no hidden earlier peak.
    hidden = torch.empty(n, h, dtype=dt, device=dev).normal_()
    weight = torch.empty(v, h, dtype=dt, device=dev).normal_(std=0.02)
    targets = torch.randint(0, v, (n,), device=dev)
    backward = mode == "fwd+bwd"
    hidden.requires_grad_(backward)
    weight.requires_grad_(backward)
    if variant == "liger":
        fn = lambda: _liger_logprobs(hidden, weight, targets, 1.0)  # noqa: E731
    else:
        fn = lambda: logprobs.token_logprobs(hidden, weight, targets, 1.0, backend=variant)  # noqa: E731

    def run():
        hidden.grad = weight.grad = None
        out = fn()
        if backward:
            (out * 1.0).sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    grads_bytes = (n * h + v * h) * hidden.element_size() if backward else 0
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "n": n, "mode": mode, "device": device, "dtype": dtype,
            "extra_peak_bytes": max(0, peak - grads_bytes), "median_s": statistics.median(times),
            "times_s": times}


def _measure(variant, n, mode, device, dtype, repeats, h, v) -> dict:
    """CUDA: in this process (freeing everything between); CPU: in a fresh process (peak RSS)."""
    try:
        if device == "cuda":
            row = measure_one(variant, n, mode, device, dtype, repeats, h, v)
            torch.cuda.empty_cache()
            return row
        cmd = [sys.executable, "-m", "tools.bench", "_one", variant, str(n), mode, device,
               dtype, str(repeats), str(h), str(v)]
        res = subprocess.run(cmd, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if res.returncode != 0:
            raise RuntimeError((res.stderr.strip().splitlines() or ["?"])[-1])
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:   # e.g. the naive path out of memory
        torch.cuda.empty_cache() if device == "cuda" else None
        return {"variant": variant, "n": n, "mode": mode, "error": str(e).splitlines()[0][:200]}


def bench_logprobs(device: str, dtype: str, sizes: list[int], repeats: int,
                   h: int = QWEN3_H, v: int = QWEN3_V) -> dict:
    variants = ["naive", "torch"]
    if device == "cuda":
        variants.append("triton")
        try:
            import liger_kernel  # noqa: F401
            variants.append("liger")
        except ImportError:
            print("(Liger Kernel not installed: its column is skipped; pip install liger-kernel)")
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        for n in sizes:
            for variant in variants:
                row = _measure(variant, n, mode, device, dtype, repeats, h, v)
                rows.append(row)
                print(f"  {variant:6s} N={n:6d} {mode:7s}: " + (
                    f"failed ({row['error']})" if "error" in row else
                    f"extra peak {row['extra_peak_bytes'] / 2**20:9.1f} MiB, "
                    f"median {row['median_s']:.4f} s"), flush=True)
    return {"device": parallel.device_name(device), "dtype": dtype, "H": h, "V": v, "rows": rows}


def logprobs_table(result: dict) -> str:
    rows = result["rows"]
    naive = {(r["n"], r["mode"]): r for r in rows if r["variant"] == "naive" and "error" not in r}
    lines = [f"token_logprobs at H={result['H']}, V={result['V']}, {result['dtype']}, on "
             f"{result['device']}", "",
             "| mode | N | variant | extra peak MiB | x naive mem | median s | x naive time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['n']} | {r['variant']} | failed: {r['error'][:60]} "
                         "| | | |")
            continue
        b = naive.get((r["n"], r["mode"]))
        mem_ratio = (f"{r['extra_peak_bytes'] / b['extra_peak_bytes']:.3f}"
                     if b and b["extra_peak_bytes"] else "-")
        time_ratio = f"{r['median_s'] / b['median_s']:.2f}" if b else "-"
        lines.append(f"| {r['mode']} | {r['n']} | {r['variant']} | "
                     f"{r['extra_peak_bytes'] / 2**20:.1f} | {mem_ratio} | {r['median_s']:.4f} | "
                     f"{time_ratio} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# step: unified steps at a model shape, time and peak memory per phase
# ----------------------------------------------------------------------------------------------

def shaped_engine(policy, tokenizer, device, s: settings.Settings):
    """The rollout engine of `s`, as train.py builds it (vLLM reads the config from a directory)."""
    import tempfile

    import rollouts
    path = None
    if s.rollout_engine in ("vllm", "auto") and device.type == "cuda":
        path = tempfile.mkdtemp(prefix="bench_engine_")
        policy.config.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return rollouts.make_engine(s.rollout_engine, device, model_path=path, seed=s.seed,
                                dtype=parallel.autocast_dtype(device, s.precision),
                                prompt_width=s.max_prompt_length,
                                max_model_len=s.max_prompt_length + max(s.max_completion_length,
                                                                        s.eval_max_new_tokens),
                                gpu_memory_utilization=s.vllm_gpu_memory_utilization)


def bench_step(shape: str, device: torch.device, s: settings.Settings, warmup: int = 1,
               repeats: int = 2) -> dict:
    import data
    import train
    import uniapl
    policy, tokenizer, rows, disc = shaped_world(shape, device, s)
    engine = shaped_engine(policy, tokenizer, device, s)
    sampler = data.MixedSampler(rows, rows, s.sft_batch_size, s.rl_batch_size, 0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=s.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    run = train.Run(tokenizer, uniapl.objective(s), optimizer, scheduler, engine, disc,
                    ctx=parallel.Context(device=device))
    steps = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        m, _ = train.unified_step(policy, sampler.next(), s, run, step=i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        m["time/total"] = time.perf_counter() - t0
        if i >= warmup:
            steps.append(m)
    total = statistics.median(m["time/total"] for m in steps)
    phases = [k[5:] for k in steps[0] if k.startswith("time/") and k != "time/total"]
    gen_tokens = statistics.median(m["completion_len"] * s.rl_batch_size * s.num_generations
                                   for m in steps) if "completion_len" in steps[0] else 0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params_m = sum(p.numel() for p in policy.parameters()) / 1e6
    del engine, policy, optimizer   # free the GPU for the next measurement
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"device": parallel.device_name(device), "model_shape": shape, "params_M": params_m,
            "method": s.method, "discriminator": s.discriminator, "precision": s.precision,
            "engine": s.rollout_engine,
            "rollouts": s.rl_batch_size * s.num_generations,
            "max_completion_length": s.max_completion_length, "demos": s.sft_batch_size,
            "median_step_s": total, "generated_tokens_per_step": gen_tokens,
            "generated_tokens_per_s": gen_tokens / total, "peak_memory_GiB": peak / 2**30,
            "phase_s": {p: statistics.median(m.get(f"time/{p}", 0) for m in steps) for p in phases},
            "phase_peak_GiB": {p: max(m.get(f"mem/{p}", 0) for m in steps) for p in phases},
            "steps": steps}


def step_table(r: dict) -> str:
    lines = [f"one unified step ({r['method']}, engine {r['engine']}, precision {r['precision']}), "
             f"{r['model_shape']} "
             f"shape ({r['params_M']:.2f} M parameters) on {r['device']}: {r['rollouts']} rollouts "
             f"of up to {r['max_completion_length']} tokens + {r['demos']} demonstrations, "
             f"discriminator {r['discriminator']}",
             f"median step {r['median_step_s']:.2f} s, {r['generated_tokens_per_step']:.0f} "
             f"generated tokens ({r['generated_tokens_per_s']:.0f} tokens/s), peak memory "
             f"{r['peak_memory_GiB']:.2f} GiB", "",
             "| phase | median s | share of step | peak GiB (CUDA) |", "|---|---|---|---|"]
    for p, t in r["phase_s"].items():
        mem = r["phase_peak_GiB"].get(p)
        lines.append(f"| {p} | {t:.3f} | {t / r['median_step_s']:.1%} | "
                     f"{f'{mem:.2f}' if mem else '-'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# TRL: its GRPOTrainer at the same settings (vLLM colocated where installed), the yardstick
# ----------------------------------------------------------------------------------------------

def bench_trl(shape: str, device: torch.device, s: settings.Settings, warmup: int = 1,
              repeats: int = 2) -> dict:
    """trl.GRPOTrainer on the same policy, prompts, batch (rl_batch_size prompts x G rollouts of
    up to max_completion_length tokens) and precision; the IFEval reward. vLLM in colocate mode
    with sleep mode off (TRL issue #5312: with it on, TRL samples from the base checkpoint)."""
    import importlib.util
    import tempfile

    import trl

    import ifeval
    from tools.trl_uniapl import trl_dataset
    policy, tokenizer, rows, _ = shaped_world(shape, device, s)
    path = tempfile.mkdtemp(prefix="bench_trl_")
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del policy
    vllm = device.type == "cuda" and importlib.util.find_spec("vllm") is not None
    args = trl.GRPOConfig(
        output_dir=os.path.join(path, "out"), report_to="none", save_strategy="no", logging_steps=1,
        max_steps=warmup + repeats, per_device_train_batch_size=s.rl_batch_size * s.num_generations,
        num_generations=s.num_generations, max_completion_length=s.max_completion_length,
        temperature=s.temperature, learning_rate=s.learning_rate, beta=s.beta, loss_type="dapo",
        use_cpu=device.type != "cuda", bf16=parallel.autocast_dtype(device, s.precision) is not None,
        gradient_checkpointing=s.gradient_checkpointing, use_vllm=vllm, vllm_mode="colocate",
        vllm_gpu_memory_utilization=s.vllm_gpu_memory_utilization, seed=s.seed)
    trainer = trl.GRPOTrainer(model=path, reward_funcs=[ifeval.trl_reward], args=args,
                              train_dataset=trl_dataset(rows), processing_class=tokenizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h][warmup:]
    step_s = statistics.median(h["step_time"] for h in logs)
    tokens = statistics.median(h["completions/mean_length"] for h in logs) * s.rl_batch_size * \
        s.num_generations
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"device": parallel.device_name(device), "model_shape": shape, "trl": trl.__version__,
            "method": "TRL GRPOTrainer", "engine": "vllm colocate" if vllm else "hf",
            "median_step_s": step_s, "generated_tokens_per_s": tokens / step_s,
            "peak_memory_GiB": peak / 2**30}


# ----------------------------------------------------------------------------------------------
# eval: greedy evaluation throughput at IFEval's answer length
# ----------------------------------------------------------------------------------------------

def bench_eval(shape: str, device: torch.device, s: settings.Settings, prompts: int = 64) -> dict:
    import evaluate
    policy, tokenizer, rows, _ = shaped_world(shape, device, s)
    engine = shaped_engine(policy, tokenizer, device, s)
    rows = (rows * (prompts // len(rows) + 1))[:prompts]
    t0 = time.perf_counter()
    res = evaluate.evaluate_model(policy, tokenizer, rows, max_new_tokens=s.eval_max_new_tokens,
                                  autocast=parallel.autocast_for(device, s.precision),
                                  engine=engine)
    wall = time.perf_counter() - t0
    lengths = [len(tokenizer(r["response"], add_special_tokens=False)["input_ids"])
               for r in res["responses"]]
    return {"device": parallel.device_name(device), "model_shape": shape, "engine": s.rollout_engine,
            "prompts": prompts,
            "max_new_tokens": s.eval_max_new_tokens, "wall_s": wall,
            "tokens_per_s": sum(lengths) / wall,
            "ifeval_541_estimate_s": wall * 541 / prompts}


# ----------------------------------------------------------------------------------------------
# The GPU suite, and the CLI
# ----------------------------------------------------------------------------------------------

def engines_here(device: torch.device) -> list[str]:
    import importlib.util
    if device.type != "cuda":
        return ["hf", "static"]
    return ["hf", "static"] + (["vllm"] if importlib.util.find_spec("vllm") else [])


def suite(device: torch.device, shape: str, sizes: list[int], out: str, s: settings.Settings,
          eval_prompts: int = 64, hv: tuple[int, int] = (QWEN3_H, QWEN3_V)) -> dict:
    """Log-probs at the training dtype; three real-shape uniapl steps with the best engine here,
    one with each other engine and one of the grpo preset; evaluation throughput."""
    import dataclasses
    t0 = time.perf_counter()
    lp = bench_logprobs(device.type, "bf16" if parallel.autocast_dtype(device, s.precision) else "fp32",
                        sizes, 3, *hv)
    engines = engines_here(device)
    best = dataclasses.replace(s, rollout_engine=engines[-1])
    step = bench_step(shape, device, best, warmup=1, repeats=3)
    print(step_table(step), flush=True)
    others = [bench_step(shape, device, dataclasses.replace(s, rollout_engine=e), 1, 1)
              for e in engines[:-1]]
    others.append(bench_step(shape, device, dataclasses.replace(best, method="grpo"), 1, 1))
    try:
        others.append(bench_trl(shape, device, best))
    except ImportError as e:
        print(f"(TRL comparison skipped: {e})")
    ev = bench_eval(shape, device, best, prompts=eval_prompts)
    result = {"device": parallel.device_name(device), "logprobs": lp, "step": step,
              "compared": others, "eval": ev, "suite_wall_s": time.perf_counter() - t0}
    compare = ["| method | engine | median step s | generated tokens/s | peak GiB |", "|---|---|---|---|---|"]
    compare += [f"| {r['method']} | {r['engine']} | {r['median_step_s']:.2f} | "
                f"{r['generated_tokens_per_s']:.0f} | {r['peak_memory_GiB']:.2f} |"
                for r in [step] + others]
    md = "\n\n".join([f"GPU suite on {result['device']} ({result['suite_wall_s']:.0f} s)",
                      logprobs_table(lp), step_table(step), "\n".join(compare),
                      f"greedy evaluation, {ev['prompts']} prompts x up to {ev['max_new_tokens']} "
                      f"tokens in one batch: {ev['wall_s']:.1f} s, {ev['tokens_per_s']:.0f} "
                      f"tokens/s (IFEval's 541 prompts: about {ev['ifeval_541_estimate_s']:.0f} s)"])
    write(out, "bench_gpu_suite", result, md)
    print(md)
    return result


def write(out: str, name: str, result: dict, md: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write(md + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":  # internal: one CPU measurement in this fresh process
        variant, n, mode, device, dtype, repeats, h, v = argv[1:9]
        print(json.dumps(measure_one(variant, int(n), mode, device, dtype, int(repeats), int(h),
                                     int(v))))
        return None
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", choices=["logprobs", "step", "eval"], default="logprobs")
    p.add_argument("--suite", choices=["gpu"], help="everything a lent GPU should measure")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="logprobs (default: bf16 on cuda)")
    p.add_argument("--n", type=int, nargs="+", help="token counts for logprobs")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (logprobs 3, step 2)")
    p.add_argument("--out", default="bench_out", help="directory for JSON/markdown results")
    p.add_argument("--model-shape", choices=["toy", "qwen3-0.6b"], default=None,
                   help="step/eval/suite (default: toy for step and eval, qwen3-0.6b for the suite)")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="override settings of the shape's world, e.g. --set rl_batch_size=2")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.py: --device cuda needs a CUDA GPU (none is visible)")
    if args.suite == "gpu" and args.device is None and device.type != "cuda":
        raise SystemExit("bench.py --suite gpu needs a CUDA GPU (none is visible); "
                         "--device cpu rehearses it here")
    shape = args.model_shape or ("qwen3-0.6b" if args.suite else "toy")
    s = shape_settings(shape, args.set)
    if args.suite:
        return suite(device, shape, args.n or [8192, 32768], args.out, s)
    if args.what == "logprobs":
        dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
        sizes = args.n or ([8192, 16384, 32768] if device.type == "cuda" else [512, 1024, 2048, 4096])
        result = bench_logprobs(device.type, dtype, sizes, args.repeats or 3)
        write(args.out, f"bench_logprobs_{device.type}", result, logprobs_table(result))
        print("\n" + logprobs_table(result))
        return result
    if args.what == "step":
        result = bench_step(shape, device, s, repeats=args.repeats or 2)
        write(args.out, f"bench_step_{shape}_{device.type}", result, step_table(result))
        print(step_table(result))
        return result
    result = bench_eval(shape, device, s)
    print(json.dumps(result, indent=1))
    return result


def shape_settings(shape: str, overrides: list[str]) -> settings.Settings:
    """The settings of the shape's world (toy or real), with NAME=VALUE overrides."""
    import dataclasses
    fields = {f.name: f for f in dataclasses.fields(settings.Settings)}
    values = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"bench.py --set: no setting {name!r}")
        kind = fields[name].type.split(" ")[0]
        values[name] = {"int": int, "float": float, "bool": lambda x: x.lower() in ("1", "true")
                        }.get(kind, str)(value)
    return settings.Settings.for_world("toy" if shape == "toy" else "real", **values)


if __name__ == "__main__":
    main()
