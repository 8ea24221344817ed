"""Models in and out: loading a policy, atomic checkpoints, and an exact resume.

Plumbing, kept out of train.py's way.

* `load_policy("toy" | directory | hub id)` -> (model, tokenizer); offline, a hub id fails with one
  line that says what to do.
* A checkpoint `OUT/checkpoints/step-N/` holds the model and tokenizer (`save_pretrained`) and
  `trainer_state.pt`: the step, the optimizer, the scheduler, the data sampler's position and
  every random state (Python, NumPy, torch, CUDA). Resuming from it continues with exactly the
  batches and random draws the run would have had (bit-identical on the CPU; a test checks it).
* Writes are atomic and durable: everything goes into a temporary directory, each file and the
  directory are flushed to disk (fsync), a manifest of every file's size and checksum is written
  last, and only then is the directory renamed (and its parent flushed). A crash, a SIGKILL, a
  power loss or a full disk never leaves a half-written checkpoint, and the previous one stays
  intact. `--resume auto` takes the newest checkpoint whose manifest matches its files, saying
  which ones it skipped and why.
* The run directory around the checkpoints (which to resume from, a run that already ended)
  is run_dir.py's; the stop signals that end a run with a checkpoint are preemption.py's.
* `trainer_state.pt` holds tensors and plain lists only, so it loads with `weights_only=True`
  (a pickle that cannot run code).
* With several processes (parallel.py) rank 0 writes and the others wait; every rank's random state
  is saved, so a resume needs the same number of processes (it says so otherwise). Under --fsdp
  the sharded weights and optimizer state are gathered to rank 0 first and written in the same
  format as one process writes: a checkpoint is an ordinary save_pretrained directory either way.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import warnings

import numpy as np
import torch
import torch.distributed.checkpoint.state_dict as dcp

import parallel
import toy


def load_policy(name: str, device: torch.device, seed: int = 0, dtype=torch.float32, toy_tokenizer=None):
    """(model, tokenizer): a fresh toy model, a saved directory, or a hub id (clear offline error).
    dtype: the weights' (fp32 for training: the master weights; bf16 where nothing trains).
    toy_tokenizer: builds the toy model's tokenizer (the task's; None: the instruction world's)."""
    if name == "toy":
        tokenizer = (toy_tokenizer or toy.build_tokenizer)()
        return toy.build_model(tokenizer, seed=seed).to(device, dtype), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as e:
        where = "directory" if os.path.isdir(name) else "hub id"
        raise SystemExit(
            f"cannot load model {name!r} ({where}): {str(e).splitlines()[0]} "
            "Without network access to the Hugging Face hub, use a local directory, or run the "
            "embedded toy world: python train.py --model toy") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if device.type != "cuda" and model.num_parameters() > 50_000_000:
        warnings.warn(f"training {name} ({model.num_parameters() / 1e6:.0f} M parameters) without "
                      "CUDA will be very slow; the toy world (--model toy) is made for CPUs",
                      stacklevel=2)
    return model.to(device), tokenizer


# ----------------------------------------------------------------------------------------------
# Random states
# ----------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """All random states as tensors and plain lists (loadable with weights_only=True)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU that was visible when it was saved; a resume may see fewer (another
        # node, CUDA_VISIBLE_DEVICES): set_rng_state_all would raise, so restore those that exist
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

def full_state(model, optimizer, ctx: parallel.Context) -> tuple[dict, dict | None]:
    """(model state dict, optimizer state dict), gathered to rank 0 under FSDP (collective: every
    rank calls it); the module's own otherwise."""
    if not ctx.fsdp:
        return model.state_dict(), optimizer.state_dict() if optimizer is not None else None
    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim = dcp.get_optimizer_state_dict(model, optimizer, options=options) if optimizer else None
    return dcp.get_model_state_dict(model, options=options), optim


MANIFEST = "manifest.json"


