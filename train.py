"""Train with UniAPL: alpha * L_SFT + (1 - alpha) * L_GRPO + lambda_adv * L_ADV, in every step.

    python train.py                                   # the embedded toy world, any CPU, minutes
    python train.py --method grpo --steps 200         # the same world, another preset
    python train.py --model Qwen/Qwen3-0.6B           # the real run, one CUDA GPU
    python train.py --method sft --out runs/sft && python train.py --model runs/sft/final --method grpo
    python train.py --help                            # every setting, with its toy and real value

This file is the method, top to bottom: `unified_step` is one optimizer step written in the order
of the equation (rollouts -> reward -> discriminator and coefficient -> one block per loss term
-> one backward pass -> update), and `train` is the loop around it (load -> evaluate -> steps ->
evaluate -> save). Settings live in settings.py; loading and checkpoints in checkpoint.py; the
device, precision and torchrun processes in dist.py; rollout engines in rollouts.py; trackers in
trackers.py.

A run directory holds config.json, metrics.jsonl (one line per step), eval_start.json /
eval_final.json, checkpoints/step-N (atomic; --resume continues exactly) and final/
(save_pretrained, loadable with from_pretrained).

Simplifications, deliberately: no sequence packing; one batch of rollouts per step (TRL's
steps_per_generation = 1); AdamW with a linear warm-up, then a constant learning rate.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import checkpoint
import data
import dist
import evaluate
import grpo
import rollouts
import settings
import sft
import uniapl
from discriminator import load_discriminator
from trackers import Trackers


@dataclass
class StepSettings:
    """What one unified step reads besides the objective (each field's why: settings.py)."""
    num_generations: int          # G
    temperature: float            # tau, for sampling and for every log-prob of a rollout
    max_completion_length: int    # new tokens per rollout; demonstrations are cut there too
    epsilon: float                # clip: rho in [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float
    beta: float                   # KL weight (a reference model is needed when > 0)
    loss_type: str                # "token" | "sequence"
    scale_rewards: str            # "group" | "none"
    mask_truncated: bool
    num_iterations: int           # optimizer updates per batch of rollouts
    max_grad_norm: float
    logprobs_backend: str
    precision: str                # "auto" | "bf16" | "fp32": the autocast of every forward

    @classmethod
    def from_settings(cls, s: settings.Settings) -> StepSettings:
        return cls(**{f.name: getattr(s, f.name) for f in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------------------------
# One unified step
# ----------------------------------------------------------------------------------------------

def unified_step(policy, tokenizer, batch: data.MixedBatch, objective: uniapl.Objective,
                 s: StepSettings, optimizer, scheduler, discriminator=None, reference=None,
                 step: int = 0, engine=None, ctx: dist.Context | None = None,
                 keep_samples: int = 0) -> dict:
    """One UniAPL step on a mixed batch; returns its metrics. Raises NonFiniteError before
    touching the weights if a loss or the gradient norm is not finite. `engine` samples the
    rollouts (rollouts.py; default: HF generate); `ctx` is this process's share of a torchrun
    run (dist.py; default: one process, `batch` is the whole batch); `keep_samples` > 0 returns
    that many rollouts (prompt, completion, reward, discriminator score) under "_samples"."""
    device = next(policy.parameters()).device
    ctx = ctx or dist.Context(device=device)
    amp, timer = dist.autocast_for(device, s.precision), Timer(device)
    G, metrics = s.num_generations, {"step": step + 1}

    # 1. Rollouts: y_1..y_G ~ pi_theta(. | x) for each RL prompt (a-sft: each demonstration prompt).
    rollout_rows = {"rl": batch.prompts, "demo": batch.demos, "none": []}[objective.rollouts_on]
    ro = None
    if rollout_rows:
        with timer("generate"), amp(), dist.gathered(policy, ctx):
            ro = (engine or rollouts.HFEngine()).generate(
                policy, tokenizer, rollout_rows, G, temperature=s.temperature,
                max_new_tokens=s.max_completion_length)
        mask = ro.completion_mask.clone()                                        # [R, L]
        if s.mask_truncated:
            mask = mask * (~ro.truncated).long()[:, None]
        # several ranks: L_GRPO and L_ADV divide by the tokens (or sequences) of all of them
        rl_total = ctx.all_reduce_sum(grpo.loss_units(mask, s.loss_type)) if ctx.distributed else None

        # 2. Reward: r_i = fraction of x's instructions that y_i satisfies (ifeval.py).
        with timer("reward"):
            r = grpo.rewards(ro)                                                 # [R]
        metrics.update(grpo.rollout_stats(r, ro))

        # 3. Discriminator score d_i = D(x, y_E, y_i) and adversarial coefficient
        #    c_i = clip((d_i - mean d) / (std d + eps), -c, c) within each group (Algorithm 1).
        d = None
        if objective.uses_discriminator:
            with timer("discriminator"):
                d = discriminator.score([row["prompt"] for row in ro.rows],
                                        [row["response"] for row in ro.rows], ro.texts).float()  # [R]
            coef = uniapl.adversarial_coefficient(d, G, objective.coef_clip,
                                                  norm=objective.coef_norm).to(device)  # [R]
            metrics.update({f"adv/{k}": v for k, v in uniapl.discriminator_stats(d, r, coef).items()})
        if keep_samples:                     # for the trackers' table of completions
            metrics["_samples"] = sample_table(ro, r, d, keep_samples)
        if objective.shapes_reward:          # the ablation: r_i <- r_i + lambda_adv d_i
            r = r + objective.lambda_adv * d

        # 4. Advantage A_i = (r_i - mean r) / (std r + eps) within each group of G.
        adv = grpo.group_advantages(r, G, scale=s.scale_rewards == "group").to(device)  # [R]
        ref_logp = None
        if reference is not None:            # only when beta > 0
            with timer("forward"), torch.no_grad(), amp():
                ref_logp = grpo.completion_logprobs(reference, ro, s.temperature)      # [R, L]
    demos = data.demo_batch(tokenizer, batch.demos, s.max_completion_length) \
        if objective.uses_sft else None
    sft_total = ctx.all_reduce_sum(demos.score_mask[:, 1:].sum().float().to(device)) \
        if demos is not None and ctx.distributed else None

    # 5. The losses, and one backward pass per update (--num-iterations reuses the rollouts).
    clip = dict(eps_low=s.epsilon, eps_high=s.epsilon_high, loss_type=s.loss_type,
                total=rl_total if ro is not None else None)
    old_logp = None
    for _ in range(s.num_iterations):
        l_sft = l_grpo = l_adv = None
        with timer("forward"), amp():
            # L_SFT = token-mean NLL of the teacher's response tokens (CHORD-phi: weighted by p(1-p)).
            if objective.uses_sft:
                l_sft, st = sft.sft_loss(policy, demos, s.logprobs_backend, sft_total,
                                         objective.sft_weighting)
                metrics.update({"sft/nll": st["nll"], "sft/truncated": st["truncated"]})

            # log pi_theta(y_t) of every rollout token, shared by L_GRPO and L_ADV. On the first
            # update pi_old = pi_theta, so the detached copy is the old policy (no extra forward).
            if ro is not None and (objective.uses_grpo or objective.uses_adv_loss):
                logp = grpo.completion_logprobs(policy, ro, s.temperature, s.logprobs_backend)  # [R, L]
                if old_logp is None:
                    old_logp = logp.detach()
                    metrics.update(grpo.sampler_gap(ro, old_logp))

            # L_GRPO = -aggregate(min(rho A, clip(rho) A)) + beta KL.
            if ro is not None and objective.uses_grpo:
                l_grpo, st = grpo.policy_loss(logp, old_logp, adv, mask, beta=s.beta,
                                              ref_logp=ref_logp, **clip)
                metrics.update({f"grpo/{k}": v for k, v in st.items()} | {"grpo/loss": float(l_grpo.detach())})

            # L_ADV = -aggregate(min(rho c, clip(rho) c)): the same surrogate, driven by c.
            if ro is not None and objective.uses_adv_loss:
                l_adv, st = uniapl.adv_loss(logp, old_logp, coef, mask, **clip)
                metrics.update({"adv/loss": float(l_adv.detach()), "adv/clip_frac": st["clip_frac"]})

            # L = alpha L_SFT + (1 - alpha) L_GRPO + lambda_adv L_ADV   (CHORD-mu: alpha = mu(step))
            loss = uniapl.unified_loss(objective, l_sft, l_grpo, l_adv, objective.alpha_at(step))
        check_finite(step + 1, loss=loss, l_sft=l_sft, l_grpo=l_grpo, l_adv=l_adv)
        with timer("backward"):
            loss.backward()
        with timer("optimizer"):
            grad_norm = optimizer_update(policy, optimizer, scheduler, s.max_grad_norm, step, ctx)
    metrics.update({"loss": float(loss.detach()), "grad_norm": float(grad_norm),
                    "lr": scheduler.get_last_lr()[0]} | timer.times)
    if objective.chord == "mu":
        metrics["alpha"] = objective.alpha_at(step)
    return ctx.reduce_metrics(metrics, maxes=("sampler_gap_max",),
                              sums=("loss", "sft/nll", "sft/truncated", "grpo/loss", "adv/loss"))


def sample_table(ro: rollouts.Rollouts, r: torch.Tensor, d: torch.Tensor | None, k: int) -> list:
    """The first k rollouts with their prompt, verifier reward and discriminator score."""
    return [{"prompt": row["prompt"], "completion": text, "reward": float(r[i]),
             "discriminator": float(d[i]) if d is not None else None}
            for i, (row, text) in enumerate(zip(ro.rows[:k], ro.texts))]


def optimizer_update(policy, optimizer, scheduler, max_grad_norm: float, step: int,
                     ctx: dist.Context | None = None) -> torch.Tensor:
    """Sum the gradients across ranks, clip their norm, step; a non-finite norm raises before
    the weights change."""
    if ctx is not None:
        ctx.all_reduce_grads(policy)
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):      # FSDP2: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        check_finite(step + 1, grad_norm=grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


# ----------------------------------------------------------------------------------------------
# The training run
# ----------------------------------------------------------------------------------------------

def train(s: settings.Settings) -> dict:
    """Load -> evaluate -> unified steps (metrics, checkpoints) -> evaluate -> save; a summary.
    Under torchrun every rank runs this; rank 0 alone writes (dist.py)."""
    objective = objective_of(s)
    if objective.rollouts_on != "none" and s.num_generations < 2:
        raise SystemExit("--num-generations must be at least 2 (advantages are relative to the group)")
    ctx = dist.setup(s.device, s.fsdp)
    device, say = ctx.device, (print if ctx.is_main else lambda *a, **k: None)
    seed_everything(s.seed)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # our own progress bar is enough

    # --- Load: policy, data, reference (only if beta > 0), discriminator (only if used). ---
    policy, tokenizer = checkpoint.load_policy(s.model, device, seed=s.seed)
    if ctx.rank:   # every rank builds the same weights, then samples with its own seed
        seed_everything(s.seed + 1_000_003 * ctx.rank)
    # from_pretrained returns a module in eval mode, and transformers checkpoints a layer only
    # while its module is training: without this, --gradient-checkpointing would save nothing.
    policy.train()
    if s.gradient_checkpointing:
        dist.enable_activation_checkpointing(policy)
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if s.beta > 0 else None
    if ctx.fsdp:
        policy, reference = dist.shard(policy, ctx), reference and dist.shard(reference, ctx)
    load = dict(skip_invalid=s.skip_invalid_rows, toy_seed=s.seed, teacher_accuracy=s.teacher_accuracy,
                toy_eval_n=s.toy_eval_size)
    rows = data.load_rows(s.dataset, "train", **load)
    rows = data.check_prompt_lengths(rows, tokenizer, s.max_prompt_length, s.dataset,
                                     strict=s.strict_prompt_length)
    eval_rows = data.load_rows(s.eval_dataset, data.evaluation_split(s.eval_dataset),
                               **load)[:s.eval_limit]
    demos, prompts = data.training_pools(
        rows, s.dataset, s.method, s.pool_split, needs_demos=objective.needs_demos,
        rl_needs_reference=objective.uses_discriminator and objective.rollouts_on == "rl")
    sampler = data.MixedSampler(demos, prompts, s.sft_batch_size if objective.uses_sft else 0,
                                s.rl_batch_size if objective.rollouts_on == "rl" else 0, s.seed)
    disc = load_discriminator(s.discriminator, s.discriminator_model, device,
                              dist.autocast_dtype(device, s.precision) or torch.float32) \
        if objective.uses_discriminator else None
    if ctx.distributed and s.rollout_engine == "vllm":
        raise SystemExit("--rollout-engine vllm runs in one process; under torchrun use hf-static")
    engine = rollouts.make_engine(
        "hf-static" if ctx.distributed and s.rollout_engine == "auto" and device.type == "cuda"
        else s.rollout_engine, device, model_path=engine_model_dir(policy, tokenizer, s),
        prompt_width=s.max_prompt_length, seed=s.seed,
        max_model_len=s.max_prompt_length + max(s.max_completion_length, s.eval_max_new_tokens),
        gpu_memory_utilization=s.vllm_gpu_memory_utilization)
    say(f"[{s.method}] {s.world} world, {ctx.world_size} process(es) on {device.type}"
        f"{' with FSDP2' if ctx.fsdp else ''}; rollouts and evaluation: {engine.name}")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / max(1, s.warmup_steps)))

    # --- The run directory: resume, config. ---
    if ctx.is_main:
        checkpoint.prepare_out(s.out, resuming=s.resume is not None)
    ctx.barrier()
    start = 0
    if s.resume:
        path = ctx.broadcast_object(checkpoint.find_checkpoint(s.resume, s.out) if ctx.is_main else None)
        start = checkpoint.load_checkpoint(path, policy, optimizer, scheduler, sampler, ctx)
        if ctx.is_main:
            checkpoint.truncate_metrics(s.out, start)
        say(f"resumed from {path} at step {start}")
    if ctx.is_main:
        write_json(os.path.join(s.out, "config.json"), dataclasses.asdict(s) | {
            "alpha": objective.alpha, "lambda_adv": objective.lambda_adv,
            "world_size": ctx.world_size})
    amp = dist.autocast_for(device, s.precision)

    def run_eval(tag: str) -> dict:
        """Each rank answers its share of the prompts; all of them score the gathered answers."""
        mine = eval_rows[ctx.rank::ctx.world_size]
        with dist.gathered(policy, ctx):
            answers = evaluate.generate_responses(policy, tokenizer, mine, autocast=amp,
                                                  max_new_tokens=s.eval_max_new_tokens, engine=engine)
        parts = ctx.gather_objects(answers)       # rank r holds rows r, r + N, r + 2N, ...
        texts = [parts[i % ctx.world_size][0][i // ctx.world_size] for i in range(len(eval_rows))]
        lengths = [parts[i % ctx.world_size][1][i // ctx.world_size] for i in range(len(eval_rows))]
        res = evaluate.score_responses(eval_rows, texts, lengths, s.eval_max_new_tokens)
        if ctx.is_main:
            write_json(os.path.join(s.out, f"eval_{tag}.json"), res)
        return res

    # --- Evaluate before training (skipped when resuming: it was done). ---
    start_eval = os.path.join(s.out, "eval_start.json")
    before = None
    if os.path.exists(start_eval) and start > 0:
        before = read_json(start_eval)
    elif s.eval_start:
        before = run_eval("start")
    if before:
        say(f"[{s.method}] held-out IF accuracy before training: prompt-strict "
            f"{before['prompt_strict']:.3f}, inst-strict {before['inst_strict']:.3f} "
            f"({before['n_prompts']} prompts)")

    # --- Train. ---
    from tqdm import tqdm
    step_settings = StepSettings.from_settings(s)
    trackers = Trackers(s.report_to if ctx.is_main else [], s.out, s.tracker_project,
                        os.path.basename(os.path.normpath(s.out)), dataclasses.asdict(s))
    if before and start == 0:
        trackers.log({f"eval/{k}": before[k] for k in evaluate.METRICS}, 0)
    bar = tqdm(range(start, s.steps), initial=start, total=s.steps, desc=s.method,
               disable=s.no_progress or not ctx.is_main, dynamic_ncols=True)
    for step in bar:
        batch = sampler.next().shard(ctx.rank, ctx.world_size)
        every = s.log_completions_every
        metrics = unified_step(policy, tokenizer, batch, objective, step_settings, optimizer,
                               scheduler, disc, reference, step=step, engine=engine, ctx=ctx,
                               keep_samples=8 if every and (step + 1) % every == 0 else 0)
        trackers.log_samples(metrics.pop("_samples", None), step + 1)
        if s.eval_every and (step + 1) % s.eval_every == 0 and step + 1 < s.steps:
            res = run_eval(f"step{step + 1}")
            metrics.update({f"eval/{k}": res[k] for k in evaluate.METRICS})
        if ctx.is_main:
            with open(os.path.join(s.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
        trackers.log(metrics, step + 1)
        bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("loss", "reward", "sft/nll") if k in metrics})
        if s.save_every and ((step + 1) % s.save_every == 0 or step + 1 == s.steps):
            checkpoint.save_checkpoint(s.out, step + 1, policy, tokenizer, optimizer, scheduler,
                                       sampler, s.save_total_limit, ctx)

    # --- Evaluate after training, save. ---
    after = run_eval("final")
    trackers.log({f"eval/{k}": after[k] for k in evaluate.METRICS}, s.steps)
    trackers.close()
    weights, _ = checkpoint.full_state(policy, None, ctx)
    if ctx.is_main:
        marker = {"world": s.world, "method": s.method, "steps": s.steps, "source_model": s.model}
        checkpoint.save_pretrained_atomic(policy, tokenizer, os.path.join(s.out, "final"),
                                          {"uniapl.json": marker},
                                          state_dict=weights if ctx.fsdp else None)
    ctx.barrier()
    teacher = evaluate.teacher_accuracy(eval_rows)
    was = lambda k: f"{before[k]:.3f} -> " if before else ""  # noqa: E731
    say(f"[{s.method}] held-out IF accuracy (prompt-strict): {was('prompt_strict')}"
        f"{after['prompt_strict']:.3f}" + (f"  (teacher: {teacher['prompt_strict']:.3f})"
                                           if teacher else "")
        + f"; inst-strict {was('inst_strict')}{after['inst_strict']:.3f}. Run: {s.out}")
    return {"before": before["prompt_strict"] if before else None, "after": after["prompt_strict"],
            "teacher": teacher.get("prompt_strict"), "out": s.out}


def objective_of(s: settings.Settings) -> uniapl.Objective:
    """The method's preset with the settings' overrides; CHORD-mu's decay spans the run unless set."""
    decay = s.chord_mu_decay_steps if s.chord_mu_decay_steps is not None else s.steps
    return uniapl.resolve(s.method, s.alpha, s.lambda_adv, s.adv_mode, s.adv_coef_clip,
                          s.adv_coef_norm,
                          (s.chord_mu_peak, s.chord_mu_valley, s.chord_mu_warmup_steps, decay))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Plumbing: timing, finiteness, JSON
# ----------------------------------------------------------------------------------------------

class NonFiniteError(RuntimeError):
    """A loss or gradient norm that is NaN/inf: the optimizer step is never taken."""


def check_finite(step: int, **terms) -> None:
    values = {k: float(v.detach()) if torch.is_tensor(v) else float(v)
              for k, v in terms.items() if v is not None}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteError(f"step {step}: non-finite {', '.join(f'{k} = {v}' for k, v in bad.items())}"
                             "; the optimizer step was not taken and the last checkpoint is intact")


class Timer:
    """Wall time per phase, reported as time/<phase> (s) in the metrics; on CUDA also the peak
    memory allocated during the phase, mem/<phase> (GiB)."""

    def __init__(self, device):
        self.device, self.times = device, {}

    @contextlib.contextmanager
    def __call__(self, phase):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30
            self.times[f"mem/{phase}"] = max(self.times.get(f"mem/{phase}", 0), peak)
        self.times[f"time/{phase}"] = self.times.get(f"time/{phase}", 0) + time.perf_counter() - t0


def engine_model_dir(policy, tokenizer, s: settings.Settings) -> str | None:
    """vLLM reads a model's config and tokenizer from a directory; its weights come from the
    policy's memory (load_format 'dummy'), so only those small files are written."""
    if s.rollout_engine not in ("vllm", "auto") or dist.pick_device(s.device).type != "cuda":
        return None
    path = os.path.join(s.out, "rollout_engine_model")
    os.makedirs(path, exist_ok=True)
    policy.config.save_pretrained(path)
    policy.generation_config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> dict:
    return train(settings.parse(argv))


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, NonFiniteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    dist.shutdown()
