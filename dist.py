"""Where a run executes: the device, its precision, and (with torchrun) its processes.

Plumbing, kept out of train.py's way. One process on one device is the default; the mixed
precision is the usual one for training on a GPU: fp32 master weights (the optimizer's copy),
with matmuls under bf16 autocast on CUDA. On the CPU everything stays fp32.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch


def pick_device(name: str | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; a clear error when CUDA is asked for and absent."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but CUDA is not available "
                         "(torch.cuda.is_available() is False); use --device cpu")
    return torch.device(name)


def autocast_for(device: torch.device):
    """A context factory: bf16 autocast on CUDA, a no-op on the CPU."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def device_name(device: str | torch.device) -> str:
    """A human name for result tables: the GPU's model, or the CPU and its core count."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