def save_pretrained_atomic(model, tokenizer, path: str, extra: dict | None = None,
                           state_dict: dict | None = None, needs_bytes: int = 0) -> None:
    """save_pretrained into a temporary directory, flushed to disk, a manifest written last, then
    renamed: a crash at any moment leaves no half directory under `path`.

    `extra` maps file names to objects: `*.json` is written as JSON, anything else with torch.save.
    `needs_bytes`: the expected size, for the message when the disk is full.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        name = type(model).__name__
        if name.startswith("FSDP"):   # FSDP2 renames the class; vLLM reads `architectures`
            cfg_path = os.path.join(tmp, "config.json")
            with open(cfg_path) as f:
                cfg = json.load(f)
            cfg["architectures"] = [name.removeprefix("FSDP")]
            with open(cfg_path, "w") as f:
                json.dump(cfg, f, indent=2)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra or {}).items():
            if name.endswith(".json"):
                with open(os.path.join(tmp, name), "w") as f:
                    json.dump(obj, f, indent=1)
            else:
                torch.save(obj, os.path.join(tmp, name))
        write_manifest(tmp)                     # every file flushed, then the manifest, last
        if os.path.exists(path):
            old = f"{path}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync(os.path.dirname(os.path.abspath(path)))   # the rename itself, on disk
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise SystemExit(f"could not write {path} ({type(e).__name__}: {e}){space_note(path, e, needs_bytes)}"
                             "; any earlier checkpoint is intact") from None
        raise


def _fsync(path: str) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: str) -> str:
    """sha256 of a file; of a .safetensors file, of its header (its tensors' names, dtypes,
    shapes and offsets) only, so that a multi-GB checkpoint is not read back whole. Its size is
    checked beside it, so truncated tensor data is still caught."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.endswith(".safetensors"):
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            # a damaged length (beyond the file) must not be read: hash what is there instead
            h.update(head + f.read(n if n <= os.path.getsize(path) - 8 else 0))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def write_manifest(directory: str) -> None:
    """Flush every file of `directory`, then write MANIFEST (each file's size and checksum) and
    flush it and the directory. A directory without a manifest that matches is not a checkpoint."""
    files = {}
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if os.path.isfile(full):
            _fsync(full)
            files[name] = {"bytes": os.path.getsize(full), "sha256": _digest(full)}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(directory)


def check_manifest(directory: str) -> str | None:
    """Why `directory` is not a whole checkpoint (a missing manifest, a missing, truncated or
    changed file), or None when every file matches its manifest."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            files = json.load(f)["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (its write never finished)"
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable {MANIFEST} ({e})"
    for name, want in files.items():
        full = os.path.join(directory, name)
        if not os.path.isfile(full):
            return f"{name} is missing"
        if os.path.getsize(full) != want["bytes"]:
            return f"{name} has {os.path.getsize(full):,} bytes, the manifest says {want['bytes']:,}"
        if _digest(full) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def space_note(path: str, error: OSError, needs_bytes: int) -> str:
    """For a full disk: how much a checkpoint needs and how much is free where it goes."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT) or not needs_bytes:
        return ""
    where = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(where).free if os.path.isdir(where) else 0
    return (f"; a checkpoint needs about {needs_bytes / 2**30:.2f} GiB and {free / 2**30:.2f} GiB "
            f"are free in {where}")


def state_bytes(*states) -> int:
    """The bytes of every tensor in nested dicts and lists (a state dict, an optimizer's)."""
    total = 0
    for s in states:
        if torch.is_tensor(s):
            total += s.numel() * s.element_size()
        elif isinstance(s, dict):
            total += state_bytes(*s.values())
        elif isinstance(s, (list, tuple)):
            total += state_bytes(*s)
    return total


