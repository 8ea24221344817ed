"""Benchmarks: the fused log-probs (speed, memory, correctness), one UniAPL step, TRL beside it,
and evaluation throughput -- each a function the GPU suite (tools/gpu_suite.py) runs in a
process of its own.

    python -m tools.bench logprobs                 # CPU sizes; on a GPU machine, GPU sizes (bf16)
    python -m tools.bench logprobs --n 8192 32768 --device cuda
    python -m tools.bench correctness              # log-probs and both gradients against float64
    python -m tools.bench step                     # one unified step of the toy world, per phase
    python -m tools.bench step --model-shape qwen3-0.6b --set rollout_engine=static
    python -m tools.bench eval --model-shape qwen3-0.6b    # greedy answers of 1,280 tokens
    python -m tools.bench engines                  # hf, static, static + inductor on the CPU
    python -m tools.bench compaction --out results # finished rows dropped, a trained toy student
    ... --out results                              # writes the files RESULTS.md is built from
    python -m tools.gpu_suite                      # everything a lent GPU should measure, at once

With random weights a rollout almost never samples a stop token, so every rollout and every
evaluation answer runs to its length limit: steps are timed at their worst case.

How memory is measured. On CUDA: the allocator's peak (`max_memory_allocated`) after resetting
it, in one process. On the CPU every (variant, N, mode) of the log-prob benchmark runs in its own
process and we read the peak resident set size (`ru_maxrss`), since one variant's freed memory
would hide the next one's peak. "Extra peak" is that peak minus what was resident before the call
(inputs built in place), minus the bytes of the gradients of the inputs in forward+backward --
outputs every variant must produce. Time is the median of several repeats after one warm-up run,
synchronised on CUDA. Ratios are to the naive path measured in the same invocation; "of the
matmul floor" is the time the log-prob's matrix products alone would take at the matmul rate
measured in the same process (2 N H V FLOPs forward, three times that forward+backward).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository

# ----------------------------------------------------------------------------------------------
# logprobs: speed and memory against the naive path (and Liger Kernel where installed)
# ----------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _liger_logprobs(hidden, weight, targets, temperature):
    """Liger Kernel's fused linear cross-entropy with reduction='none' gives -log p per token."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    return -LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden / temperature, targets)


