"""Train with UniAPL: alpha * L_SFT + (1 - alpha) * L_GRPO + lambda_adv * L_ADV, in every step.

    python train.py                                   # the embedded toy world, any CPU, minutes
    python train.py --method grpo --steps 200         # the same world, another preset
    python train.py --model Qwen/Qwen3-0.6B           # the real run, one CUDA GPU
    python train.py --method sft --out runs/sft && python train.py --model runs/sft/final --method grpo

The loop, top to bottom: load the policy, the data, the discriminator -> evaluate -> for each step
(mixed batch -> rollouts -> rewards -> discriminator -> losses -> one backward -> optimizer step ->
metrics, checkpoint) -> evaluate -> save. `unified_step` below is one step, written out in the
order the method runs; uniapl.py holds Algorithm 1 and the weighting of the terms.

Two worlds share every line of code. `--model toy` (the default) builds a tiny Qwen3 and the toy
task of toy.py; any other --model is a Hugging Face model (hub id or local directory) trained on
real instruction-following data with the real defaults (README, "The real run"). A run directory
holds config.json, metrics.jsonl (one line per step), eval_start.json / eval_final.json,
checkpoints/step-N (atomic; --resume continues exactly) and final/ (save_pretrained).

Simplifications, deliberately: one process, one device, no vLLM (generation uses HF generate with
the KV cache), no sequence packing, AdamW with warmup then a constant learning rate.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import random
import shutil
import sys
import time
import warnings

import numpy as np
import torch

import data
import eval as evaluation
import grpo
import sft
import toy
import uniapl
from discriminator import load_discriminator

# Defaults per world. Paper values are unknown (PAPER.md); README lists which of these are ours.
DEFAULTS = {
    "toy": dict(dataset="toy", eval_dataset="toy", learning_rate=1e-3, steps=300, warmup_steps=10,
                num_generations=8, rl_batch_size=4, sft_batch_size=8, max_completion_length=64,
                max_prompt_length=128, temperature=1.0, discriminator="lexical", eval_every=0,
                save_every=100, gradient_checkpointing=False, eval_limit=None),
    "real": dict(dataset="argilla/ifeval-like-data:filtered", eval_dataset="google/IFEval",
                 learning_rate=1e-6, steps=500, warmup_steps=10, num_generations=8,
                 rl_batch_size=8, sft_batch_size=8, max_completion_length=512,
                 max_prompt_length=512, temperature=1.0, discriminator="polar", eval_every=100,
                 save_every=100, gradient_checkpointing=True, eval_limit=None),
}


class NonFiniteError(RuntimeError):
    """A loss or gradient norm that is NaN/inf: the optimizer step is never taken."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def world_of(model: str) -> str:
    """'toy' for --model toy and for directories saved from toy runs, else 'real'."""
    if model == "toy":
        return "toy"
    marker = os.path.join(model, "uniapl.json")
    if os.path.isdir(model) and os.path.exists(marker):
        return json.load(open(marker)).get("world", "real")
    return "real"


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but CUDA is not available "
                         "(torch.cuda.is_available() is False); use --device cpu")
    return torch.device(name)


def autocast_for(device: torch.device):
    """A context factory: bf16 autocast on CUDA (fp32 master weights stay in the optimizer),
    a no-op on the CPU."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def load_policy(name: str, device: torch.device, seed: int = 0):
    """(model, tokenizer): a fresh toy model, a saved directory, or a hub id (clear offline error)."""
    if name == "toy":
        tokenizer = toy.build_tokenizer()
        return toy.build_model(tokenizer, seed=seed).to(device), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
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
# Checkpoints: atomic directories, everything needed for an exact resume
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
        torch.cuda.set_rng_state_all(state["cuda"])


def save_pretrained_atomic(model, tokenizer, path: str, extra: dict | None = None) -> None:
    """save_pretrained into a temporary directory, then rename: a crash leaves no half directory."""
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra or {}).items():
            if name.endswith(".json"):
                with open(os.path.join(tmp, name), "w") as f:
                    json.dump(obj, f, indent=1)
            else:
                torch.save(obj, os.path.join(tmp, name))
        if os.path.exists(path):
            old = f"{path}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise SystemExit(f"could not write {path} ({type(e).__name__}: {e}); any earlier "
                             "checkpoint is intact") from None
        raise


def save_checkpoint(out: str, step: int, model, tokenizer, optimizer, scheduler, sampler,
                    keep: int) -> str:
    ckpt_dir = os.path.join(out, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"step-{step:07d}")
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "sampler": sampler.state_dict(), "rng": rng_state()}
    save_pretrained_atomic(model, tokenizer, path, {"trainer_state.pt": state})
    for old in _checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    return path


def _checkpoints(ckpt_dir: str) -> list[str]:
    """Finished checkpoint directories, oldest first (step-N.tmp-* / .old-* are in-flight writes)."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(d for d in os.listdir(ckpt_dir) if d.startswith("step-") and "." not in d)


