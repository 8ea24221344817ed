"""Memory of one real step: what it holds, measured per token on the CPU, and planned per GPU.

    python -m tools.memory measure --out results    # saved activations per token and layer at 0.6B's width
    python -m tools.memory plan --out results       # GiB per GPU for Qwen3-0.6B / 4B / 8B at 1-8 GPUs

Measured: the bytes autograd saves in the training forward (the log-probs of every token of one
sequence) at Qwen3-0.6B's real width (hidden 1,024, vocabulary 151,936) under bf16 autocast, with
and without activation checkpointing, with 2 and 4 layers at two sequence lengths -- so that the
per-layer cost of a token separates from the rest. Computed from those numbers and each model's
public shape: one step of the real run per GPU, data parallel or FSDP2 (parallel.py). Labelled as
such wherever they are shown; nothing here ran on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import parallel
from tools.shapes import QWEN3_06B, QWEN3_V


def saved_bytes(params, fn) -> int:
    """Bytes autograd saves for backward while fn() runs (parameters excluded)."""
    ptrs, total = {p.data_ptr() for p in params}, [0]

    def pack(t):
        if t.data_ptr() not in ptrs:
            total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def measure(lengths: tuple[int, ...] = (512, 1024)) -> dict:
    """Bytes autograd saves in the training forward (log-probs of every token of one sequence)
    at Qwen3-0.6B's width under bf16 autocast, with 2 and 4 layers at each sequence length: half
    the difference is what one layer costs, the rest is everything else (embedding, final norm,
    the log-prob rows, and the bf16 copy of the 151,936 x 1,024 head saved for backward)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from logprobs import sequence_logprobs

    def measure(layers: int, tokens: int, ckpt: bool) -> int:
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(Qwen3Config(**(QWEN3_06B | {"num_hidden_layers": layers})))
        model.train()
        if ckpt:
            parallel.enable_activation_checkpointing(model)
        ids = torch.randint(0, QWEN3_V, (1, tokens))
        mask = torch.ones_like(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return saved_bytes(model.parameters(),
                               lambda: sequence_logprobs(model, ids, mask, mask, 1.0).sum())

    out = {"hidden": QWEN3_06B["hidden_size"], "rows": []}
    for ckpt in (False, True):
        for t in lengths:
            m2, m4 = measure(2, t, ckpt), measure(4, t, ckpt)
            out["rows"].append({"checkpointing": ckpt, "tokens": t,
                                "per_token_per_layer": (m4 - m2) / (2 * t),
                                "rest": m2 - (m4 - m2), "measured_2_layers": m2,
                                "measured_4_layers": m4})
    return out


def measure_table(m: dict, rollouts: int = 64, tokens: int = 700, demos: int = 8,
                 demo_tokens: int = 700) -> str:
    """Measured costs, extrapolated to Qwen3-0.6B's 28 layers and one step of the real run:
    per layer, the cost per token at the longest measured sequence; everything else as a
    constant plus a cost per token, fitted from the two lengths."""
    n_tok = rollouts * tokens + demos * demo_tokens
    layers, params = QWEN3_06B["num_hidden_layers"], 596_049_920
    kv = 2 * layers * QWEN3_06B["num_key_value_heads"] * QWEN3_06B["head_dim"] * 2   # bf16 K and V
    lines = [f"Saved activations of the training forward at Qwen3-0.6B's width (hidden "
             f"{m['hidden']}, vocabulary {QWEN3_V}), bf16 autocast, measured on the CPU:", "",
             "| activation checkpointing | sequence tokens | per token per layer | everything else |",
             "|---|---|---|---|"]
    for r in m["rows"]:
        lines.append(f"| {'on' if r['checkpointing'] else 'off'} | {r['tokens']} | "
                     f"{r['per_token_per_layer'] / 1024:,.1f} KiB | {r['rest'] / 2**20:,.0f} MiB |")
    lines += ["", f"Extrapolated to one step of the real run ({n_tok:,} tokens: {rollouts} rollouts "
              f"and {demos} demonstrations of about {tokens} tokens, {layers} layers):", ""]
    for ckpt in (False, True):
        short, long = sorted((r for r in m["rows"] if r["checkpointing"] == ckpt),
                             key=lambda r: r["tokens"])
        per_token = (long["rest"] - short["rest"]) / (long["tokens"] - short["tokens"])
        constant = short["rest"] - per_token * short["tokens"]
        total = constant + n_tok * (per_token + layers * long["per_token_per_layer"])
        lines.append(f"* checkpointing {'on' if ckpt else 'off'}: {total / 2**30:.1f} GiB of saved "
                     f"activations ({constant / 2**20:.0f} MiB constant per log-prob call -- the "
                     f"bf16 copy of the head; a step makes two --, {per_token / 1024:.1f} KiB per "
                     "token outside the layers)")
    worst = max(r["per_token_per_layer"] for r in m["rows"] if not r["checkpointing"])
    lines += [f"* with checkpointing, backward recomputes one layer at a time: up to "
              f"{worst * n_tok / 2**30:.1f} GiB more while it runs (one layer's activations for "
              "the step's tokens; the CPU's attention path, an upper bound for a GPU's fused one)",
              "", "Computed (not measured): fp32 weights + gradients + AdamW state "
              f"{params * 16 / 2**30:.1f} GiB; POLAR-1.8B in bf16 {1.89e9 * 2 / 2**30:.1f} GiB; "
              f"KV cache {kv / 1024:.0f} KiB per token in bf16, {rollouts * tokens * kv / 2**30:.1f} "
              f"GiB for {rollouts} rollouts of {tokens} tokens (prompt + completion)."]
    return "\n".join(lines)


# Public configs of the Qwen3 students (hidden, layers, kv heads x head_dim, parameters).
QWEN3_SIZES = {"Qwen3-0.6B": (1024, 28, 8 * 128, 0.596e9), "Qwen3-4B": (2560, 36, 8 * 128, 4.02e9),
               "Qwen3-8B": (4096, 36, 8 * 128, 8.19e9)}


def plan(gpus=(1, 2, 4, 8), rollouts: int = 64, tokens: int = 700, demos: int = 8,
                recompute_per_hidden: float = 136.3 * 1024 / 1024) -> str:
    """GiB per GPU for one real step, COMPUTED (not measured) from the model's shape: training
    state (fp32 weights, gradients, AdamW: 16 bytes per parameter; divided by N under FSDP2),
    checkpointed activations (4 bytes x hidden per token per layer, as measured at 0.6B's width),
    one layer recomputed in backward (scaled from 0.6B's measured cost by the hidden size), the
    bf16 KV cache of this rank's rollouts, POLAR-1.8B in bf16. Under FSDP2 generation also holds
    the gathered fp32 weights (4 bytes per parameter)."""
    lines = ["| model | GPUs | data parallel: training | during generation | FSDP2: training | "
             "during generation |", "|---|---|---|---|---|---|"]
    polar = 1.89e9 * 2
    for name, (hidden, layers, kv, params) in QWEN3_SIZES.items():
        for n in gpus:
            tok = (rollouts + demos) * tokens / n                 # this rank's tokens
            acts = tok * layers * 4 * hidden + tok * recompute_per_hidden * hidden
            kv_cache = rollouts / n * tokens * 2 * layers * kv * 2
            for_mode = []
            for fsdp in (False, True):
                state = 16 * params / (n if fsdp else 1)
                gathered = 4 * params if fsdp else 0
                for_mode += [(state + acts + polar) / 2**30,
                             (state + gathered + kv_cache + polar) / 2**30]
            cells = [f"{x:.0f}" for x in for_mode]
            if n == 1:
                cells[2:] = ["—", "—"]          # FSDP2 shards across processes: none with one
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["measure", "plan"])
    p.add_argument("--out", default="bench_out", help="directory for JSON/markdown results")
    args = p.parse_args(argv)
    if args.what == "measure":
        result = measure()
        text = measure_table(result)
        name = "bench_memory_cpu"
    else:
        text = plan()
        result, name = {"table": text}, "memory_plan"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