def matmul_tflops(device: str, dtype: str, n: int = 4096, repeats: int = 5) -> float:
    """The matrix-product rate of this device and dtype, measured: an n x n x n product."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    n = n if device == "cuda" else 1024
    a = torch.randn(n, n, dtype=dt, device=device)
    b = torch.randn(n, n, dtype=dt, device=device)
    for _ in range(2):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


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
        run()                                  # also the warm-up (Triton compiles here)
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
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError((res.stderr.strip().splitlines() or ["?"])[-1])
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:   # e.g. the naive path out of memory
        torch.cuda.empty_cache() if device == "cuda" else None
        return {"variant": variant, "n": n, "mode": mode, "error": str(e).splitlines()[0][:200]}


def bench_logprobs(device: str, dtype: str, sizes: list[int], repeats: int,
                   h: int = QWEN3_H, v: int = QWEN3_V, report=None) -> dict:
    """Every variant at every N, forward and forward+backward; `report(result)` after each row."""
    variants = ["naive", "torch"]
    if device == "cuda":
        variants.append("triton")
        try:
            import liger_kernel  # noqa: F401
            variants.append("liger")
        except ImportError:
            print("(Liger Kernel not installed: its column is skipped; pip install liger-kernel)")
    result = {"device": parallel.device_name(device), "dtype": dtype, "H": h, "V": v, "rows": [],
              "matmul_tflops": matmul_tflops(device, dtype)}
    for mode in ("fwd", "fwd+bwd"):
        for n in sizes:
            floor = 2 * n * h * v * (3 if mode == "fwd+bwd" else 1) / (result["matmul_tflops"] * 1e12)
            for variant in variants:
                row = _measure(variant, n, mode, device, dtype, repeats, h, v)
                if "error" not in row:
                    row["of_matmul_floor"] = floor / row["median_s"]
                result["rows"].append(row)
                print(f"  {variant:6s} N={n:6d} {mode:7s}: " + (
                    f"failed ({row['error']})" if "error" in row else
                    f"extra peak {row['extra_peak_bytes'] / 2**20:9.1f} MiB, "
                    f"median {row['median_s']:.4f} s ({row['of_matmul_floor']:.0%} of the matmul "
                    "floor)"), flush=True)
                if report:
                    report(result)
    return result


def logprobs_table(result: dict) -> str:
    rows = result["rows"]
    naive = {(r["n"], r["mode"]): r for r in rows if r["variant"] == "naive" and "error" not in r}
    lines = [f"token_logprobs at H={result['H']}, V={result['V']}, {result['dtype']}, on "
             f"{result['device']} (matmul rate measured: {result['matmul_tflops']:.1f} TFLOP/s)", "",
             "| mode | N | variant | extra peak MiB | x naive mem | median s | x naive time | "
             "of the matmul floor |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['n']} | {r['variant']} | failed: {r['error'][:60]} "
                         "| | | | |")
            continue
        b = naive.get((r["n"], r["mode"]))
        mem_ratio = (f"{r['extra_peak_bytes'] / b['extra_peak_bytes']:.3f}"
                     if b and b["extra_peak_bytes"] else "-")
        time_ratio = f"{r['median_s'] / b['median_s']:.2f}" if b else "-"
        lines.append(f"| {r['mode']} | {r['n']} | {r['variant']} | "
                     f"{r['extra_peak_bytes'] / 2**20:.1f} | {mem_ratio} | {r['median_s']:.4f} | "
                     f"{time_ratio} | {r['of_matmul_floor']:.0%} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# correctness: every log-prob path, values and both gradients, against float64 maths
# ----------------------------------------------------------------------------------------------

def logprobs_correctness(device: str, n: int = 1024, h: int = QWEN3_H, v: int = QWEN3_V) -> dict:
    """Max |log p - exact|, and the relative error of d/dhidden and d/dweight, per backend,
    dtype and temperature; exact = float64 maths on the same (rounded) operands."""
    backends = ["naive", "torch"] + (["triton"] if device == "cuda" and logprobs.triton else [])
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for temperature in (1.0, 0.7):
            torch.manual_seed(0)
            hidden = torch.randn(n, h, device=device).to(dtype)
            weight = (0.02 * torch.randn(v, h, device=device)).to(dtype)
            targets = torch.randint(0, v, (n,), device=device)
            g = torch.randn(n, device=device)                    # an arbitrary upstream gradient
            h64 = hidden.double().requires_grad_()
            w64 = weight.double().requires_grad_()
            exact = torch.log_softmax(h64 @ w64.T / temperature, -1).gather(1, targets[:, None])[:, 0]
            (exact * g.double()).sum().backward()
            for backend in backends:
                hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
                out = logprobs.token_logprobs(hh, ww, targets, temperature, backend=backend)
                (out * g).sum().backward()
                rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
                rows.append({"backend": backend, "dtype": str(dtype).removeprefix("torch."),
                             "temperature": temperature, "n": n, "V": v,
                             "logp_max_abs_error": float((out.double() - exact.detach()).abs().max()),
                             "grad_hidden_rel_error": rel(hh.grad, h64.grad),
                             "grad_weight_rel_error": rel(ww.grad, w64.grad)})
            del h64, w64, exact
    return {"device": parallel.device_name(device), "rows": rows}


def correctness_table(result: dict) -> str:
    lines = [f"log-probs against float64 on {result['device']}", "",
             "| backend | dtype | T | max abs error of log p | rel. error d/dhidden | rel. error d/dweight |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['dtype']} | {r['temperature']} | {r['logp_max_abs_error']:.2e} | "
              f"{r['grad_hidden_rel_error']:.2e} | {r['grad_weight_rel_error']:.2e} |"
              for r in result["rows"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# step: unified steps at a model shape, time and peak memory per phase
# ----------------------------------------------------------------------------------------------

def shaped_engine(policy, tokenizer, device, s: settings.Settings):
    """The rollout engine of `s`, as train.py builds it (vLLM reads the config from a directory)."""
    import tempfile

    import engines
    path = None
    if s.rollout_engine == "vllm":
        path = tempfile.mkdtemp(prefix="bench_engine_")
        policy.config.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return engines.make_engine(s.rollout_engine, device, model_path=path, seed=s.seed,
                                dtype=parallel.autocast_dtype(device, s.precision),
                                prompt_width=s.max_prompt_length,
                                max_model_len=s.max_prompt_length + max(s.max_completion_length,
                                                                        s.eval_max_new_tokens),
                                gpu_memory_utilization=s.vllm_gpu_memory_utilization)


def _peak_bytes(device) -> int:
    return (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def bench_step(shape: str, device: torch.device, s: settings.Settings, warmup: int = 1,
               repeats: int = 2, report=None) -> dict:
    """`warmup` steps (reported apart: compilation, the first CUDA graphs, allocator growth), then
    `repeats` steady ones; per step its phases' times and peaks (trackers.Meter) and the generated
    tokens per second of the generate phase. `report(result)` after every step."""
    import data
    import train
    import uniapl
    policy, tokenizer, rows, disc = shaped_world(shape, device, s)
    engine = shaped_engine(policy, tokenizer, device, s)
    engine.announce = lambda secs, name=engine.name: print(
        f"  {name}: the first decode step (the compile) took {secs:.1f} s", flush=True)
    sampler = data.MixedSampler(rows, rows, s.sft_batch_size, s.rl_batch_size, 0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=s.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    run = train.Run(tokenizer, uniapl.objective(s), optimizer, scheduler, engine, disc,
                    ctx=parallel.Context(device=device))
    result = {"device": parallel.device_name(device), "model_shape": shape,
              "params_M": sum(p.numel() for p in policy.parameters()) / 1e6, "method": s.method,
              "discriminator": s.discriminator, "precision": s.precision, "engine": engine.name,
              "rollouts": s.rl_batch_size * s.num_generations,
              "max_completion_length": s.max_completion_length, "demos": s.sft_batch_size,
              "warmup": [], "steps": []}
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        m, _ = train.unified_step(policy, sampler.next(), s, run, step=i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        m["time/step"] = time.perf_counter() - t0
        tokens = m.get("completion_len", 0) * result["rollouts"]
        m["generated_tokens"] = tokens
        m["generate_tokens_per_s"] = tokens / m["time/generate"] if tokens else 0.0
        result["warmup" if i < warmup else "steps"].append(m)
        result.update(summarise_steps(result["steps"]))
        print(f"  {engine.name} {s.method} step {i + 1} ({'warm-up' if i < warmup else 'steady'}): "
              f"{m['time/step']:.2f} s, generate {m.get('time/generate', 0):.2f} s "
              f"({m['generate_tokens_per_s']:.0f} tokens/s)", flush=True)
        result.update(first_decode_step_s=getattr(engine, "first_step_s", None), compiles=compiles(),
                      graphs=engine.graph_stats(device) if hasattr(engine, "graph_stats") else None)
        if report:
            report(result)
    del engine, policy, optimizer   # free the GPU for the next measurement
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def graphs_check(shape: str, device: torch.device, s: settings.Settings, report=None,
                 answer: int = 40) -> dict:
    """The CUDA graphs proven, not assumed: the compiled static engine (CUDA graphs on CUDA) and
    the same engine eager answer greedily the same prompts -- a training-shaped call (the step's
    rows x G), an evaluation of another row count and cache length, and the training call again
    (on its kept cache: no graph recorded again) -- and after each compiled call the counts:
    dynamo's compiles, CUDA graphs recorded, inductor's skips and their reasons. A call whose
    decode step ran without graphs on CUDA is flagged. Random weights' greedy answers never end,
    so a last call samples (one seed for both engines) with every 8th token id a stop: its rows
    end at scattered steps and the live ones are compacted onto views of the cache's first rows
    (every 8 tokens here)."""
    import static_engine
    policy, tokenizer, rows, _ = shaped_world(shape, device, s)
    dtype = parallel.autocast_dtype(device, s.precision)
    # on the CPU inductor rehearses the compiler the GPU runs (CUDA graphs apart)
    compiled = static_engine.StaticEngine(dtype, s.max_prompt_length,
                                          compile="auto" if device.type == "cuda" else {"backend": "inductor"})
    compiled.announce = lambda secs: print(f"  graphs: the first decode step (the compile) took {secs:.1f} s",
                                           flush=True)
    eager = static_engine.StaticEngine(dtype, s.max_prompt_length, compile=None)
    train = (rows * s.rl_batch_size)[:s.rl_batch_size]
    evals = (rows * 16)[:max(3, s.rl_batch_size + 3)]
    calls = [("training", train, s.num_generations, answer), ("evaluation", evals, 1, 2 * answer),
             ("training again", train, s.num_generations, answer),
             ("sampled, rows ending early", (rows * 16)[:16], 1, 2 * answer)]
    result = {"device": parallel.device_name(device), "model_shape": shape, "calls": []}
    before = (0, 0)                         # CUDA graphs recorded and inputs copied, so far
    for name, batch, G, new in calls:
        if name.startswith("sampled"):
            policy.generation_config.eos_token_id = list(range(0, len(tokenizer), 8))
            compiled.compact_every = eager.compact_every = 8
        answers = []
        for engine in (compiled, eager):
            t0 = time.perf_counter()
            torch.manual_seed(0)
            with parallel.autocast_for(device, s.precision)():
                ro = engine.generate(policy, tokenizer, batch, G, greedy=not name.startswith("sampled"),
                                     temperature=1.0, max_new_tokens=new)
            if device.type == "cuda":
                torch.cuda.synchronize()
            answers.append((ro.completion_ids, time.perf_counter() - t0))
        same = [bool(torch.equal(a, b)) for a, b in zip(answers[0][0], answers[1][0])] \
            if answers[0][0].shape == answers[1][0].shape else [False] * len(batch) * G
        stats = compiled.graph_stats(device)
        # inputs copied per graph this call recorded (a cache copied only into the graphs of
        # the compacted row views must not hide among the earlier calls' good ones)
        new_graphs = (stats["cuda_graphs"] or 0) - before[0]
        copied = (stats["copied_inputs_recorded"] - before[1]) / new_graphs if new_graphs > 0 else 0
        before = (stats["cuda_graphs"] or 0, stats["copied_inputs_recorded"])
        call = {"call": name, "rows": len(batch) * G, "answer_tokens": new, "cache": compiled.last_shape,
                "compiled_s": answers[0][1], "eager_s": answers[1][1], "equal_rows": sum(same),
                **stats, "without_graphs": device.type == "cuda" and (stats["cudagraph_skips"] > 0
                                                                       or stats["cuda_graphs"] == 0),
                # a cache copied into every graph (its static marks lost) doubles the step's bytes
                "cache_copied": copied >= 2 * policy.config.num_hidden_layers}
        result["calls"].append(call)
        print(f"  graphs: {name} ({call['rows']} rows x {new} tokens, cache {call['cache']}): compiled "
              f"{call['compiled_s']:.1f} s, eager {call['eager_s']:.1f} s, {sum(same)}/{len(same)} rows equal; "
              f"{stats['compiles']} compile(s), {stats['cuda_graphs']} CUDA graph(s) "
              f"({stats['cuda_graphs_recorded_again']} recorded again), "
              f"{stats['cudagraph_skips']} skip(s), {stats['compactions']} compaction(s)"
              + ("  ** THE KV CACHE WAS COPIED INTO THE GRAPHS **" if call["cache_copied"] else "")
              + ("  ** RAN WITHOUT CUDA GRAPHS **" if call["without_graphs"]
                                                      else ""), flush=True)
        if report:
            report(result)
    return result


def graphs_note(stats: dict | None, device_type: str) -> str:
    """The loud line a figure carries when its decode step ran without CUDA graphs on CUDA."""
    if not stats or device_type != "cuda":
        return ""
    if stats.get("cudagraph_skips") or stats.get("cuda_graphs") == 0:
        return (f" **WITHOUT CUDA GRAPHS** ({stats.get('cudagraph_skips')} skip(s): "
                f"{'; '.join(stats.get('cudagraph_skip_reasons') or []) or 'no graph recorded'})")
    return ""


def summarise_steps(steps: list[dict]) -> dict:
    """Medians over the steady steps: step time, tokens/s, each phase's time and peak."""
    if not steps:
        return {}
    phases = [k[5:] for k in steps[0] if k.startswith("time/") and k != "time/step"]
    return {"median_step_s": statistics.median(m["time/step"] for m in steps),
            "generate_tokens_per_s": statistics.median(m["generate_tokens_per_s"] for m in steps),
            "phase_s": {p: statistics.median(m.get(f"time/{p}", 0) for m in steps) for p in phases},
            "phase_peak_GiB": {p: max(m.get(f"mem/{p}", 0) for m in steps) for p in phases},
            "step_peak_GiB": max(m.get("mem/step", 0) for m in steps)}


