"""Train with UniAPL: alpha * L_SFT + (1 - alpha) * L_GRPO + lambda_adv * L_ADV, in every step.

    python train.py                                   # the embedded toy world, any CPU, minutes
    python train.py --method grpo --steps 200         # the same world, another preset
    python train.py --model Qwen/Qwen3-0.6B           # the real run, one CUDA GPU
    python train.py --method sft --out runs/sft && python train.py --model runs/sft/final --method grpo
    python train.py --help                            # every setting, with its toy and real value

This file is the method, top to bottom: `unified_step` is one optimizer step written in the order
of the equation (rollouts -> reward -> discriminator and coefficient -> one block per loss term
-> one backward pass -> update), and `train` is the loop around it (load -> the run directory ->
evaluate -> steps -> evaluate -> save). The plumbing lives elsewhere: settings in settings.py;
data in data.py; evaluation in eval.py; loading, the run directory (config.json, metrics.jsonl,
eval_*.json, checkpoints/step-N, final/), exact resume and stop signals in checkpoint.py; the
device, precision and torchrun processes in parallel.py; rollout engines in rollouts.py,
static_engine.py and vllm_engine.py (chosen in engines.py); trackers and the time and memory
meter in trackers.py. One command survives any preemption (docs/running.md).

What the code really computes, and its simplifications (deliberate):
* At --num-iterations 1 (the default) the rollouts serve one update, so pi_old = pi_theta, every
  ratio rho = 1 and no clip binds: the step's policy gradient is
  -(1/N) sum [(1 - alpha) A_i + lambda_adv c_i] grad log pi, i.e. L_ADV is an extra per-rollout
  advantage, and "ADV as loss" and "ADV as reward shaping" differ only in where d is normalised
  (uniapl.py). The clip matters only with --num-iterations > 1.
* Algorithm 1 -- the adversarial coefficient and L_ADV -- is our reconstruction (uniapl.py); the
  weighted sum and its single backward pass are the paper's.
* The KL to a frozen reference (--beta, 0 by default) is a fourth term with its own weight.
* Each term is a mean over its own tokens, so alpha weighs two means, not two data volumes
  (PAPER.md discusses the paper's "volume" reading).
* --warmup-steps and the learning-rate schedule count optimizer updates: with --num-iterations N
  each step makes N of them.
* No sequence packing; one batch of rollouts per step (TRL's steps_per_generation = 1); AdamW with
  a linear warm-up, then a constant learning rate.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import checkpoint
import data
import engines
import eval
import grpo
import parallel
import preemption
import rollouts
import run_dir
import settings
import sft
import tasks
import uniapl
from discriminator import load_discriminator
from trackers import Meter, Trackers


@dataclass
class Run:
    """What a step uses besides the policy, its batch and the settings; built once by `train`."""
    tokenizer: object
    objective: uniapl.Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: object = dataclasses.field(default_factory=rollouts.HFEngine)   # samples the rollouts
    discriminator: object = None           # D(x, y_E, y); only for adversarial methods
    reference: object = None               # the frozen reference policy; only when beta > 0
    ctx: parallel.Context | None = None    # this rank's place in a torchrun run (None: one process)
    meter: Meter | None = None             # time and peak memory per phase (trackers.py)
    flags: object = None                   # () -> {"stop": signal number or 0, "save": 0/1}: reduced
                                           # (max) with the step's metrics
    rewards: list | None = None            # (name, function, weight) of the task's verifiers (tasks.py)


# ----------------------------------------------------------------------------------------------
# One unified step
# ----------------------------------------------------------------------------------------------

def unified_step(policy, batch: data.MixedBatch, s: settings.Settings, run: Run, step: int = 0):
    """One UniAPL step on a mixed batch -> (metrics, samples). Raises NonFiniteError before the
    weights change if a loss or the gradient norm is not finite. Under torchrun `batch` is this
    rank's share and every mean is divided by the count over all ranks (parallel.py)."""
    device = next(policy.parameters()).device
    run.ctx, run.meter = run.ctx or parallel.Context(device=device), run.meter or Meter(device)
    o, G, ctx, phase = run.objective, s.num_generations, run.ctx, run.meter.phase
    amp = parallel.autocast_for(device, s.precision)
    a, lam, beta = o.alpha_at(step), o.lambda_adv, s.beta     # the weights of this step's terms

    # 1. Rollouts: y_1..y_G ~ pi_theta(. | x) for each RL prompt (a-sft: each demonstration prompt).
    ro = r = d = adv_coef = advantages = ref_logp = reward_means = None
    if o.rollouts_on != "none":
        rows = batch.prompts if o.rollouts_on == "rl" else batch.demos
        with phase("generate"), amp(), parallel.gathered(policy, ctx):
            ro = run.engine.generate(policy, run.tokenizer, rows, G, temperature=s.temperature,
                                     max_new_tokens=s.max_completion_length)

        # 2. Reward: r_i = sum_k w_k f_k(x, y_i), the task's verifiers (tasks.py; IFEval's default:
        #    the fraction of x's instructions that y_i satisfies; --reward all: 1 if all of them).
        with phase("reward"):
            run.rewards = run.rewards or tasks.reward_functions(tasks.load(s.task), s.reward, s.reward_weights)
            r, reward_means = grpo.rewards(run.rewards, ro.rows, ro.texts)        # [R]

        # 3. Discriminator d_i = D(x, y_E, y_i), adversarial coefficient
        #    c_i = clip((d_i - mean d) / (std d + eps), -c, c) within each group (Algorithm 1,
        #    our reconstruction; --adv-coef-norm batch: mean and std over every rank's rollouts).
        if o.uses_discriminator:
            with phase("discriminator"):
                d = run.discriminator.score([x["prompt"] for x in ro.rows],
                                            [x["response"] for x in ro.rows], ro.texts).float()  # [R]
            stats = ctx.mean_std(d) if o.adv_coef_norm == "batch" and ctx.distributed else None
            adv_coef = uniapl.adversarial_coefficient(d, G, o.adv_coef_clip, o.adv_coef_norm,
                                                      batch_mean_std=stats)            # [R]
        if o.shapes_reward:                   # the ablation: r_i <- r_i + lambda_adv d_i
            r = r + lam * d

        # 4. Advantage: A_i = (r_i - mean r) / (std r + eps) within each group of G.
        advantages = grpo.group_advantages(r, G, scale=s.scale_rewards == "group")   # [R]
        if run.reference is not None:         # only when beta > 0
            with phase("forward"), torch.no_grad(), amp():
                ref_logp = grpo.completion_logprobs(run.reference, ro, s.temperature)   # [R, L]
    demos = data.demo_batch(run.tokenizer, batch.demos, s.max_completion_length) if a > 0 else None

    # 5. L = a L_SFT + (1 - a) L_GRPO + lam L_ADV (+ beta KL): one backward per micro-batch
    #    (gradients add up, every mean divided by the whole step's count), one update;
    #    --num-iterations > 1 reuses the rollouts for more updates, against the first update's
    #    log-probs (pi_old). At 1 (the default) rho = 1 and the clip never binds (uniapl.py).
    parts = micro_batches(ro, demos, advantages, adv_coef, ref_logp, s, device, ctx)
    surrogate_kw = dict(eps_low=s.epsilon, eps_high=s.epsilon_high, loss_type=s.loss_type)
    for _ in range(s.num_iterations):
        terms = {"loss": 0.0, "sft": 0.0, "grpo": 0.0, "adv": 0.0, "kl": 0.0}
        for mb in parts:
            with phase("forward"), amp():
                # L_SFT = -(1/|y^E|) sum_t log pi_theta(y^E_t | x, y^E_<t)   (CHORD-phi: weighted by p(1-p))
                l_sft = sft.sft_loss(policy, mb.demos, s.logprobs_backend, mb.sft_total,
                                     o.sft_weighting) if mb.demos is not None else 0.0
                # log pi_theta(y_t) of every rollout token, shared by L_GRPO and L_ADV. On the first
                # update pi_old = pi_theta: the detached copy is the old policy (no extra forward).
                logp = grpo.completion_logprobs(policy, mb.ro, s.temperature, s.logprobs_backend) \
                    if mb.ro is not None else None                                       # [r, L]
                if logp is not None:
                    mb.logp = logp.detach()
                    mb.old_logp = mb.logp if mb.old_logp is None else mb.old_logp
                # L_GRPO = -mean_t min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i)
                l_grpo = grpo.policy_loss(logp, mb.old_logp, mb.advantages, mb.mask,
                                          total=mb.rl_total, **surrogate_kw) \
                    if o.uses_grpo and mb.ro is not None else 0.0
                # L_ADV = -mean_t min(rho_t c_i, clip(rho_t) c_i): the same surrogate, driven by c
                l_adv = uniapl.adv_loss(logp, mb.old_logp, mb.adv_coef, mb.mask, total=mb.rl_total,
                                        **surrogate_kw) if o.uses_adv_loss and mb.ro is not None else 0.0
                # KL = mean_t k3(pi_theta, pi_ref): the fourth term, with its own weight beta
                l_kl = grpo.kl_penalty(logp, mb.ref_logp, mb.mask, loss_type=s.loss_type,
                                       total=mb.rl_total) if beta and mb.ro is not None else 0.0

                loss = a * l_sft + (1 - a) * l_grpo + lam * l_adv + beta * l_kl

            check_finite(step + 1, loss=loss, l_sft=l_sft, l_grpo=l_grpo, l_adv=l_adv, l_kl=l_kl)
            with phase("backward"):
                loss.backward()
            for k, v in (("loss", loss), ("sft", l_sft), ("grpo", l_grpo), ("adv", l_adv),
                         ("kl", l_kl)):
                terms[k] += float(v.detach()) if torch.is_tensor(v) else v
        with phase("optimizer"):
            grad_norm = optimizer_update(policy, run.optimizer, run.scheduler, s.max_grad_norm, step, ctx)

    metrics = step_metrics(step, s, o, a, terms, grad_norm, run, ro, r, d, adv_coef, advantages,
                           demos, parts) | {f"reward/{k}": v for k, v in (reward_means or {}).items()}
    samples = [{"prompt": x["prompt"], "completion": t, "reward": float(r[i]),
                "discriminator": float(d[i]) if d is not None else None}
               for i, (x, t) in enumerate(zip(ro.rows, ro.texts))] if ro is not None else []
    return metrics, samples


