"""Choosing the rollout engine: `--rollout-engine auto | hf | static | vllm`.

Every engine has one method, `generate(model, tokenizer, rows, G, *, temperature, max_new_tokens,
greedy) -> rollouts.Rollouts`, and samples the same distribution (rollouts.py says how):

    hf      transformers' generate (rollouts.HFEngine): the reference; auto's choice on the CPU
            for short runs, under torchrun, and where no C++ compiler is found
    static  static_engine.StaticEngine: a bf16 copy, a static KV cache, CUDA graphs; auto's
            choice on CUDA without vLLM, and under torchrun; on the CPU, with its decode step
            compiled by inductor, auto's choice for runs of CPU_COMPILE_STEPS steps or more
    vllm    vllm_engine.VLLMEngine: in-process vLLM beside the policy; auto's choice on one GPU
            where vLLM is installed

This file sits above the engine files, so that imports flow one way: static_engine.py and the
vLLM adapter use rollouts.py's record and helpers, and rollouts.py knows neither of them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import TYPE_CHECKING

import torch

import parallel
import rollouts
import static_engine

if TYPE_CHECKING:
    import settings


# On the CPU the static engine's decode step compiled by inductor samples the same tokens as hf
# and a call takes 0.56x as long, after a compile of ~22 s that ~160 calls repay (`python -m
# tools.bench engines`, results/bench_engines_cpu.md): auto compiles for a run at least this long.
CPU_COMPILE_STEPS = 250


def make_engine(name: str, device, *, dtype=None, prompt_width: int = 512, distributed: bool = False,
                steps: int = 0, **vllm_args):
    """'auto' | 'hf' | 'static' | 'vllm' -> an engine. 'auto': on CUDA vllm if it is installed
    and this is one process, else static; on the CPU static compiled by inductor for a run of
    `steps` >= CPU_COMPILE_STEPS in one process where a C++ compiler is found, else hf. `dtype`:
    the sampling dtype of `static` (the autocast dtype of --precision; None: the policy's own)."""
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            name = "vllm" if importlib.util.find_spec("vllm") and not distributed else "static"
        elif steps >= CPU_COMPILE_STEPS and not distributed and cpp_compiler():
            # a compile that fails on this machine decodes eagerly: the same tokens, a line says so
            return static_engine.StaticEngine(dtype, prompt_width, compile={"backend": "inductor"},
                                              eager_if_compile_fails=True)
        else:
            name = "hf"
    if name == "hf":
        return rollouts.HFEngine()
    if name == "static":
        return static_engine.StaticEngine(dtype, prompt_width)
    if name != "vllm":
        raise ValueError(f"unknown rollout engine {name!r} (auto, hf, static or vllm)")
    if distributed:
        raise SystemExit("--rollout-engine vllm runs in one process; under torchrun use static")
    import vllm_engine
    return vllm_engine.make(device, **vllm_args)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU (its $CXX, else c++ or g++ or clang++)."""
    return next((shutil.which(c) for c in (os.environ.get("CXX"), "c++", "g++", "clang++")
                 if c and shutil.which(c)), None)


def engine_model_dir(policy, tokenizer, s: settings.Settings) -> str | None:
    """vLLM reads a model's config and tokenizer from a directory; its weights come from the
    policy's memory (load_format 'dummy'), so only those small files are written."""
    vllm = s.rollout_engine == "vllm" or (s.rollout_engine == "auto" and importlib.util.find_spec("vllm"))
    if not vllm or parallel.pick_device(s.device).type != "cuda":
        return None
    path = os.path.join(s.out, "rollout_engine_model")
    os.makedirs(path, exist_ok=True)
    policy.config.save_pretrained(path)
    policy.generation_config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