def find_checkpoint(resume: str, out: str) -> str:
    if resume != "auto":
        return resume
    ckpt_dir = os.path.join(out, "checkpoints")
    found = _checkpoints(ckpt_dir)
    if not found:
        raise SystemExit(f"--resume auto: no checkpoint in {ckpt_dir}")
    return os.path.join(ckpt_dir, found[-1])


def load_checkpoint(path: str, model, optimizer, scheduler, sampler) -> int:
    from safetensors.torch import load_file
    if not os.path.exists(os.path.join(path, "trainer_state.pt")):
        raise SystemExit(f"--resume: {path} is not a checkpoint (no trainer_state.pt)")
    weights = load_file(os.path.join(path, "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied Qwen3 heads are saved once; anything else missing is a real mismatch
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SystemExit(f"--resume: {path} does not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return state["step"]


# ----------------------------------------------------------------------------------------------
# One unified step
# ----------------------------------------------------------------------------------------------

class Timer:
    """Wall time per phase (synchronised on CUDA), reported as time/<phase> in the metrics."""

    def __init__(self, device):
        self.device, self.times = device, {}

    @contextlib.contextmanager
    def __call__(self, phase):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times[f"time/{phase}"] = self.times.get(f"time/{phase}", 0) + time.perf_counter() - t0


def check_finite(step: int, **terms) -> None:
    values = {k: float(v.detach()) if torch.is_tensor(v) else float(v)
              for k, v in terms.items() if v is not None}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteError(f"step {step}: non-finite {', '.join(f'{k} = {v}' for k, v in bad.items())}"
                             "; the optimizer step was not taken and the last checkpoint is intact")


def unified_step(step, model, tokenizer, batch, obj, args, optimizer, scheduler, disc=None,
                 ref_model=None) -> dict:
    """One UniAPL step on a mixed batch; returns its metrics. Raises NonFiniteError before
    touching the weights if a loss or the gradient norm is not finite."""
    sft_rows, rl_rows = batch
    device = next(model.parameters()).device
    timer = Timer(device)
    amp = autocast_for(device)
    metrics, G = {"step": step + 1}, args.num_generations

    # 1. Rollouts: G samples per prompt from the current policy (RL prompts, or demo prompts
    #    for a-sft), then the verifier reward and, if used, the discriminator score.
    rows = {"rl": rl_rows, "demo": sft_rows, "none": []}[obj.rollouts]
    rollouts = adv = coef = ref_logp = None
    if rows:
        with timer("generate"), amp():
            rollouts = grpo.generate(model, tokenizer, [r["prompt"] for r in rows], G,
                                     temperature=args.temperature,
                                     max_new_tokens=args.max_completion_length)
        with timer("reward"):
            r = grpo.rewards(rows, rollouts)                                     # [R]
        metrics.update(grpo.rollout_stats(r, rollouts))
        shaped = r
        if obj.uses_discriminator:
            with timer("discriminator"):
                d = disc.score([rows[i // G]["prompt"] for i in range(len(r))],
                               [rows[i // G]["response"] for i in range(len(r))],
                               rollouts.texts).float()                          # [R]
            coef = uniapl.adversarial_coefficient(d, G, clip=args.adv_coef_clip)
            metrics.update({f"adv/{k}": v for k, v in uniapl.discriminator_stats(d, r, coef).items()})
            if obj.adv_mode == "reward":     # ablation: shape the reward instead of a loss
                shaped, coef = r + obj.lambda_adv * d, None
        adv = grpo.group_advantages(shaped, G, scale=args.scale_rewards == "group").to(device)
        coef = coef.to(device) if coef is not None else None
        mask = rollouts.completion_mask.clone()                                  # [R, L]
        if args.mask_truncated:
            mask = mask * (~rollouts.truncated).long()[:, None]
        if ref_model is not None:
            with timer("forward"), torch.no_grad(), amp():
                ref_logp = grpo.completion_logprobs(ref_model, rollouts, args.temperature)
    demos = data.demo_batch(tokenizer, sft_rows, args.max_completion_length) if obj.alpha > 0 else None

    # 2. Losses and one backward pass per optimizer update (--num-iterations reuses the rollouts).
    old_logp = None
    for _ in range(args.num_iterations):
        l_sft = l_grpo = l_adv = None
        with timer("forward"), amp():
            if demos is not None:
                l_sft, s = sft.sft_loss(model, demos, args.logprobs_backend)
                metrics.update({"sft/nll": s["nll"], "sft/truncated": s["truncated"]})
            if rollouts is not None and (obj.uses_grpo or coef is not None):
                logp = grpo.completion_logprobs(model, rollouts, args.temperature,
                                                args.logprobs_backend)           # [R, L]
                old_logp = logp.detach() if old_logp is None else old_logp      # on-policy
                clip = dict(eps_low=args.epsilon, eps_high=args.epsilon_high, loss_type=args.loss_type)
                if obj.uses_grpo:
                    l_grpo, s = grpo.policy_loss(logp, old_logp, adv, mask, beta=args.beta,
                                                 ref_logp=ref_logp, **clip)
                    metrics.update({f"grpo/{k}": v for k, v in s.items()} | {"grpo/loss": float(l_grpo.detach())})
                if coef is not None:
                    l_adv, s = uniapl.adv_loss(logp, old_logp, coef, mask, **clip)
                    metrics.update({"adv/loss": float(l_adv.detach()), "adv/clip_frac": s["clip_frac"]})
            loss = uniapl.unified_loss(obj, l_sft, l_grpo, l_adv)
        check_finite(step + 1, loss=loss, l_sft=l_sft, l_grpo=l_grpo, l_adv=l_adv)
        with timer("backward"):
            loss.backward()
        with timer("optimizer"):
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                check_finite(step + 1, grad_norm=grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    metrics.update({"loss": float(loss.detach()), "grad_norm": float(grad_norm),
                    "lr": scheduler.get_last_lr()[0]} | timer.times)
    return metrics


# ----------------------------------------------------------------------------------------------
# The training run
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--model", default="toy", help="'toy', a local model directory, or a hub id")
    a("--method", default="uniapl", choices=list(uniapl.METHODS))
    a("--alpha", type=float, default=None, help="SFT weight (uniapl only; default 0.5)")
    a("--lambda-adv", type=float, default=None, help=f"L_ADV weight (default {uniapl.DEFAULT_LAMBDA_ADV})")
    a("--adv-mode", default="loss", choices=["loss", "reward"], help="separate loss, or reward shaping")
    a("--adv-coef-clip", type=float, default=uniapl.DEFAULT_COEF_CLIP, help="c in Algorithm 1")
    a("--discriminator", default=None, choices=["lexical", "embedding", "polar"])
    a("--discriminator-model", default=None, help="encoder / POLAR directory or hub id")
    a("--dataset", default=None, help="toy | hub id[:config] | local .jsonl/.parquet")
    a("--eval-dataset", default=None)
    a("--pool-split", default="shared", choices=["shared", "disjoint"],
      help="shared: every row can be a demonstration and an RL prompt; disjoint: halves")
    a("--skip-invalid-rows", action="store_true", help="skip (and report) bad rows instead of stopping")
    a("--teacher-accuracy", type=float, default=0.65, help="toy world: the scripted teacher's accuracy")
    a("--steps", type=int, default=None)
    a("--learning-rate", type=float, default=None)
    a("--warmup-steps", type=int, default=None)
    a("--weight-decay", type=float, default=0.0)
    a("--max-grad-norm", type=float, default=1.0)
    a("--sft-batch-size", type=int, default=None)
    a("--rl-batch-size", type=int, default=None)
    a("--num-generations", type=int, default=None, help="G: rollouts per prompt")
    a("--num-iterations", type=int, default=1, help="optimizer updates per batch of rollouts")
    a("--temperature", type=float, default=None)
    a("--max-completion-length", type=int, default=None)
    a("--max-prompt-length", type=int, default=None)
    a("--beta", type=float, default=0.0, help="KL weight (0: no reference model is loaded)")
    a("--epsilon", type=float, default=0.2)
    a("--epsilon-high", type=float, default=None, help="default: --epsilon")
    a("--scale-rewards", default="group", choices=["group", "none"])
    a("--loss-type", default="token", choices=["token", "sequence"])
    a("--mask-truncated", action="store_true", help="drop truncated completions from the loss")
    a("--logprobs-backend", default="auto", choices=["auto", "torch", "triton", "naive"])
    a("--gradient-checkpointing", default=None, action=argparse.BooleanOptionalAction)
    a("--eval-every", type=int, default=None, help="also evaluate every N steps (0: start and end)")
    a("--eval-limit", type=int, default=None, help="evaluate on the first N prompts only")
    a("--save-every", type=int, default=None)
    a("--save-total-limit", type=int, default=2, help="checkpoints kept")
    a("--resume", default=None, help="a checkpoint directory, or 'auto' (latest in --out)")
    a("--out", default=None, help="run directory (default runs/<method>-<timestamp>)")
    a("--device", default="auto")
    a("--seed", type=int, default=0)
    a("--no-progress", action="store_true")
    args = p.parse_args(argv)
    world = world_of(args.model)
    for k, v in DEFAULTS[world].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.epsilon_high is None:
        args.epsilon_high = args.epsilon
    if args.out is None:
        if args.resume == "auto":
            p.error("--resume auto needs --out (the run directory to resume)")
        args.out = os.path.join("runs", f"{args.method}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    args.world = world
    return args


def prepare_out(out: str, resuming: bool) -> None:
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"output directory {out!r} is not writable ({e.strerror}); choose "
                         "another with --out") from None
    if not resuming and os.path.exists(os.path.join(out, "metrics.jsonl")):
        raise SystemExit(f"{out} already holds a run; use --resume auto to continue it, or "
                         "another --out")


def main(argv=None) -> dict:
    args = parse_args(argv)
    obj = uniapl.resolve(args.method, args.alpha, args.lambda_adv, args.adv_mode)
    if args.save_total_limit < 1 or args.steps < 1:
        raise SystemExit("--save-total-limit and --steps must be at least 1")
    if obj.rollouts != "none" and args.num_generations < 2:
        raise SystemExit("--num-generations must be at least 2 (advantages are relative to the group)")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # our own progress bar is enough

    # --- Load: policy, data, reference (only if beta > 0), discriminator (only if used). ---
    model, tokenizer = load_policy(args.model, device, seed=args.seed)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    load = dict(skip_invalid=args.skip_invalid_rows, toy_seed=args.seed,
                teacher_accuracy=args.teacher_accuracy)
    train_rows = data.load_rows(args.dataset, "train", **load)
    eval_rows = data.load_rows(args.eval_dataset, "eval" if args.eval_dataset == "toy" else "train",
                               **load)[:args.eval_limit]
    data.check_prompt_lengths(train_rows, tokenizer, args.max_prompt_length, args.dataset)
    demos, prompts = train_rows, train_rows             # --pool-split shared (the default)
    if args.pool_split == "disjoint":
        demos, prompts = train_rows[:len(train_rows) // 2], train_rows[len(train_rows) // 2:]
    demos = data.require_responses(demos, args.dataset, args.method) if obj.needs_demos else []
    if obj.uses_discriminator and obj.rollouts == "rl":
        # L_ADV compares each rollout with the teacher's answer to its prompt: RL prompts need one.
        with_ref = data.require_responses(prompts, args.dataset, args.method)
        if len(with_ref) < len(prompts):
            print(f"[data] {len(prompts) - len(with_ref)} of {len(prompts)} RL prompts have no teacher "
                  "response (the discriminator's reference) and are not used as RL prompts")
        prompts = with_ref
    sampler = data.MixedSampler(demos, prompts, args.sft_batch_size if obj.alpha > 0 else 0,
                                args.rl_batch_size if obj.rollouts == "rl" else 0, args.seed)
    ref_model = None
    if args.beta > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    disc = load_discriminator(args.discriminator, args.discriminator_model, device) \
        if obj.uses_discriminator else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps)))

    # --- Output directory, config, resume. ---
    prepare_out(args.out, resuming=args.resume is not None)
    start = 0
    if args.resume:
        path = find_checkpoint(args.resume, args.out)
        start = load_checkpoint(path, model, optimizer, scheduler, sampler)
        metrics_path = os.path.join(args.out, "metrics.jsonl")
        if os.path.exists(metrics_path):   # drop lines written after that checkpoint
            kept = [line for line in open(metrics_path) if json.loads(line)["step"] <= start]
            data.write_jsonl([json.loads(line) for line in kept], metrics_path)
        print(f"resumed from {path} at step {start}")
    config = {k: v for k, v in vars(args).items()} | {"alpha": obj.alpha, "lambda_adv": obj.lambda_adv}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    amp = autocast_for(device)

    def run_eval(tag):
        res = evaluation.evaluate_model(model, tokenizer, eval_rows, autocast=amp,
                                        max_new_tokens=args.max_completion_length)
        with open(os.path.join(args.out, f"eval_{tag}.json"), "w") as f:
            json.dump(res, f, indent=1)
        return res

    # --- Evaluate before training (skipped when resuming: it was done). ---
    start_eval_path = os.path.join(args.out, "eval_start.json")
    if start == 0 or not os.path.exists(start_eval_path):
        before = run_eval("start")
    else:
        before = json.load(open(start_eval_path))
    print(f"[{args.method}] held-out IF accuracy before training: prompt-strict "
          f"{before['prompt_strict']:.3f}, inst-strict {before['inst_strict']:.3f} "
          f"({before['n_prompts']} prompts)")

    # --- Train. ---
    from tqdm import tqdm
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=args.method,
               disable=args.no_progress, dynamic_ncols=True)
    for step in bar:
        batch = sampler.next()
        metrics = unified_step(step, model, tokenizer, batch, obj, args, optimizer, scheduler,
                               disc, ref_model)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            res = run_eval(f"step{step + 1}")
            metrics.update({f"eval/{k}": res[k] for k in ("prompt_strict", "inst_strict",
                                                           "prompt_loose", "inst_loose")})
        with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
        bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("loss", "reward", "sft/nll") if k in metrics})
        if args.save_every and ((step + 1) % args.save_every == 0 or step + 1 == args.steps):
            save_checkpoint(args.out, step + 1, model, tokenizer, optimizer, scheduler, sampler,
                            args.save_total_limit)

    # --- Evaluate after training, save. ---
    after = run_eval("final")
    marker = {"world": args.world, "method": args.method, "steps": args.steps,
              "source_model": args.model}
    save_pretrained_atomic(model, tokenizer, os.path.join(args.out, "final"), {"uniapl.json": marker})
    teacher = evaluation.teacher_accuracy(eval_rows)
    summary = {"before": before["prompt_strict"], "after": after["prompt_strict"],
               "teacher": teacher.get("prompt_strict"), "out": args.out}
    print(f"[{args.method}] held-out IF accuracy (prompt-strict): {before['prompt_strict']:.3f} -> "
          f"{after['prompt_strict']:.3f}" + (f"  (teacher: {teacher['prompt_strict']:.3f})"
                                             if teacher else "")
          + f"; inst-strict {before['inst_strict']:.3f} -> {after['inst_strict']:.3f}. Run: {args.out}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, NonFiniteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