@dataclass
class MicroBatch:
    """A slice of the step's rollouts and demonstrations with what their losses need."""
    ro: rollouts.Rollouts | None
    demos: data.DemoBatch | None
    mask: torch.Tensor | None = None        # [r, L] completion tokens in the loss
    advantages: torch.Tensor | None = None  # [r] GRPO's A_i
    adv_coef: torch.Tensor | None = None    # [r] the adversarial coefficient c_i
    ref_logp: torch.Tensor | None = None    # [r, L]
    old_logp: torch.Tensor | None = None    # [r, L] pi_old, from the first update
    logp: torch.Tensor | None = None        # [r, L] the last update's, detached (for the logs)
    rl_total: torch.Tensor | None = None    # the step's tokens (or sequences) of all ranks
    sft_total: torch.Tensor | None = None   # the step's response tokens of all ranks


def micro_batches(ro, demos, advantages, adv_coef, ref_logp, s, device, ctx) -> list[MicroBatch]:
    """--micro-batch-size rollouts and demonstrations per forward/backward (default: all in one).
    Every mean is divided by the whole step's count over every rank, so that the micro-batches'
    losses (and gradients) add up to the whole batch's: that count is computed here, once."""
    mask = None
    if ro is not None:
        mask = ro.completion_mask.to(device)                                     # [R, L]
        if s.mask_truncated:
            mask = mask * (~ro.truncated).long().to(device)[:, None]
    n_ro = 0 if ro is None else len(ro.rows)
    n_demo = 0 if demos is None else demos.input_ids.shape[0]
    size = s.micro_batch_size or max(n_ro, n_demo, 1)
    k = max(1, -(-max(n_ro, n_demo) // size))
    shared = k > 1 or ctx.distributed        # otherwise each term divides by its own count
    rl_total = ctx.all_reduce_sum(grpo.loss_units(mask, s.loss_type)) if shared and ro is not None else None
    sft_total = ctx.all_reduce_sum(demos.score_mask[:, 1:].sum().float().to(device)) \
        if shared and demos is not None else None
    to = lambda t, sl: None if t is None else t.to(device)[sl]   # noqa: E731
    parts = []
    for j in range(k):
        rs, ds = slice(j * size, min(n_ro, (j + 1) * size)), slice(j * size, min(n_demo, (j + 1) * size))
        has_ro, has_demo = rs.start < n_ro, ds.start < n_demo
        parts.append(MicroBatch(ro.select(rs) if has_ro else None,
                                demos.select(ds) if has_demo else None,
                                mask[rs] if has_ro else None, to(advantages, rs) if has_ro else None,
                                to(adv_coef, rs) if has_ro else None,
                                to(ref_logp, rs) if has_ro else None,
                                rl_total=rl_total, sft_total=sft_total))
    return parts


def step_metrics(step, s, o, a, terms, grad_norm, run, ro, r, d, adv_coef, advantages, demos,
                 parts) -> dict:
    """Everything a step logs, in one place: rewards and rollouts (grpo.py), the discriminator
    (uniapl.py), each term's value and clip fraction over the whole batch, time and memory per
    phase; averaged over ranks (losses summed: each rank's share is already divided by the
    global count)."""
    metrics = {"step": step + 1}
    if ro is not None:
        metrics.update(grpo.rollout_stats(r, ro))
        if d is not None:
            metrics.update({f"adv/{k}": v for k, v in uniapl.discriminator_stats(d, r, adv_coef).items()})
    if demos is not None:
        metrics.update({"sft/nll": terms["sft"], "sft/truncated": demos.truncated})
    if ro is not None and o.rollouts_on != "none" and parts[0].logp is not None:
        cat = lambda name: torch.cat([getattr(mb, name) for mb in parts if mb.ro is not None])  # noqa: E731
        old, logp, mask = cat("old_logp"), cat("logp"), cat("mask")           # [R, L] each
        metrics.update(grpo.sampler_gap(ro, old))
        kw = dict(eps_low=s.epsilon, eps_high=s.epsilon_high)
        if o.uses_grpo:
            metrics.update({"grpo/loss": terms["grpo"], "grpo/ratio_clip_frac": grpo.ratio_clip_frac(
                logp, old, advantages.to(logp.device), mask, **kw)})
        if o.uses_adv_loss:
            metrics.update({"adv/loss": terms["adv"], "adv/ratio_clip_frac": grpo.ratio_clip_frac(
                logp, old, adv_coef.to(logp.device), mask, **kw)})
        if s.beta:
            metrics["kl/loss"] = terms["kl"]
    metrics.update({"loss": terms["loss"], "grad_norm": float(grad_norm),
                    "lr": run.scheduler.get_last_lr()[0]} | run.meter.read())
    if o.chord == "mu":
        metrics["alpha"] = a
    # the loop's decisions (stop after this step, checkpoint now) ride on this one all-reduce, so
    # that every rank takes them after the same step without a collective of their own
    metrics.update({f"flag/{k}": v for k, v in (run.flags() if run.flags else {}).items()})
    return run.ctx.reduce_metrics(metrics, maxes=("sampler_gap_max", "flag/stop", "flag/save"),
                                  sums=("loss", "sft/nll", "sft/truncated", "grpo/loss", "adv/loss",
                                        "kl/loss"))


def optimizer_update(policy, optimizer, scheduler, max_grad_norm: float, step: int,
                     ctx: parallel.Context) -> torch.Tensor:
    """Sum the gradients across ranks, clip their norm, step; a non-finite norm raises before
    the weights change."""
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
    """Load -> the run directory -> evaluate -> unified steps (metrics, checkpoints) -> evaluate
    -> save; a summary. Under torchrun every rank runs this; rank 0 alone writes (parallel.py).
    SIGTERM, SIGINT or SIGUSR1 is honoured where it lands (preemption.StopSignals): before the
    first step the process ends at once (nothing to save); in an evaluation between steps the
    evaluation is dropped; in a step the step finishes; then the last finished step is
    checkpointed and the same command continues the run."""
    signals = preemption.StopSignals().install()   # until the first step: ends the process at once
    try:
        return _train(s, signals)
    finally:
        signals.restore()


def _train(s: settings.Settings, signals: preemption.StopSignals) -> dict:
    ctx = parallel.setup(s.device, s.fsdp)      # one process, or this rank of torchrun's
    say = print if ctx.is_main else lambda *a, **k: None

    # --- Load: the policy, the data, the rollout engine, the optimizer (loading()). ---
    policy, sampler, eval_rows, run, task = loading(s, ctx, say)
    o, tokenizer, amp = run.objective, run.tokenizer, parallel.autocast_for(ctx.device, s.precision)

    # --- The run directory: continue from its newest whole checkpoint (--resume), or start. ---
    config = dataclasses.asdict(s) | {"alpha": o.alpha, "lambda_adv": o.lambda_adv,
                                      "world_size": ctx.world_size}      # what config.json holds
    start, finished = run_dir.open_run(s, config, ctx, say, policy, run.optimizer, run.scheduler, sampler)
    if finished:           # the same command after the run ended: nothing to redo
        return finished

    def evaluation(tag: str) -> dict:
        """Every rank answers its share and all score them (eval.py); rank 0 writes the result.
        A stop signal drops it: preemption.StopNow, on every rank."""
        res = eval.evaluate_shares(policy, tokenizer, eval_rows, ctx, max_new_tokens=s.eval_max_new_tokens,
                                   autocast=amp, engine=run.engine, interruptible=signals.dropping, task=task)
        if ctx.is_main:
            run_dir.write_json(os.path.join(s.out, f"eval_{tag}.json"), res)
        return res

    # --- Evaluate before training (when resuming: read back). ---
    start_eval = os.path.join(s.out, "eval_start.json")
    before = read_json(start_eval) if start and os.path.exists(start_eval) else \
        evaluation("start") if s.eval_start else None
    if before:
        say(f"[{s.method}] held-out {task.__name__} before training: {eval.describe(before, task=task)}")

    # --- Train. From here a stop signal ends the run after the step in flight (or drops an
    #     evaluation between steps), with a checkpoint of the last finished step. ---
    signals.mode = "step"
    from tqdm import tqdm
    trackers = Trackers(s.report_to if ctx.is_main else [], s.out, s.tracker_project,
                        os.path.basename(os.path.normpath(s.out)), dataclasses.asdict(s),
                        resume_step=start if s.resume else None)
    if before and start == 0:
        trackers.log({f"eval/{k}": before[k] for k in task.METRICS}, 0)
    bar = tqdm(range(start, s.steps), initial=start, total=s.steps, desc=s.method,
               disable=s.no_progress or not ctx.is_main, dynamic_ncols=True)
    last_save = time.monotonic()

    def stopped(number: int, step: int, saved: str, note: str = "", after: str = "") -> dict:
        bar.close()
        trackers.close()
        say(f"stopped by {signal.Signals(number).name} after step {step}{note}; checkpoint {saved}; "
            f"run the same command to continue{after}")
        return {"stopped_after": step, "checkpoint": saved, "out": s.out}

    run.flags = lambda: {"stop": float(signals.number), "save": float(
        bool(s.save_every_minutes) and time.monotonic() - last_save >= 60 * s.save_every_minutes)}
    for step in bar:
        batch = sampler.next().shard(ctx.rank, ctx.world_size)
        metrics, samples = unified_step(policy, batch, s, run, step)
        # every rank's flags, reduced with the metrics: all ranks stop (or save) after this step;
        # stop is the signal's number (the highest, if several)
        stop, save = int(metrics.pop("flag/stop")), metrics.pop("flag/save") > 0
        if s.log_completions_every and (step + 1) % s.log_completions_every == 0:
            trackers.log_samples(samples[:8], step + 1)
        due = bool(s.eval_every) and (step + 1) % s.eval_every == 0 and step + 1 < s.steps
        if due and not stop:
            try:            # a signal in it drops it, on every rank; the step is checkpointed below
                res = evaluation(f"step{step + 1}")
                metrics.update({f"eval/{k}": res[k] for k in task.METRICS})
            except preemption.StopNow as e:
                stop = e.number
        if not ctx.distributed:       # one process also sees a signal that came after the step
            stop = stop or signals.number
        save = save or bool(stop)
        if ctx.is_main:
            with open(os.path.join(s.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
        trackers.log(metrics, step + 1)
        bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("loss", "reward", "sft/nll") if k in metrics})
        if save or (s.save_every and ((step + 1) % s.save_every == 0 or step + 1 == s.steps)):
            saved = checkpoint.save_checkpoint(s.out, step + 1, policy, tokenizer, run.optimizer,
                                               run.scheduler, sampler, s.save_total_limit, ctx)
            trackers.flush()
            last_save = time.monotonic()
        if stop:
            skipped = f" (the evaluation due after step {step + 1} is skipped)" if due and \
                f"eval/{task.METRICS[0]}" not in metrics else ""
            return stopped(stop, step + 1, saved, after=skipped)

    # --- Evaluate after training, save. A stop asked for during the last step (or before the
    #     loop, when there was nothing left to do) or in the final evaluation -- 541 prompts of up
    #     to 1,280 tokens in the real run, longer than a scheduler's grace -- leaves the final
    #     evaluation to the next start, with a checkpoint of the last step. ---
    stop = int(ctx.reduce_metrics({"flag/stop": signals.number}, maxes=("flag/stop",))["flag/stop"])
    try:
        after = None if stop else evaluation("final")
    except preemption.StopNow as e:
        stop = e.number
    if stop:
        saved = checkpoint.save_checkpoint(s.out, s.steps, policy, tokenizer, run.optimizer,
                                           run.scheduler, sampler, s.save_total_limit, ctx)
        return stopped(stop, s.steps, saved, note=", before the final evaluation")
    trackers.log({f"eval/{k}": after[k] for k in task.METRICS}, s.steps)
    trackers.close()
    run_dir.save_final(s, policy, tokenizer, ctx)           # OUT/final, from_pretrained's
    teacher, head = eval.teacher_accuracy(eval_rows, task), task.METRICS[0]
    say(f"[{s.method}] held-out {task.__name__}: {eval.describe(after, before, task)}" + (
        f"; the teacher's {head}: {teacher[head]:.3f}" if teacher else "") + f". Run: {s.out}")
    return {"before": before[head] if before else None, "after": after[head], "teacher": teacher.get(head),
            "out": s.out}


def loading(s: settings.Settings, ctx: parallel.Context, say) -> tuple:
    """(policy, sampler, evaluation rows, Run, task): the task (tasks.py), the policy (training
    mode, activation checkpointing, FSDP2 shards if asked), the data, a frozen reference (only if
    beta > 0), the discriminator (only if used), the rollout engine, the optimizer and its
    schedule, the task's reward functions."""
    objective = uniapl.objective(s)
    if objective.rollouts_on != "none" and s.num_generations < 2:
        raise SystemExit("--num-generations must be at least 2 (advantages are relative to the group)")
    device = ctx.device
    seed_everything(s.seed)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # our own progress bar is enough
    task = tasks.load(s.task)
    policy, tokenizer = checkpoint.load_policy(s.model, device, seed=s.seed, toy_tokenizer=task.toy_tokenizer)
    if ctx.rank:   # every rank builds the same weights, then samples with its own seed
        seed_everything(s.seed + 1_000_003 * ctx.rank)
    # from_pretrained returns a module in eval mode, and transformers checkpoints a layer only
    # while its module is training: without this, --gradient-checkpointing would save nothing.
    policy.train()
    if s.gradient_checkpointing:
        parallel.enable_activation_checkpointing(policy)
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if s.beta > 0 else None
    if ctx.fsdp:
        policy, reference = parallel.shard(policy, ctx), reference and parallel.shard(reference, ctx)
    sampler, eval_rows = data.training_data(s, objective, tokenizer, task)
    disc = load_discriminator(s.discriminator, s.discriminator_model, device,
                              parallel.autocast_dtype(device, s.precision) or torch.float32) \
        if objective.uses_discriminator else None
    engine = engines.make_engine(
        s.rollout_engine, device, dtype=parallel.autocast_dtype(device, s.precision),
        prompt_width=s.max_prompt_length, distributed=ctx.distributed, steps=s.steps,
        model_path=engines.engine_model_dir(policy, tokenizer, s), seed=s.seed,
        max_model_len=s.max_prompt_length + max(s.max_completion_length, s.eval_max_new_tokens),
        gpu_memory_utilization=s.vllm_gpu_memory_utilization)
    say(f"[{s.method}] {s.world} world, {ctx.world_size} process(es) on {device.type}"
        f"{' with FSDP2' if ctx.fsdp else ''}; rollouts and evaluation: {engine.name}")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / max(1, s.warmup_steps)))
    rewards = tasks.reward_functions(task, s.reward, s.reward_weights)
    return policy, sampler, eval_rows, Run(tokenizer, objective, optimizer, scheduler, engine, disc,
                                           reference, ctx, rewards=rewards), task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Plumbing: finiteness, JSON
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
    except KeyboardInterrupt:           # a second Ctrl-C: at once, without a checkpoint
        print("interrupted at once (a second SIGINT); the last checkpoint is intact", file=sys.stderr)
        sys.exit(130)
    parallel.shutdown()
