"""L_GRPO: verifiable rewards, group-relative advantages, the clipped surrogate, KL, aggregation.

The idea
--------
Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath, arXiv 2402.03300) drops
PPO's value network: for each prompt it samples a group of G completions from the current policy
(rollouts.py), scores them, and uses each completion's reward *relative to its own group* as the
advantage. UniAPL uses GRPO as its preference-seeking term, rewarded by verifiable instruction
checks (PAPER.md). Each equation sits above the function that computes it.

Choices where the paper is silent (ours, following TRL's GRPOTrainer conventions)
----------------------------------------------------------------------------------
* std is the unbiased group standard deviation (torch.std), as in TRL; a group whose rewards are
  all equal gets advantage 0 everywhere (counted in `zero_std_frac`).
* Aggregation: `token` (default) averages over every completion token of the step, so long and
  short completions weigh per token (DAPO, Yu et al. 2025, arXiv 2503.14476); `sequence` is the
  original GRPO mean of per-sequence means, which favours short completions per token. Dr. GRPO's
  constant normaliser is the third common choice; it differs from `token` by a constant factor.
  In TRL's terms our `token` is `loss_type="dapo"` and `sequence` is `loss_type="grpo"`.
* With one optimizer update per batch (`--num-iterations 1`, the default) pi_old = pi_theta at
  the update, so rho = 1, clipping never binds, and the gradient is the REINFORCE-with-baseline
  gradient A_i grad log pi. We therefore reuse the trainer's own log-probs, detached, as the old
  log-probs (no extra forward pass), not the sampler's: the two agree only up to numerics (under
  bf16 autocast the sampler reads bf16-rounded logits), so the step logs their gap
  (`sampler_gap`) instead of letting it bias the ratio. With --num-iterations > 1 the same
  rollouts serve several updates and the clip matters.
* The KL to a frozen reference is not inside L_GRPO here: it is the unified objective's fourth
  term, `+ beta * KL` with its own weight (train.py; `kl_penalty` below). TRL and the GRPO paper
  put it inside the GRPO loss, where a mix with SFT would weigh it by (1 - alpha). beta = 0 by
  default (no KL, no reference model loaded), as in TRL and DAPO.
* Truncated completions (no stop token within the length limit) keep their reward unless
  --mask-truncated removes them from the loss (DAPO's overlong filtering).
* Rewards come from the task's reward functions (tasks.py), in TRL's convention, summed with
  their weights; this file imports no task. IFEval's default gives partial credit (the share of
  satisfied instructions); the paper's is binary (every instruction satisfied or not),
  `--reward all`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from logprobs import sequence_logprobs

if TYPE_CHECKING:          # copied with sft.py, uniapl.py and logprobs.py, this file needs torch alone
    from rollouts import Rollouts

# r_i = sum_k w_k f_k(x_i, y_i)      over the reward functions f_k that score y_i (tasks.py):
# IFEval's default is the share of x's instructions y_i satisfies (0 if y_i is empty); the paper's
# is binary (every instruction satisfied, or not: --reward all)


def rewards(functions, rows: list[dict], texts: list[str]) -> tuple[torch.Tensor, dict]:
    """The verifier's reward of every completion: fp32 [R], and each function's mean.

    `functions`: (name, f, weight) triples (tasks.reward_functions), each f in TRL's convention
    f(prompts, completions, **fields) -> one float or None per completion, every field of the rows
    passed by name (one list entry per completion). None means "not mine": the weighted sum skips
    it, and a completion that no function scores raises ValueError naming its row's key."""
    prompts = [row["prompt"] for row in rows]
    fields = {k: [row.get(k) for row in rows] for k in rows[0] if k != "prompt"}
    total, scored, means = [0.0] * len(rows), [False] * len(rows), {}
    for name, f, weight in functions:
        values = list(f(prompts=prompts, completions=texts, **fields))
        if len(values) != len(rows):
            raise ValueError(f"reward {name}: {len(values)} values for {len(rows)} completions")
        mine = [v for v in values if v is not None]
        if mine:
            means[name] = sum(mine) / len(mine)
        for i, v in enumerate(values):
            if v is not None:
                total[i] += weight * float(v)
                scored[i] = True
    if not all(scored):
        row = rows[scored.index(False)]
        raise ValueError(f"row {row.get('key')!r}: no reward function scored its completion "
                         f"({', '.join(n for n, _, _ in functions)} all returned None)")
    return torch.tensor(total, dtype=torch.float32), means


# A_i = (r_i - mean_j r_j) / (std_j r_j + eps)       j over the G rollouts of the same prompt
# (--scale-rewards none: A_i = r_i - mean_j r_j)


