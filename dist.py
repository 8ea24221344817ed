"""Where a run executes: the device, its precision, and (with torchrun) its processes.

Plumbing, kept out of train.py's way. One process on one device is the default; the mixed
precision is the usual one for training on a GPU: fp32 master weights (the optimizer's copy),
with matmuls under bf16 autocast on CUDA. On the CPU everything stays fp32 unless --precision bf16
asks for autocast there too.
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


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of --precision: auto = bf16 on CUDA and none on the CPU; bf16 forces it
    (on the CPU too: that is how tests rehearse the GPU's numerics); fp32 turns it off."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r} (auto, bf16 or fp32)")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast_for(device: torch.device, precision: str = "auto"):
    """A context factory: autocast in `autocast_dtype(device, precision)`, or a no-op."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def device_name(device: str | torch.device) -> str:
    """A human name for result tables: the GPU's model, or the CPU and its core count."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them.

    transformers acts on it only while the module is in train mode. Its name changed in
    transformers 5 (activation_*); 4.x has only gradient_checkpointing_enable.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_activation_checkpointing(model) -> bool:
    return bool(getattr(model, "is_activation_checkpointing", None)
                or getattr(model, "is_gradient_checkpointing", False))
