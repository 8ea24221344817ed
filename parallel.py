"""Where a run executes: the device, its precision, and (with torchrun) its processes.

Plumbing, kept out of train.py's way. One process on one device is the default; the mixed
precision is the usual one for training on a GPU: fp32 master weights (the optimizer's copy),
with matmuls under bf16 autocast on CUDA. On the CPU everything stays fp32 unless --precision bf16
asks for autocast there too.

Several processes (`torchrun --nproc_per_node N train.py ...`: NCCL on CUDA, gloo on the CPU)
split each step's batch, in the explicit style of nanochat's chat_rl.py rather than a wrapper:

* each rank takes its share of the step's RL prompts -- whole groups of G rollouts stay on one
  rank, since advantages and the adversarial coefficient are relative to the group -- and of the
  demonstrations;
* every mean over tokens (or sequences) is divided by the *global* count, one all-reduce, so that
  the sum of the ranks' losses is the one-process loss of the global batch;
* gradients are summed across ranks before clipping: by one all-reduce of flat buckets (data
  parallel), or by FSDP2's reduce-scatter (`--fsdp`, parameters and optimizer state sharded).
  No DistributedDataParallel wrapper: its hooks only run through the wrapper's forward, and the
  log-prob path reads the head weight directly, which would give silently wrong gradients.

With N ranks the gradient is the one-process gradient of the same global batch (tests check it to
1e-6 on 2 CPU processes). Rollouts differ, since each rank samples its own with its own seed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
from dataclasses import dataclass, field

import torch
import torch.distributed as td


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


# ----------------------------------------------------------------------------------------------
# Several processes
# ----------------------------------------------------------------------------------------------

@dataclass
class Context:
    """This process's place in the run. The default is the one-process run: every collective
    below is then a no-op that returns its input."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a new tensor on this rank's device; the input is left alone)."""
        if not self.distributed:
            return x
        x = x.detach().to(self.device, copy=True)      # NCCL takes CUDA tensors only
        td.all_reduce(x)
        return x

    def mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and unbiased std of `x` [n] over every rank's values: one all-reduce of
        (sum, sum of squares, count), in float64 so the subtraction below loses nothing."""
        xd = x.detach().double()
        moments = torch.stack([xd.sum(), (xd * xd).sum(), xd.new_tensor(float(x.numel()))])
        total, squares, n = self.all_reduce_sum(moments).tolist()
        mean = total / n
        std = max(squares - n * mean * mean, 0.0) / max(n - 1, 1)
        return (torch.tensor(mean, dtype=x.dtype, device=x.device),
                torch.tensor(std ** 0.5, dtype=x.dtype, device=x.device))

    def all_reduce_grads(self, model, bucket_bytes: int = 64 * 2**20) -> None:
        """Sum every gradient across ranks (data parallel), in flat buckets of one dtype. FSDP2
        reduce-scatters its own, so nothing is done under --fsdp."""
        if not self.distributed or self.fsdp:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        bucket, size = [], 0
        for g in grads + [None]:
            if g is not None and (not bucket or (g.dtype == bucket[0].dtype and size < bucket_bytes)):
                bucket.append(g)
                size += g.numel() * g.element_size()
                continue
            if bucket:
                flat = torch.cat([b.reshape(-1) for b in bucket])
                td.all_reduce(flat)
                offset = 0
                for b in bucket:
                    b.copy_(flat[offset:offset + b.numel()].view_as(b))
                    offset += b.numel()
            bucket, size = ([g], g.numel() * g.element_size()) if g is not None else ([], 0)

    def reduce_metrics(self, metrics: dict, sums: tuple = (), maxes: tuple = ()) -> dict:
        """Rank means of the scalar metrics (each rank holds an equal share of the batch); the
        keys in `sums` are summed (losses already divided by global counts), `maxes` maxed."""
        if not self.distributed:
            return metrics
        keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"]
        # a metric only some ranks have (a correlation undefined on one rank's rollouts) is
        # averaged over the ranks that have it
        names = sorted(set().union(*self.gather_objects(keys)))
        # one [3, K] tensor on this rank's device (NCCL takes CUDA tensors only): sums, counts, maxima
        table = torch.tensor([[float(metrics.get(k, 0.0)) for k in names],
                              [float(k in metrics) for k in names],
                              [float(metrics.get(k, float("-inf"))) for k in names]],
                             dtype=torch.float64, device=self.device)
        td.all_reduce(table[:2])
        td.all_reduce(table[2], op=td.ReduceOp.MAX)
        values, counts, maxed = table.tolist()
        out = dict(metrics)
        for i, k in enumerate(names):
            out[k] = maxed[i] if k in maxes else values[i] if k in sums else values[i] / counts[i]
        return out

    def gather_objects(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:   # NCCL: on this rank's GPU (else it guesses, and can hang)
            td.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else td.barrier()


def setup(device_name: str = "auto", fsdp: bool = False) -> Context:
    """One process, or this rank of a torchrun launch (WORLD_SIZE > 1): join the process group
    (NCCL on CUDA, gloo on the CPU) with a timeout, so that a lost rank ends the run instead of
    hanging it forever; each rank uses the GPU of its LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        if fsdp:
            print("[parallel] --fsdp shards across processes: in one process it changes nothing "
                  "(launch with torchrun --nproc_per_node N)")
        return Context(device=device, fsdp=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not td.is_initialized():
        cuda = device.type == "cuda"
        td.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                              **({"device_id": device} if cuda else {}))
    return Context(rank=td.get_rank(), world_size=td.get_world_size(), device=device, fsdp=fsdp)


def shutdown() -> None:
    """Leave the process group before the interpreter exits. A gloo group left to the exit
    handlers can abort a rank that has finished its work ("terminate called without an active
    exception", seen once in 2-rank CPU tests)."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def shard(model, ctx: Context):
    """FSDP2: every decoder layer and then the whole model become FSDP units -- parameters,
    gradients and optimizer state split across ranks, gathered per unit for each forward. Gradients
    are summed, not averaged, since every loss is already divided by global counts."""
    from torch.distributed.fsdp import FSDPModule, fully_shard
    for layer in model.model.layers:
        fully_shard(layer, reshard_after_forward=True)
    # The root keeps its parameters (embeddings, final norm, the tied head) gathered after its
    # forward: the log-prob path reads the head weight right after it (logprobs.py).
    fully_shard(model, reshard_after_forward=False)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)   # gloo has no PREMUL_SUM
    return model


@contextlib.contextmanager
def gathered(model, ctx: Context):
    """Full parameters for a whole generate call under --fsdp (one all-gather per unit, not one
    per unit per decoded token), resharded afterwards; a no-op otherwise."""
    if not ctx.fsdp:
        yield model
        return
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:   # back to shard()'s policy: layers reshard after forward, the root not
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model)
