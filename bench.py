"""Benchmarks: the fused log-prob gathering, and one full UniAPL training step.

    python bench.py logprobs                 # CPU sizes; on a GPU machine, GPU sizes (bf16)
    python bench.py logprobs --n 8192 16384 --device cuda
    python bench.py step --model-shape toy   # one unified step, with the share of time per phase
    python bench.py step --model-shape qwen3-0.6b   # Qwen3-0.6B's real shape, random weights (GPU)
    python bench.py --suite gpu              # everything a lent GPU should measure, in one call

How memory is measured (honestly): every (variant, N, mode) runs in its own Python process, so
one variant's allocator caches cannot hide another's peak. On CUDA we read the allocator's peak
(`torch.cuda.max_memory_allocated`) after resetting it; on the CPU the process's peak resident set
size (`ru_maxrss`). "Extra peak" is that peak minus what was resident before the call (inputs
built in place, so building them leaves no higher earlier peak), minus the bytes of the gradients
of the inputs in the forward+backward mode -- those are outputs every variant must produce.
Time is the median of several repeats after one warm-up run, synchronised on CUDA. Ratios are to
the naive path measured in the same invocation on the same machine.
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

import dist
import logprobs
import settings

QWEN3_H, QWEN3_V = 1024, 151936  # Qwen3-0.6B's hidden size and vocabulary (its config.json)


# ----------------------------------------------------------------------------------------------
# logprobs: one measurement per process
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
    """Peak extra memory and median time of one variant; meant to run in a fresh process."""
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


def bench_logprobs(args) -> list[dict]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    sizes = args.n or ([8192, 16384, 32768] if device == "cuda" else [512, 1024, 2048, 4096])
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
                cmd = [sys.executable, os.path.abspath(__file__), "_one", variant, str(n), mode,
                       device, dtype, str(args.repeats)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    tail = (res.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"  {variant:6s} N={n:6d} {mode:7s}: failed ({tail})")
                    rows.append({"variant": variant, "n": n, "mode": mode, "error": tail})
                    continue
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {variant:6s} N={n:6d} {mode:7s}: extra peak "
                      f"{row['extra_peak_bytes'] / 2**20:9.1f} MiB, median {row['median_s']:.4f} s",
                      flush=True)
    table = logprobs_table(rows, dist.device_name(device), dtype)
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"bench_logprobs_{device}.json"), "w") as f:
        json.dump({"device": dist.device_name(device), "dtype": dtype, "H": QWEN3_H, "V": QWEN3_V,
                   "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, f"bench_logprobs_{device}.md"), "w") as f:
        f.write(table + "\n")
    return rows


def logprobs_table(rows, device: str, dtype: str) -> str:
    naive = {(r["n"], r["mode"]): r for r in rows if r["variant"] == "naive" and "error" not in r}
    lines = [f"token_logprobs at H={QWEN3_H}, V={QWEN3_V}, {dtype}, on {device}",
             "", "| mode | N | variant | extra peak MiB | x naive mem | median s | x naive time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['n']} | {r['variant']} | failed | | | |")
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
# step: one full unified step at a model shape, with the share of time per phase
# ----------------------------------------------------------------------------------------------

# Qwen3-0.6B's shape (its config.json) and POLAR-1.8B's (InternLM2-1.8B), random weights.
QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=True)
POLAR_18B = dict(vocab_size=92544, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=8, rms_norm_eps=1e-5,
                 rope_theta=1_000_000.0, max_position_embeddings=32768)


def random_polar(tokenizer, device):
    """A POLAR-1.8B-shaped scorer with random weights: times the discriminator honestly.

    Inputs are built with the toy tokenizer (ids wrap into POLAR's vocabulary), so their lengths
    match what POLAR's input string would be, give or take the tokenizer.
    """
    from transformers import LlamaConfig, LlamaModel

    import discriminator as D
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    polar = D.Polar.__new__(D.Polar)   # skip __init__: no files, random weights of the real shape
    with torch.device(device):
        polar.model = LlamaModel(LlamaConfig(**POLAR_18B)).to(dtype).eval().requires_grad_(False)
        polar.v_head = torch.nn.Linear(POLAR_18B["hidden_size"], 1, bias=False).to(dtype)
    polar.device, polar.batch_size = device, 8
    polar.tokenizer = type("Pad", (), {"pad_id": 0})()

    def score(prompts, references, candidates):
        ids = [tokenizer(f"{p}\n{r}<|reward|>{p}\n{c}", add_special_tokens=False)["input_ids"]
               for p, r, c in zip(prompts, references, candidates)]
        return polar.score_ids([[1] + [i % POLAR_18B["vocab_size"] for i in x] + [92527] for x in ids])
    polar.score = score
    return polar


def bench_step(args) -> dict:
    import data
    import toy
    import train
    import uniapl
    from discriminator import load_discriminator
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world = "toy" if args.model_shape == "toy" else "real"
    overrides = {k: getattr(args, k) for k in ("method", "num_generations", "rl_batch_size",
                                                "sft_batch_size", "max_completion_length",
                                                "logprobs_backend") if getattr(args, k) is not None}
    targs = settings.Settings.for_world(world, **overrides)    # the world's defaults otherwise
    tokenizer = toy.build_tokenizer()
    torch.manual_seed(0)
    if args.model_shape == "toy":
        model = toy.build_model(tokenizer).to(device)
    else:
        from transformers import Qwen3Config, Qwen3ForCausalLM
        cfg = Qwen3Config(**QWEN3_06B, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)   # fp32 master weights; bf16 autocast on CUDA
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if targs.gradient_checkpointing:
        dist.enable_activation_checkpointing(model)
    objective = uniapl.resolve(targs.method, targs.alpha, targs.lambda_adv, targs.adv_mode,
                               targs.adv_coef_clip)
    rows, _ = toy.train_eval_rows(0, n_train=max(64, 4 * targs.rl_batch_size), n_eval=1)
    sampler = data.MixedSampler(rows, rows, targs.sft_batch_size, targs.rl_batch_size, 0)
    if not objective.uses_discriminator:
        disc = None
    elif args.discriminator == "polar-shape":
        disc = random_polar(tokenizer, device)
    else:
        disc = load_discriminator(args.discriminator, None, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    step_settings = train.StepSettings.from_settings(targs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = []
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        m = train.unified_step(model, tokenizer, sampler.next(), objective, step_settings,
                               optimizer, scheduler, disc, None, i)
        m["time/total"] = time.perf_counter() - t0
        if i >= args.warmup:
            steps.append(m)
    phases = sorted(k for k in steps[0] if k.startswith("time/") and k != "time/total")
    total = statistics.median(s["time/total"] for s in steps)
    gen_tokens = statistics.median(s["completion_len"] * targs.rl_batch_size * targs.num_generations
                                   for s in steps) if "completion_len" in steps[0] else 0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {"device": dist.device_name(device.type), "model_shape": args.model_shape,
              "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
              "method": targs.method, "discriminator": args.discriminator,
              "rollouts": targs.rl_batch_size * targs.num_generations,
              "max_completion_length": targs.max_completion_length,
              "demos": targs.sft_batch_size, "median_step_s": total,
              "generated_tokens_per_step": gen_tokens, "generated_tokens_per_s": gen_tokens / total,
              "peak_memory_GiB": peak / 2**30,
              "share": {p[5:]: statistics.median(s.get(p, 0) for s in steps) / total for p in phases},
              "steps": steps}
    lines = [f"one unified step ({targs.method}), {args.model_shape} shape "
             f"({result['params_M']:.2f} M parameters) on {result['device']}: "
             f"{result['rollouts']} rollouts of up to {targs.max_completion_length} tokens + "
             f"{targs.sft_batch_size} demonstrations, discriminator {args.discriminator}",
             f"median step {total:.2f} s, {gen_tokens:.0f} generated tokens "
             f"({result['generated_tokens_per_s']:.0f} tokens/s), peak memory "
             f"{result['peak_memory_GiB']:.2f} GiB", "",
             "| phase | share of step time |", "|---|---|"]
    lines += [f"| {p} | {v:.1%} |" for p, v in result["share"].items()]
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    name = f"bench_step_{args.model_shape}_{device.type}"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return result


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":  # internal: one measurement in this fresh process
        variant, n, mode, device, dtype, repeats = argv[1:7]
        print(json.dumps(measure_one(variant, int(n), mode, device, dtype, int(repeats))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", choices=["logprobs", "step"], default="logprobs")
    p.add_argument("--suite", choices=["gpu"], help="run the GPU suite (logprobs + step)")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--dtype", choices=["fp32", "bf16"])
    p.add_argument("--n", type=int, nargs="+", help="token counts for logprobs")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (logprobs 3, step 2)")
    p.add_argument("--out", default="bench_out", help="directory for JSON/markdown results")
    s = p.add_argument_group("step")
    s.add_argument("--model-shape", choices=["toy", "qwen3-0.6b"], default="toy")
    s.add_argument("--method", default=None, help="default: the world's (uniapl)")
    s.add_argument("--discriminator", default=None, choices=["lexical", "polar-shape"],
                   help="default: polar-shape (random POLAR-1.8B) for qwen3-0.6b, lexical for toy")
    s.add_argument("--num-generations", type=int, default=None, help="default: the world's")
    s.add_argument("--rl-batch-size", type=int, default=None, help="default: the world's")
    s.add_argument("--sft-batch-size", type=int, default=None, help="default: the world's")
    s.add_argument("--max-completion-length", type=int, default=None, help="default: the world's")
    s.add_argument("--logprobs-backend", default=None)
    s.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    if (args.suite == "gpu" or args.device == "cuda") and not torch.cuda.is_available():
        raise SystemExit("bench.py: --suite gpu / --device cuda need a CUDA GPU (none is visible)")
    if args.suite == "gpu":   # everything a lent GPU should measure, in one call
        args.device = "cuda"
        args.repeats = args.repeats or 3
        bench_logprobs(args)
        args.model_shape, args.repeats = "qwen3-0.6b", 2
    if args.what == "logprobs" and not args.suite:
        args.repeats = args.repeats or 3
        bench_logprobs(args)
        return
    if args.what == "step" or args.suite:
        args.repeats = args.repeats or 2
        qwen = args.model_shape == "qwen3-0.6b"
        args.discriminator = args.discriminator or ("polar-shape" if qwen else "lexical")
        bench_step(args)


if __name__ == "__main__":
    main()