def group_advantages(r: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages; [R] -> [R]. Groups are consecutive runs of `group_size`."""
    grouped = r.view(-1, group_size)                                            # [B, G]
    centered = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centered = centered / (grouped.std(1, keepdim=True) + eps)
    return centered.reshape(-1)


def completion_logprobs(model, rollouts: Rollouts, temperature: float,
                        backend: str = "auto") -> torch.Tensor:
    """log pi(y_t | x, y_<t) of every completion token at the sampling temperature: fp32 [R, L]."""
    input_ids, attention, score = rollouts.sequences()
    lp = sequence_logprobs(model, input_ids, attention, score, temperature, backend)  # [R, P+L-1]
    return lp[:, rollouts.prompt_ids.shape[1] - 1:]                                    # [R, L]


# rho_t = exp(log pi_theta(y_t) - log pi_old(y_t))
# s_t   = min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token surrogate and where the ratio clip binds; logp [R, L], advantages [R] ->
    [R, L] x 2. (L_ADV passes the adversarial coefficient c as the advantages.)"""
    ratio = torch.exp(logp - old_logp)                                          # [R, L]
    unclipped = ratio * advantages[:, None]
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages[:, None]
    return torch.minimum(unclipped, clipped), clipped < unclipped


# k3_t = exp(log pi_ref - log pi_theta) - (log pi_ref - log pi_theta) - 1     (Schulman's k3)
# Its VALUE, on tokens sampled from pi_theta, estimates KL(pi_theta || pi_ref). Its GRADIENT as a
# loss (samples held fixed) is (1 - pi_ref / pi_theta) grad log pi_theta, whose expectation under
# pi_theta is sum_y (pi_theta - pi_ref) grad log pi_theta = -E_{pi_ref}[grad log pi_theta]: the
# gradient of KL(pi_ref || pi_theta), the reverse direction. Both are zero at pi_theta = pi_ref.
# TRL's KL equals this only with use_bias_correction_kl=False; its default (True) reweights it by
# the ratio pi_theta / pi_old, which differs once the policy has moved within a batch.


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """An unbiased, always non-negative per-token estimate of KL(pi_theta || pi_ref) (its value;
    its gradient is that of KL(pi_ref || pi_theta), see above)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


# token:    L = sum_{i,t} m_it l_it / sum_{i,t} m_it
# sequence: L = (1/R) sum_i (sum_t m_it l_it / sum_t m_it)
# With several ranks the denominators are the global counts (parallel.py), passed as `total`.


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "token",
              total: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a per-token loss [R, L] to a scalar over the masked tokens. `total` replaces the
    local denominator (tokens for 'token', sequences for 'sequence') by the global one."""
    mask = mask.to(per_token.dtype)
    if loss_type == "token":
        return (per_token * mask).sum() / (mask.sum().clamp(min=1) if total is None else total)
    if loss_type == "sequence":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_seq.mean() if total is None else per_seq.sum() / total
    raise ValueError(f"unknown loss_type {loss_type!r} (token or sequence)")


def loss_units(mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """What `aggregate` divides by: masked tokens ('token') or sequences ('sequence')."""
    return mask.sum().clamp(min=1).float() if loss_type == "token" else \
        torch.tensor(float(mask.shape[0]), device=mask.device)


# L_GRPO = aggregate(-s_t)                 (L_ADV: the same with c_i in place of A_i; uniapl.py)


def policy_loss(logp, old_logp, advantages, mask, *, eps_low, eps_high, loss_type="token",
                total=None) -> torch.Tensor:
    """-(aggregated clipped surrogate); used by GRPO (advantages A) and ADV (the coefficient c)."""
    surrogate, _ = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    return aggregate(-surrogate, mask, loss_type, total)                        # [R, L] -> []


# KL = aggregate(k3_t)       the unified objective's fourth term, weighted by beta (train.py)


def kl_penalty(logp, ref_logp, mask, *, loss_type="token", total=None) -> torch.Tensor:
    """The k3 KL to the frozen reference, aggregated like the policy losses; [R, L] -> []."""
    return aggregate(kl_k3(logp, ref_logp), mask, loss_type, total)


def ratio_clip_frac(logp, old_logp, advantages, mask, *, eps_low, eps_high) -> float:
    """The fraction of tokens where the ratio clip binds (0 at --num-iterations 1: rho = 1)."""
    _, is_clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    return float((is_clipped & mask.bool()).sum() / mask.sum().clamp(min=1))


def sampler_gap(rollouts: Rollouts, logp: torch.Tensor) -> dict:
    """Mean and max |log p_sampler - log p_trainer| over completion tokens: ~1e-6 in fp32, larger
    under bf16 autocast (the sampler reads bf16-rounded logits). A growing gap means the rollouts
    no longer come from the policy being trained (e.g. stale weights in a rollout engine)."""
    if rollouts.sampler_logp is None:
        return {}
    gap = (rollouts.sampler_logp.to(logp.device) - logp).abs()[rollouts.completion_mask.bool()]
    return {"sampler_gap_mean": float(gap.mean()), "sampler_gap_max": float(gap.max())} \
        if gap.numel() else {}


def rollout_stats(r: torch.Tensor, rollouts: Rollouts) -> dict:
    """Mean reward, groups without signal, completion length, truncation: what to watch in GRPO."""
    grouped = r.view(-1, rollouts.group_size)
    return {"reward": float(r.mean()),
            "zero_std_frac": float((grouped.std(1) == 0).float().mean()) if rollouts.group_size > 1
            else 1.0,
            "completion_len": float(rollouts.completion_mask.sum(1).float().mean()),
            "truncated_frac": float(rollouts.truncated.float().mean())}
