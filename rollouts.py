"""Rollouts: G completions per prompt, sampled from the current policy, with what the losses need.

The idea
--------
GRPO (and L_ADV) learn from the policy's own samples. For each prompt row x we draw G completions
y_1..y_G from pi_theta at temperature tau, and keep, per completion, its token ids, a mask up to
and including the first stop token, whether it was cut at the length limit, and its decoded text.
The `Rollouts` object carries the rows it answers, so every later stage (reward, discriminator,
loss) reads the prompt, the instructions and the teacher's reference from the rollout itself
instead of re-joining them by index arithmetic.

Sampling is plain ancestral sampling from the distribution the losses differentiate:

    y_t ~ softmax(z_t / tau),   z_t = the policy's logits at step t

with top-k, top-p, min-p and the repetition penalty switched off, whatever the model's shipped
`generation_config` says (Qwen3 ships temperature 0.6, top-k 20, top-p 0.95, which `generate` would
otherwise apply silently: we generate with a clean config), and generation stops at *every*
end-of-sequence id the tokenizer or the generation config lists (Qwen3 lists `<|im_end|>` and
`<|endoftext|>`).

The same distribution, up to numerics: the sampler reads the logits of a KV-cached forward (under
bf16 autocast, logits rounded to bf16), the trainer recomputes fp32-accumulated log-probs over the
whole sequence. So each rollout also records the sampler's own log p of every token it drew
(`sampler_logp`), and the training step logs the gap |log p_sampler - log p_trainer| -- the first
thing to look at when a run diverges.

Engine: `model.generate` with the dynamic KV cache, in eval mode (transformers turns the cache off
for a training module with gradient checkpointing), and the previous mode restored afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

import data


@dataclass
class Rollouts:
    rows: list[dict]               # the R = B x G rows answered (each prompt's row repeated G times)
    prompt_ids: torch.Tensor       # [R, P]  left-padded
    prompt_mask: torch.Tensor      # [R, P]
    completion_ids: torch.Tensor   # [R, L]
    completion_mask: torch.Tensor  # [R, L]  1 up to and including the first stop token
    truncated: torch.Tensor        # [R]     bool: no stop token within the length limit
    texts: list[str]               # decoded completions, special tokens removed
    group_size: int                # G: rollouts i*G .. i*G+G-1 answer the same prompt
    sampler_logp: torch.Tensor | None = None   # [R, L] fp32: log p of each drawn token, as sampled

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


def completion_masks(completion: torch.Tensor, stops: list[int]):
    """Mask up to and including the first stop token, and whether none came: [R, L], [R]."""
    is_stop = torch.isin(completion, torch.tensor(stops, device=completion.device))  # [R, L]
    has_stop = is_stop.any(1)                                                         # [R]
    length = torch.where(has_stop, is_stop.int().argmax(1) + 1, completion.shape[1])  # incl. stop
    mask = (torch.arange(completion.shape[1], device=completion.device)[None] < length[:, None])
    return mask.long(), ~has_stop


class TemperatureAndRecord(LogitsProcessor):
    """The temperature warper, recording log p of every token the sampler then draws.

    generate calls it once per new token, before sampling: z -> z / tau. Its log-softmax is kept
    until the next call, whose input_ids end with the token drawn from it ([R, V] held, not L x V).
    """

    def __init__(self, temperature: float):
        self.temperature, self.pending, self.logp = temperature, None, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.logp.append(self.pending.gather(1, input_ids[:, -1:]))         # [R, 1]
        scores = scores / self.temperature                                      # [R, V]
        self.pending = torch.log_softmax(scores.float(), -1)
        return scores

    def finish(self, completion: torch.Tensor) -> torch.Tensor:
        """log p of every completion token, fp32 [R, L] (the last one is still pending)."""
        self.logp.append(self.pending.gather(1, completion[:, -1:]))
        self.pending = None
        return torch.cat(self.logp, 1)


@torch.no_grad()
def generate(model, tokenizer, rows: list[dict], num_generations: int, *,
             temperature: float = 1.0, max_new_tokens: int = 64, greedy: bool = False) -> Rollouts:
    """G completions per row's prompt with the KV cache; records stops, truncation, sampler log p."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = data.encode_prompts(tokenizer, [r["prompt"] for r in rows])  # [B, P]
    prompt_ids = prompt_ids.repeat_interleave(num_generations, 0).to(device)    # [R, P]
    prompt_mask = prompt_mask.repeat_interleave(num_generations, 0).to(device)  # [R, P]
    stops = stop_token_ids(model, tokenizer)
    recorder = None if greedy else TemperatureAndRecord(temperature)
    was_training, shipped = model.training, model.generation_config
    # A clean generation config: generate fills every setting we leave unset from the model's
    # own config, so the shipped sampling defaults are swapped out for this call.
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    # temperature lives in the recorder; every other warper is switched off
    sampling = {} if greedy else dict(temperature=1.0, top_k=0, top_p=1.0,
                                      logits_processor=LogitsProcessorList([recorder]))
    try:
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=not greedy,
                             max_new_tokens=max_new_tokens, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id, use_cache=True,
                             repetition_penalty=1.0, **sampling)
    finally:
        model.generation_config = shipped
        model.train(was_training)
    completion = out[:, prompt_ids.shape[1]:]                                   # [R, L]
    mask, truncated = completion_masks(completion, stops)
    lengths = mask.sum(1).tolist()
    texts = tokenizer.batch_decode([c[:n].tolist() for c, n in zip(completion, lengths)],
                                   skip_special_tokens=True)
    return Rollouts([r for r in rows for _ in range(num_generations)], prompt_ids, prompt_mask,
                    completion, mask, truncated, texts, num_generations,
                    recorder.finish(completion) if recorder else None)
