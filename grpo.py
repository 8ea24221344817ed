"""L_GRPO: rollouts, verifiable rewards, group-relative advantages, the clipped surrogate, KL.

The idea
--------
Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) drops PPO's value network:
for each prompt x it samples a group of G completions y_1..y_G from the current policy, scores
them, and uses each completion's reward relative to its own group as the advantage. UniAPL uses
GRPO as its preference-seeking term, rewarded by verifiable instruction checks (PAPER.md).

    r_i   = fraction of x's instructions that y_i satisfies   (ifeval.reward, strict; 0 if empty)
    A_i   = (r_i - mean_j r_j) / (std_j r_j + 1e-4)            (--scale-rewards none: no division)
    rho_t = exp(log pi_theta(y_t) - log pi_old(y_t))           per completion token
    s_t   = min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i)
    k3_t  = exp(log pi_ref - log pi_theta) - (log pi_ref - log pi_theta) - 1
    L_GRPO = - sum_{i,t} m_it (s_t - beta k3_t) / sum_{i,t} m_it   (token-level mean, DAPO)

Choices where the paper is silent (ours, following TRL's GRPOTrainer conventions)
----------------------------------------------------------------------------------
* std is the unbiased group standard deviation (torch.std), as in TRL; a group whose rewards are
  all equal gets advantage 0 everywhere (and is counted in `grpo/zero_std_frac`).
* Aggregation: `token` (default) averages over every completion token of the step, so long and
  short completions weigh per token (DAPO, Yu et al. 2025); `sequence` is the original GRPO mean
  of per-sequence means, which favours short completions per token. Dr. GRPO's constant
  normaliser is the third common choice; it differs from `token` only by a constant factor.
* With one optimizer update per batch (`--num-iterations 1`, the default) pi_old = pi_theta at
  the update, so rho = 1, clipping never binds, and the gradient is the REINFORCE-with-baseline
  gradient A_i grad log pi. We therefore reuse the policy's own log-probs, detached, as the old
  log-probs (no extra forward pass). With --num-iterations > 1 the same rollouts serve several
  updates and the clip matters.
* beta = 0 by default (no KL, no reference model loaded), as in TRL and DAPO.
* Sampling is plain ancestral sampling at temperature tau with top-k and top-p disabled, so that
  the log-probs we train on are exactly the sampling distribution's (a model's generation_config
  may ship top_k/top_p, which generate would otherwise apply silently).
* Truncated completions (no EOS within --max-completion-length) keep their reward unless
  --mask-truncated removes them from the loss (DAPO's overlong filtering).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import data
import ifeval
from logprobs import sequence_logprobs


@dataclass
class Rollouts:
    prompt_ids: torch.Tensor       # [R, P]  left-padded, R = prompts x G
    prompt_mask: torch.Tensor      # [R, P]
    completion_ids: torch.Tensor   # [R, L]
    completion_mask: torch.Tensor  # [R, L]  1 up to and including the first EOS
    truncated: torch.Tensor        # [R]     bool: no EOS within max_new_tokens
    texts: list[str]               # decoded completions, special tokens removed
    group_size: int

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, score_mask) of prompt + completion, each [R, P + L]."""
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], 1)
        attention = torch.cat([self.prompt_mask, self.completion_mask], 1)
        score = torch.cat([torch.zeros_like(self.prompt_mask), self.completion_mask], 1)
        return input_ids, attention, score


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids: the tokenizer's, plus any the model's generation config lists (Qwen3 lists two)."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(extra if isinstance(extra, (list, tuple)) else [extra] if extra is not None else [])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], num_generations: int, *,
             temperature: float = 1.0, max_new_tokens: int = 64, greedy: bool = False) -> Rollouts:
    """G completions per prompt with the KV cache, in eval mode; records EOS and truncation."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = data.encode_prompts(tokenizer, prompts)           # [B, P]
    prompt_ids = prompt_ids.repeat_interleave(num_generations, 0).to(device)    # [R, P]
    prompt_mask = prompt_mask.repeat_interleave(num_generations, 0).to(device)  # [R, P]
    stops = stop_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0,
                                  "min_p": None}
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=not greedy,
                         max_new_tokens=max_new_tokens, eos_token_id=stops,
                         pad_token_id=tokenizer.pad_token_id, repetition_penalty=1.0,
                         use_cache=True, **sampling)
    model.train(was_training)
    completion = out[:, prompt_ids.shape[1]:]                                   # [R, L]
    is_stop = torch.isin(completion, torch.tensor(stops, device=device))        # [R, L]
    has_stop = is_stop.any(1)                                                   # [R]
    length = torch.where(has_stop, is_stop.int().argmax(1) + 1, completion.shape[1])  # incl. EOS
    mask = (torch.arange(completion.shape[1], device=device)[None] < length[:, None]).long()
    texts = tokenizer.batch_decode([c[:n].tolist() for c, n in zip(completion, length)],
                                   skip_special_tokens=True)
    return Rollouts(prompt_ids, prompt_mask, completion, mask, ~has_stop, texts, num_generations)


def rewards(rows: list[dict], rollouts: Rollouts) -> torch.Tensor:
    """ifeval.reward of every completion against its prompt's instructions: fp32 [R]."""
    g = rollouts.group_size
    return torch.tensor([ifeval.reward(text, rows[i // g]["instruction_id_list"],
                                       rows[i // g]["kwargs"], rows[i // g]["prompt"])
                         for i, text in enumerate(rollouts.texts)], dtype=torch.float32)


def group_advantages(r: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - group mean) / (group std + eps); [R] -> [R]. Groups are consecutive."""
    grouped = r.view(-1, group_size)                                            # [B, G]
    centered = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centered = centered / (grouped.std(1, keepdim=True) + eps)
    return centered.reshape(-1)


def completion_logprobs(model, rollouts: Rollouts, temperature: float,
                        backend: str = "auto") -> torch.Tensor:
    """log pi(y_t) of every completion token at the sampling temperature: fp32 [R, L]."""
    input_ids, attention, score = rollouts.sequences()
    lp = sequence_logprobs(model, input_ids, attention, score, temperature, backend)  # [R, P+L-1]
    return lp[:, rollouts.prompt_ids.shape[1] - 1:]                                    # [R, L]


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, coef: torch.Tensor,
                      eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token min(rho A, clip(rho) A) and where the clip is active; [R, L], coef [R]."""
    ratio = torch.exp(logp - old_logp)                                          # [R, L]
    unclipped = ratio * coef[:, None]
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * coef[:, None]
    return torch.minimum(unclipped, clipped), clipped < unclipped


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref), per token, always >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "token") -> torch.Tensor:
    """Token-level mean over all masked tokens ('token'), or mean of per-sequence means."""
    mask = mask.to(per_token.dtype)
    if loss_type == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if loss_type == "sequence":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    raise ValueError(f"unknown loss_type {loss_type!r} (token or sequence)")


def policy_loss(logp, old_logp, coef, mask, *, eps_low=0.2, eps_high=0.2, beta=0.0,
                ref_logp=None, loss_type="token") -> tuple[torch.Tensor, dict]:
    """-(aggregated clipped surrogate) + beta * KL; used by GRPO (coef = A) and ADV (coef = c)."""
    surrogate, is_clipped = clipped_surrogate(logp, old_logp, coef, eps_low, eps_high)
    per_token = -surrogate                                                      # [R, L]
    stats = {"clip_frac": float((is_clipped & mask.bool()).sum() / mask.sum().clamp(min=1))}
    if beta:
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float(aggregate(kl.detach(), mask, loss_type))
    return aggregate(per_token, mask, loss_type), stats


def rollout_stats(r: torch.Tensor, rollouts: Rollouts) -> dict:
    """What DESIGN §3.3 asks to log: reward, groups without signal, lengths, truncation."""
    grouped = r.view(-1, rollouts.group_size)
    return {"reward": float(r.mean()),
            "zero_std_frac": float((grouped.std(1) == 0).float().mean()) if rollouts.group_size > 1
            else 1.0,
            "completion_len": float(rollouts.completion_mask.sum(1).float().mean()),
            "truncated_frac": float(rollouts.truncated.float().mean())}
