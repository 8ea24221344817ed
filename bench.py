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
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

import logprobs

QWEN3_H, QWEN3_V = 1024, 151936  # Qwen3-0.6B hidden size and vocabulary (REFERENCE.md §4)


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


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


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
    table = logprobs_table(rows, device_name(device), dtype)
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"logprobs_{device}.json"), "w") as f:
        json.dump({"device": device_name(device), "dtype": dtype, "H": QWEN3_H, "V": QWEN3_V,
                   "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, f"logprobs_{device}.md"), "w") as f:
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
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench_out", help="directory for JSON/markdown results")
    args = p.parse_args(argv)
    if args.what == "logprobs" or args.suite:
        bench_logprobs(args)


if __name__ == "__main__":
    main()
