"""L_SFT: imitation of the teacher's demonstrations.

The idea
--------
Supervised fine-tuning maximises the likelihood of expert responses y^E given their prompts x.
In UniAPL it is the "demonstrated preference" half of post-training (PAPER.md), and it enters the
unified objective with weight alpha: the token-level mean negative log-likelihood over every
response token of the batch (the closing EOS included, so the model learns to stop), at
temperature 1 (the equation sits beside the line that computes it).

Choices
-------
* Only response tokens are scored; prompt positions are never sent to the LM head (the hidden
  states are gathered first, see logprobs.sequence_logprobs), which also saves their logits.
* Token-level mean over the batch (not a mean of per-sequence means), matching the token-level
  aggregation of L_GRPO and L_ADV so that alpha weighs like with like.
* Demonstrations longer than --max-completion-length are cut (and counted in sft/truncated);
  the cut response then has no EOS to learn.
* For a model that is not a Hugging Face one, `sft_loss_from_logits` is the same loss from the
  model's own logits (simpler, but it materialises [B, T, V] logits that the chunked path avoids).
* CHORD-phi (arXiv 2508.11408) weights each token's NLL by phi = p (1 - p), p = pi_theta(token),
  detached: tokens the policy already predicts well (p -> 1) or finds very unlikely (p -> 0)
  count little, those in between most (at most 0.25). It is still divided by the token count,
  as CHORD's published code does, so the phi-weighted term is at most a quarter of plain NLL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from logprobs import sequence_logprobs

if TYPE_CHECKING:          # copied with grpo.py, uniapl.py and logprobs.py, this file needs torch alone
    from data import DemoBatch


def sft_loss(model, batch: DemoBatch, backend: str = "auto", total: torch.Tensor | None = None,
             weighting: str = "nll") -> torch.Tensor:
    """Token-mean NLL of the teacher's response tokens ("phi": CHORD's phi-weighted NLL).
    `total`: the number of response tokens of the whole step, when several ranks or micro-batches
    share it (their losses then sum to the whole batch's)."""
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)                                      # [B, T]
    attention = batch.attention_mask.to(device)                                 # [B, T]
    score = batch.score_mask.to(device)                                         # [B, T]
    logp = sequence_logprobs(model, input_ids, attention, score, 1.0, backend)  # [B, T-1]
    mask = score[:, 1:].to(logp.dtype)                                          # [B, T-1]
    if weighting == "phi":   # phi_t = p_t (1 - p_t), detached: a weight, not a path for gradient
        p = logp.detach().exp()
        mask = mask * p * (1 - p)
    # L_SFT = -(1 / sum_i |y_i|) sum_i sum_t w_t log pi_theta(y_{i,t} | x_i, y_{i,<t}),  y = y^E,
    #         w_t = 1 (plain NLL) or phi_t (CHORD-phi); always divided by the token count
    tokens = score[:, 1:].sum().clamp(min=1) if total is None else total
    return -(logp * mask).sum() / tokens


def sft_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same L_SFT (plain NLL) from any model's logits [B, T, V]: `labels` [B, T] are the input
    ids, `mask` [B, T] is 1 on the response tokens to score (each predicted from the position before)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)                       # [B, T-1, V]
    token_logp = logp.gather(-1, labels[:, 1:, None]).squeeze(-1)                   # [B, T-1]
    m = mask[:, 1:].to(token_logp.dtype)
    return -(token_logp * m).sum() / m.sum().clamp(min=1)