def step_table(r: dict) -> str:
    lines = [f"one unified step ({r['method']}, engine {r['engine']}, precision {r['precision']}), "
             f"{r['model_shape']} shape ({r['params_M']:.2f} M parameters) on {r['device']}: "
             f"{r['rollouts']} rollouts of up to {r['max_completion_length']} tokens + {r['demos']} "
             f"demonstrations, discriminator {r['discriminator']}"]
    if r.get("warmup"):
        compile_s = r.get("first_decode_step_s")
        lines.append(f"warm-up step: {r['warmup'][0]['time/step']:.2f} s" + (
            f" (its first decode step{', which compiles,' if r.get('compiles') else ''} "
            f"{compile_s:.2f} s; {r.get('compiles')} compile(s) in the process)"
            if compile_s is not None else ""))
    note = graphs_note(r.get("graphs"), "cuda" if "CPU" not in r["device"] else "cpu")
    if note:
        lines.append(note)
    if "median_step_s" not in r:
        return "\n".join(lines + ["(no steady step finished)"])
    peak = f"; peak memory of the step {r['step_peak_GiB']:.2f} GiB" if r["step_peak_GiB"] else ""
    lines += [f"median steady step {r['median_step_s']:.2f} s ({len(r['steps'])} steps); generate "
              f"{r['generate_tokens_per_s']:.0f} tokens/s{peak}", "",
              "| phase | median s | share of step | peak GiB (CUDA) |", "|---|---|---|---|"]
    for p, t in r["phase_s"].items():
        mem = r["phase_peak_GiB"].get(p)
        lines.append(f"| {p} | {t:.3f} | {t / r['median_step_s']:.1%} | "
                     f"{f'{mem:.2f}' if mem else '-'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# TRL: its GRPOTrainer at the same settings (HF generate, or vLLM colocated), the yardstick
# ----------------------------------------------------------------------------------------------

def bench_trl(shape: str, device: torch.device, s: settings.Settings, use_vllm: bool = False,
              warmup: int = 1, repeats: int = 1) -> dict:
    """trl.GRPOTrainer on the same policy, prompts, batch (rl_batch_size prompts x G rollouts of
    up to max_completion_length tokens) and precision; the IFEval reward. vLLM in colocate mode
    with sleep mode off (TRL issue #5312: with it on, TRL samples from the base checkpoint)."""
    import tempfile

    import trl

    import ifeval
    from tools.trl_uniapl import trl_dataset
    policy, tokenizer, rows, _ = shaped_world(shape, device, s)
    path = tempfile.mkdtemp(prefix="bench_trl_")
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del policy
    args = trl.GRPOConfig(
        output_dir=os.path.join(path, "out"), report_to="none", save_strategy="no", logging_steps=1,
        max_steps=warmup + repeats, per_device_train_batch_size=s.rl_batch_size * s.num_generations,
        num_generations=s.num_generations, max_completion_length=s.max_completion_length,
        temperature=s.temperature, learning_rate=s.learning_rate, beta=s.beta, loss_type="dapo",
        use_cpu=device.type != "cuda", bf16=parallel.autocast_dtype(device, s.precision) is not None,
        gradient_checkpointing=s.gradient_checkpointing, use_vllm=use_vllm, vllm_mode="colocate",
        vllm_gpu_memory_utilization=s.vllm_gpu_memory_utilization, seed=s.seed)
    trainer = trl.GRPOTrainer(model=path, reward_funcs=[ifeval.fraction], args=args,
                              train_dataset=trl_dataset(rows), processing_class=tokenizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    steady = logs[warmup:] or logs
    step_s = statistics.median(h["step_time"] for h in steady)
    tokens = statistics.median(h["completions/mean_length"] for h in steady) * s.rl_batch_size * \
        s.num_generations
    return {"device": parallel.device_name(device), "model_shape": shape, "trl": trl.__version__,
            "method": "TRL GRPOTrainer", "engine": "vllm colocate" if use_vllm else "hf",
            "warmup_step_s": logs[0]["step_time"] if warmup else None,
            "median_step_s": step_s, "step_tokens_per_s": tokens / step_s,
            "peak_process_GiB": _peak_bytes(device) / 2**30}


# ----------------------------------------------------------------------------------------------
# eval: greedy evaluation throughput at IFEval's answer length
# ----------------------------------------------------------------------------------------------

def bench_eval(shape: str, device: torch.device, s: settings.Settings, prompts: int = 541,
               report=None) -> dict:
    """Greedy answers of up to eval_max_new_tokens, through the engine evaluation uses. For
    `static`, the engine's own plan for `prompts` prompts (IFEval: 541) says how many calls of
    how many prompts an evaluation makes: one call of that size is timed twice (the first
    includes the copy, the cache and the compile; its first decode step is reported apart), and
    the evaluation's time is the calls x the steady call. Other engines: one call of all
    `prompts`. On the CPU a call of four prompts stands in, its time scaled to the plan."""

    import eval
    policy, tokenizer, rows, _ = shaped_world(shape, device, s)
    engine = shaped_engine(policy, tokenizer, device, s)
    every = (rows * (prompts // len(rows) + 1))[:prompts]
    per_call, calls = len(every), 1
    if hasattr(engine, "plan"):
        engine.refresh(policy)
        plan = engine.plan(policy.config, tokenizer, every, 1, s.eval_max_new_tokens, device)
        per_call, calls = plan.per_call, plan.calls
    measured = per_call if device.type == "cuda" else min(per_call, 4)
    result = {"device": parallel.device_name(device), "model_shape": shape, "engine": engine.name,
              "prompts": prompts, "calls": calls, "prompts_per_call": per_call,
              "measured_prompts": measured, "max_new_tokens": s.eval_max_new_tokens}
    walls = []
    for i in range(2):
        t0 = time.perf_counter()
        texts, lengths = eval.generate_responses(
            policy, tokenizer, every[:measured], max_new_tokens=s.eval_max_new_tokens, engine=engine,
            autocast=parallel.autocast_for(device, s.precision))
        walls.append(time.perf_counter() - t0)
        print(f"  {engine.name} evaluation call {i + 1} ({measured} prompts): {walls[-1]:.1f} s",
              flush=True)
        result.update(first_call_s=walls[0], first_decode_step_s=getattr(engine, "first_step_s", None),
                      compiles=compiles(),
                      graphs=engine.graph_stats(device) if hasattr(engine, "graph_stats") else None)
        if report:
            report(result)
    result.update(wall_s=walls[1], generated_tokens=sum(lengths), tokens_per_s=sum(lengths) / walls[1],
                  ifeval_estimate_s=calls * walls[1] * per_call / measured)
    return result


def kv_plan(widths: list[int] | None = None, free_gib: float = 60.0, layers: int = 28) -> dict:
    """The static engine's costs a CPU can count, by its own plan, at Qwen3-0.6B's shape in bf16:
    the KV slots the decode steps read in an IFEval evaluation (541 prompts, answers to 1,280
    tokens, as random weights' run; calls sized for `free_gib` of free GPU memory) and in a
    training call (8 prompts x 8 rollouts x 512 tokens), before (256-slot spans, calls in the
    rows' order) and now (64-slot spans, shortest prompts first); and the decode step's guard
    nodes (dynamo's guard tree at `layers` layers: managers and leaf guards), checked before on
    every decode step and now on each call's first. `widths`: the prompts' lengths in tokens
    after the chat template (default: the rehearsal's, the toy's evaluation prompts under the
    0.6B-shape word tokenizer)."""
    import dataclasses

    from transformers import Qwen3Config

    import data
    import static_engine as se
    import toy
    from tools.shapes import QWEN3_06B, word_tokenizer
    config = Qwen3Config(**QWEN3_06B)
    if widths is None:
        rows = (toy.train_eval_rows(0, n_train=1, n_eval=100)[1] * 6)[:541]
        widths = data.encode_prompts(word_tokenizer(QWEN3_06B["vocab_size"]), [r["prompt"] for r in rows])[1] \
            .sum(1).tolist()
    per_row = se.cache_bytes_per_row(config, 512 + 1280, torch.bfloat16) + 16 * config.vocab_size
    result = {"prompts": len(widths), "widths": [min(widths), max(widths)], "free_gib": free_gib}
    for case, G, answer in (("evaluation", 1, 1280), ("training", 8, 512)):
        n = len(widths) if case == "evaluation" else 8
        rows_per_call = min(n * G, int(0.8 * free_gib * 2**30) // per_row)
        calls = -(-n // max(1, rows_per_call // G))
        length = se.round_up(512 + answer, 8)
        now = se.CallPlan(length, -(-n // calls), calls,
                          sorted(range(n), key=widths.__getitem__) if calls > 1 else list(range(n)))
        step = se.SPAN_STEP
        try:
            se.SPAN_STEP = 256
            before = se.planned_kv_slots(dataclasses.replace(now, order=list(range(n))), widths[:n], G, answer)
        finally:
            se.SPAN_STEP = step
        after = se.planned_kv_slots(now, widths[:n], G, answer)
        ideal = G * sum(w + t + 1 for w in widths[:n] for t in range(answer - 1))   # each row its own
        result[case] = {"calls": calls, "prompts_per_call": now.per_call, "rows": now.per_call * G,
                        "kv_slots_before": before, "kv_slots_after": after, "ratio": after / before,
                        "ideal_ratio": ideal / before, "decode_steps": calls * (answer - 1)}
    nodes = decode_guard_nodes(layers)
    result["guards"] = {"layers": layers, "nodes": nodes} | {
        f"{case}_nodes_checked_before": nodes * result[case]["decode_steps"] for case in ("evaluation", "training")
    } | {f"{case}_nodes_checked_after": nodes * result[case]["calls"] for case in ("evaluation", "training")}
    return result


def decode_guard_nodes(layers: int) -> int:
    """The guard tree dynamo builds for the static engine's decode step at `layers` layers of
    Qwen3 (its managers and leaf guards; width does not change it, so a narrow model stands in)."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list
    from transformers import Qwen3Config, Qwen3ForCausalLM

    import static_engine
    import toy
    tok = toy.build_tokenizer()
    config = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch._dynamo.reset()
    engine = static_engine.StaticEngine(prompt_width=64, compile={"backend": "eager"})
    engine.generate(Qwen3ForCausalLM(config), tok, toy.train_eval_rows(0, 2, 2)[1], 2, max_new_tokens=3)

    def count(manager) -> int:
        return 1 + len(manager.get_leaf_guards()) + sum(count(c) for c in manager.get_child_managers())
    entries = _debug_get_cache_entry_list(static_engine._decode.__code__)
    return sum(count(e.guard_manager.root) for e in entries)


def kv_plan_table(r: dict) -> str:
    lines = [f"The static engine's plan at Qwen3-0.6B's shape (bf16 KV cache, {r['free_gib']:g} GiB free "
             f"for an evaluation's calls), counted by its own arithmetic: KV slots the decode steps read "
             f"with every answer running to its limit, {r['prompts']} prompts {r['widths'][0]}-"
             f"{r['widths'][1]} tokens wide.", "",
             "| call | calls x rows | KV slots before (256-slot spans, rows' order) | now (64, shortest first) "
             "| now / before | each row its own span / before | guard nodes checked before | now |",
             "|---|---|---|---|---|---|---|---|"]
    g = r["guards"]
    for case in ("evaluation", "training"):
        c, checked = r[case], (g[f"{case}_nodes_checked_before"], g[f"{case}_nodes_checked_after"])
        lines.append(f"| {case} | {c['calls']} x {c['rows']} | {c['kv_slots_before']:,} | "
                     f"{c['kv_slots_after']:,} | {c['ratio']:.3f} | {c['ideal_ratio']:.3f} | {checked[0]:,} | "
                     f"{checked[1]:,} |")
    lines += ["", f"The decode step's guard tree at {g['layers']} layers: {g['nodes']:,} nodes (managers and leaf "
              "guards), checked before on every decode step, now on the first of each call."]
    return "\n".join(lines)


def bench_engines(s: settings.Settings, calls: int = 6) -> dict:
    """Issue 42's CPU question: which engine should `auto` pick for `python train.py`? At the toy
    shape (random weights: every rollout runs to its limit, the worst case), side by side in one
    process: `hf`, `static` eager and `static` with its decode step compiled by inductor, each
    making `calls` rollout calls of the default run's shape (rl_batch_size prompts x G, sampled)
    from the same seeds. The first call of each is reported apart (the copy, the cache, and for
    the compiled one its compile); the steady time is the median of the others. Every call's
    tokens are compared with hf's: only an engine whose answers are equal may be auto's choice."""
    import rollouts
    import static_engine
    device = torch.device("cpu")
    policy, tokenizer, rows, _ = shaped_world("toy", device, s)
    prompts = rows[:s.rl_batch_size]
    variants = {"hf": rollouts.HFEngine,
                "static": lambda: static_engine.StaticEngine(None, s.max_prompt_length, compile=None),
                "static, inductor": lambda: static_engine.StaticEngine(None, s.max_prompt_length,
                                                                        compile={"backend": "inductor"})}
    result = {"device": parallel.device_name(device), "threads": torch.get_num_threads(),
              "rollouts_per_call": len(prompts) * s.num_generations,
              "max_new_tokens": s.max_completion_length, "calls": calls, "engines": {}}
    reference = None
    for name, make in variants.items():
        engine, walls, ids = make(), [], []
        for i in range(calls):
            torch.manual_seed(1000 + i)
            t0 = time.perf_counter()
            ro = engine.generate(policy, tokenizer, prompts, s.num_generations, temperature=1.0,
                                 max_new_tokens=s.max_completion_length)
            walls.append(time.perf_counter() - t0)
            ids.append([ro.completion_ids[j][ro.completion_mask[j].bool()].tolist()
                        for j in range(len(ro.completion_ids))])
        reference = reference or ids
        same = sum(a == b for call, ref in zip(ids, reference) for a, b in zip(call, ref))
        r = {"first_call_s": walls[0], "steady_call_s": statistics.median(walls[1:]),
             "answers_equal_to_hf": same / sum(len(c) for c in reference)}
        result["engines"][name] = r
        print(f"  {name}: first call {r['first_call_s']:.2f} s, steady {r['steady_call_s']:.3f} s, "
              f"answers equal to hf {r['answers_equal_to_hf']:.3f}", flush=True)
    hf = result["engines"]["hf"]
    for r in result["engines"].values():
        r["steady_ratio_to_hf"] = r["steady_call_s"] / hf["steady_call_s"]
        saved = hf["steady_call_s"] - r["steady_call_s"]
        extra = r["first_call_s"] - r["steady_call_s"] - (hf["first_call_s"] - hf["steady_call_s"])
        r["calls_to_break_even"] = max(0.0, extra) / saved if saved > 0 else None
    return result


def bench_compaction(runs: str, prompts: int = 500, max_new_tokens: int = 128) -> dict:
    """Issue 42's finished-row compaction, where answers end as trained ones do: the toy's base
    student (seed 0, trained here if `runs` lacks it) answers the toy's evaluation prompts
    greedily, as an evaluation does, through `static` eager with compaction off and every 32 and
    8 tokens, side by side in one process. Reported: KV slots read (the engine's own count),
    the call's wall time (copy, prefill and decode), and whether every answer equals the
    uncompacted engine's. Random weights
    (kv-plan) run every answer to its limit, where compaction has nothing to drop."""
    import checkpoint
    import static_engine
    import toy
    from tools import reproduce
    device = torch.device("cpu")
    policy, tokenizer = checkpoint.load_policy(reproduce.base_model(0, runs, []), device)
    rows = toy.train_eval_rows(0, n_train=10, n_eval=prompts)[1]
    result = {"device": parallel.device_name(device), "threads": torch.get_num_threads(),
              "prompts": len(rows), "max_new_tokens": max_new_tokens, "variants": {}}
    reference = None
    for every in (0, 32, 8):
        engine = static_engine.StaticEngine(None, 512, compile=None, compact_every=every)
        t0 = time.perf_counter()
        ro = engine.generate(policy, tokenizer, rows, 1, greedy=True, max_new_tokens=max_new_tokens)
        wall = time.perf_counter() - t0
        reference = reference or ro
        lengths = ro.completion_mask.sum(1).float()
        r = {"kv_slots": engine.kv_slots, "wall_s": wall, "mean_answer_tokens": float(lengths.mean()),
             "truncated": float(ro.truncated.float().mean()),
             "answers_equal": ro.texts == reference.texts}
        result["variants"]["off" if not every else f"every {every}"] = r
        print(f"  compaction {every or 'off'}: {r['kv_slots']:,} KV slots, {wall:.1f} s, "
              f"answers equal {r['answers_equal']}", flush=True)
    off = result["variants"]["off"]
    for r in result["variants"].values():
        r["kv_ratio"], r["wall_ratio"] = r["kv_slots"] / off["kv_slots"], r["wall_s"] / off["wall_s"]
    return result


def compaction_table(r: dict) -> str:
    v = r["variants"]["off"]
    lines = [f"Finished rows compacted away, `static` eager on the CPU: the toy's base student (seed 0) "
             f"answers {r['prompts']} evaluation prompts greedily, up to {r['max_new_tokens']} tokens "
             f"(mean answer {v['mean_answer_tokens']:.1f} tokens, {v['truncated']:.1%} truncated), "
             f"one call, side by side in one process; {r['device']}, {r['threads']} threads.", "",
             "| compaction | KV slots read | / off | call wall (s) | / off | answers equal to off |",
             "|---|---|---|---|---|---|"]
    for name, e in r["variants"].items():
        lines.append(f"| {name} | {e['kv_slots']:,} | {e['kv_ratio']:.2f} | {e['wall_s']:.1f} | "
                     f"{e['wall_ratio']:.2f} | {'yes' if e['answers_equal'] else 'NO'} |")
    return "\n".join(lines)


def engines_table(r: dict) -> str:
    lines = [f"Rollout engines on the CPU, the toy shape, random weights ({r['rollouts_per_call']} "
             f"rollouts x {r['max_new_tokens']} tokens a call, {r['calls']} calls each, side by side "
             f"in one process; {r['device']}, {r['threads']} threads).", "",
             "| engine | first call (s) | steady call (s) | steady / hf | calls to repay the first | "
             "answers equal to hf |", "|---|---|---|---|---|---|"]
    for name, e in r["engines"].items():
        even = "-" if e["calls_to_break_even"] is None else f"{e['calls_to_break_even']:.0f}"
        lines.append(f"| {name} | {e['first_call_s']:.2f} | {e['steady_call_s']:.3f} | "
                     f"{e['steady_ratio_to_hf']:.2f} | {even} | {e['answers_equal_to_hf']:.3f} |")
    return "\n".join(lines)


def compiles() -> int:
    """How many graphs dynamo has compiled in this process (the decode step's count)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def shape_settings(shape: str, overrides: list[str]) -> settings.Settings:
    """The settings of the shape's world (toy or real), with NAME=VALUE overrides."""
    import dataclasses
    fields = {f.name: f for f in dataclasses.fields(settings.Settings)}
    values = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"tools.bench --set: no setting {name!r}")
        kind = fields[name].type.split(" ")[0]
        values[name] = {"int": int, "float": float, "bool": lambda x: x.lower() in ("1", "true")
                        }.get(kind, str)(value)
    return settings.Settings.for_world("toy" if shape == "toy" else "real", **values)


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
    p.add_argument("what", choices=["logprobs", "correctness", "step", "eval", "kv-plan", "engines",
                                          "compaction"])
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="logprobs (default: bf16 on cuda)")
    p.add_argument("--n", type=int, nargs="+", help="token counts for logprobs")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (logprobs 3, step 2)")
    p.add_argument("--out", default="bench_out", help="directory for JSON/markdown results")
    p.add_argument("--model-shape", choices=["toy", "qwen3-0.6b"], default="toy",
                   help="step and eval: the toy world's shape, or Qwen3-0.6B's (random weights)")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="override settings of the shape's world, e.g. --set rl_batch_size=2")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("tools.bench: --device cuda needs a CUDA GPU (none is visible)")
    s = shape_settings(args.model_shape, args.set)
    if args.what == "logprobs":
        dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
        sizes = args.n or ([8192, 32768] if device.type == "cuda" else [512, 1024, 2048, 4096])
        result = bench_logprobs(device.type, dtype, sizes, args.repeats or 3)
        md = logprobs_table(result)
    elif args.what == "correctness":
        result = logprobs_correctness(device.type, *(args.n or [])[:1])
        md = correctness_table(result)
    elif args.what == "step":
        result = bench_step(args.model_shape, device, s, repeats=args.repeats or 2)
        md = step_table(result)
    elif args.what == "kv-plan":
        result = kv_plan()
        md = kv_plan_table(result)
    elif args.what == "engines":
        result = bench_engines(s, args.repeats or 6)
        md = engines_table(result)
    elif args.what == "compaction":
        result = bench_compaction(os.path.join(args.out, "runs"))
        md = compaction_table(result)
    else:
        result = bench_eval(args.model_shape, device, s)
        md = json.dumps(result, indent=1)
    name = {"logprobs": f"bench_logprobs_{device.type}", "correctness": f"logprobs_correctness_{device.type}",
            "step": f"bench_step_{args.model_shape}_{device.type}", "eval": f"bench_eval_{device.type}",
            "kv-plan": "bench_kv_plan_cpu", "engines": "bench_engines_cpu",
            "compaction": "bench_compaction_cpu"}
    write(args.out, name[args.what], result, md)
    print("\n" + md)
    return result


if __name__ == "__main__":
    main()