def list_checkpoints(out: str) -> list[str]:
    """Finished checkpoint directories of a run, oldest first (`*.tmp-*`/`*.old-*` are in flight)."""
    ckpt_dir = os.path.join(out, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        return []
    return [os.path.join(ckpt_dir, d) for d in sorted(os.listdir(ckpt_dir))
            if d.startswith("step-") and "." not in d]


def save_checkpoint(out: str, step: int, model, tokenizer, optimizer, scheduler, sampler,
                    keep: int, ctx: parallel.Context | None = None) -> str:
    """OUT/checkpoints/step-N with everything an exact resume needs; keeps the last `keep`.
    Every rank calls it; rank 0 writes."""
    ctx = ctx or parallel.Context()
    path = os.path.join(out, "checkpoints", f"step-{step:07d}")
    rngs = ctx.gather_objects(rng_state())
    weights, optim = full_state(model, optimizer, ctx)
    problem = None
    if ctx.is_main:
        state = {"step": step, "optimizer": optim, "scheduler": scheduler.state_dict(),
                 "sampler": sampler.state_dict(), "world_size": ctx.world_size,
                 "rng": rngs[0] if ctx.world_size == 1 else rngs}
        try:
            metrics = os.path.join(out, "metrics.jsonl")   # the lines up to this step, on disk first
            if os.path.exists(metrics):
                _fsync(metrics)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_pretrained_atomic(model, tokenizer, path, {"trainer_state.pt": state},
                                   state_dict=weights if ctx.fsdp else None,
                                   needs_bytes=state_bytes(weights, optim))
        except (SystemExit, OSError) as e:      # a full disk: every rank stops with rank 0's line
            problem = str(e)
        else:
            for old in list_checkpoints(out)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    problem = ctx.broadcast_object(problem)          # (also the barrier: the write is done)
    if problem:
        raise SystemExit(problem)
    return path


# ----------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------

def tidy_checkpoints(out: str) -> None:
    """Clear what a process killed while saving left in OUT/checkpoints: a directory set aside to
    be replaced (`*.old-PID`) goes back where it was if its replacement never arrived; any other
    `*.tmp-PID` / `*.old-PID` directory is removed (rank 0, before anything is written)."""
    ckpt_dir = os.path.join(out, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        return
    for name in sorted(os.listdir(ckpt_dir)):
        full = os.path.join(ckpt_dir, name)
        base = name.split(".old-")[0]
        if ".old-" in name and not os.path.exists(os.path.join(ckpt_dir, base)):
            os.replace(full, os.path.join(ckpt_dir, base))
        elif ".tmp-" in name or ".old-" in name:
            shutil.rmtree(full, ignore_errors=True)


def find_checkpoint(resume: str, out: str, say=print) -> str | None:
    """--resume PATH as given (refused if its manifest does not match); --resume auto: the newest
    checkpoint in OUT whose files match their manifest (each one skipped is named, with why), or
    None when there is none: the run starts from the beginning."""
    if resume != "auto":
        why = check_manifest(resume) if os.path.isdir(resume) else None
        if why and os.path.exists(os.path.join(resume, MANIFEST)):
            raise SystemExit(f"--resume: {resume} is damaged: {why}")
        return resume
    for path in reversed(list_checkpoints(out)):
        why = check_manifest(path)
        if why is None:
            return path
        # set aside (kept for a person to look at), so that it no longer counts as a checkpoint
        # and --save-total-limit does not delete new ones to keep it
        os.replace(path, f"{path}.damaged")
        say(f"--resume auto: skipping {path} ({why}); set aside as {path}.damaged")
    return None


def load_weights(path: str) -> dict:
    """A save_pretrained directory's tensors: one model.safetensors, or the shards its index
    lists (transformers shards models above its max_shard_size, e.g. Qwen3-4B)."""
    from safetensors.torch import load_file
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        weights.update(load_file(os.path.join(path, name)))
    return weights


def load_checkpoint(path: str, model, optimizer, scheduler, sampler,
                    ctx: parallel.Context | None = None) -> int:
    """Restore weights, optimizer, scheduler, sampler position and RNG states; returns the step.
    Every rank reads the same files and takes its own random state."""
    ctx = ctx or parallel.Context()
    if not os.path.exists(os.path.join(path, "trainer_state.pt")):
        raise SystemExit(f"--resume: {path} is not a checkpoint (no trainer_state.pt)")
    # Onto the CPU, whatever device wrote it: a GPU-written checkpoint must load on a CPU-only
    # machine, and without map_location every rank would unpickle its optimizer state onto
    # cuda:0. optimizer.load_state_dict then moves each state tensor to its parameter's device.
    state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=True, map_location="cpu")
    written_by = state.get("world_size", 1)
    if written_by != ctx.world_size:
        raise SystemExit(f"--resume: {path} was written by {written_by} process(es) and this run "
                         f"has {ctx.world_size}; resume with torchrun --nproc_per_node "
                         f"{written_by} (each rank continues its own random stream)")
    weights = load_weights(path)
    if ctx.fsdp:
        options = dcp.StateDictOptions(full_state_dict=True, strict=False)
        missing, unexpected = dcp.set_model_state_dict(model, weights, options=options)
        dcp.set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(state["optimizer"])
    # tied Qwen3 heads are saved once; anything else missing is a real mismatch
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SystemExit(f"--resume: {path} does not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"][ctx.rank] if isinstance(state["rng"], list) else state["rng"])
    return state["step"]
