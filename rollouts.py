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
`generation_config` says (Qwen3 ships temperature 0.6, top-k 20, top-p 0.95), and generation stops
at *every* end-of-sequence id the tokenizer or the generation config lists (Qwen3 lists
`<|im_end|>` and `<|endoftext|>`).

The same distribution, up to numerics: the sampler's logits come from a KV-cached forward (in
bf16 on a GPU), the trainer recomputes fp32-accumulated log-probs over the whole sequence. So each
rollout also records the sampler's own log p of every token it drew (`sampler_logp`), and the
training step logs the gap |log p_sampler - log p_trainer| -- the first thing to look at when a
run diverges.

Engines (one interface: `generate(model, tokenizer, rows, G, ...) -> Rollouts`; engines.py chooses)
-----------------------------------------------------------------------------------------------
* `hf` -- `model.generate` with its dynamic KV cache (below): the reference, and the CPU default.
* `static` -- static_engine.py: a bf16 copy of the policy, one static KV cache, the decode step
  compiled once into CUDA graphs; the fast default on a GPU without vLLM.
* `vllm` -- vllm_engine.py: an in-process vLLM engine, fastest where installed.
What they share lives here: the record, the stop ids, the masks and texts of sampled tokens, the
prompts' encoding, and the concatenation of several calls' rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

import data


@dataclass
class Rollouts:
    rows: list[dict]               # the R = B x G rows answered (each prompt's row repeated G times)
    prompt_ids: torch.Tensor       # [R, P]  left-padded to the longest prompt, no wider
    prompt_mask: torch.Tensor      # [R, P]
    completion_ids: torch.Tensor   # [R, L]
    completion_mask: torch.Tensor  # [R, L]  1 up to and including the first stop token
    truncated: torch.Tensor        # [R]     bool: no stop token within the length limit
    texts: list[str]               # decoded completions, special tokens removed
    group_size: int                # G: rollouts i*G .. i*G+G-1 answer the same prompt
    sampler_logp: torch.Tensor | None = None   # [R, L] fp32: log p of each drawn token, as sampled

    def select(self, rows: slice) -> Rollouts:
        """Rollouts `rows` (a micro-batch), without prompt columns that are padding in all of them."""
        mask = self.prompt_mask[rows]
        keep = mask.bool().any(0)
        first = int(keep.int().argmax()) if bool(keep.any()) else 0
        logp = None if self.sampler_logp is None else self.sampler_logp[rows]
        return Rollouts(self.rows[rows], self.prompt_ids[rows, first:], mask[:, first:],
                        self.completion_ids[rows], self.completion_mask[rows], self.truncated[rows],
                        self.texts[rows], self.group_size, logp)

    def take(self, index: list[int]) -> Rollouts:
        """Rollouts `index`, in that order (an engine that answered them in another order)."""
        at = torch.tensor(index, dtype=torch.long)
        pick = lambda t: None if t is None else t[at.to(t.device)]  # noqa: E731
        return Rollouts([self.rows[i] for i in index], pick(self.prompt_ids), pick(self.prompt_mask),
                        pick(self.completion_ids), pick(self.completion_mask), pick(self.truncated),
                        [self.texts[i] for i in index], self.group_size, pick(self.sampler_logp))

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


def make_rollouts(tokenizer, rows, num_generations, prompt_ids, prompt_mask, completion, stops,
                  sampler_logp) -> Rollouts:
    """Masks, truncation flags and texts of sampled completions, whichever engine drew them.
    Prompt columns that are padding in every row are dropped: the losses never pay for them."""
    mask, truncated = completion_masks(completion, stops)
    lengths = mask.sum(1).tolist()
    texts = tokenizer.batch_decode([c[:n].tolist() for c, n in zip(completion, lengths)],
                                   skip_special_tokens=True)
    return Rollouts([r for r in rows for _ in range(num_generations)], prompt_ids, prompt_mask,
                    completion, mask, truncated, texts, num_generations,
                    sampler_logp).select(slice(None))


def encode_rows(tokenizer, rows, num_generations: int, device):
    """Chat-templated prompts, left-padded to the longest, each repeated G times: [R, P] x 2."""
    ids, mask = data.encode_prompts(tokenizer, [r["prompt"] for r in rows])              # [B, P]
    return (ids.repeat_interleave(num_generations, 0).to(device),
            mask.repeat_interleave(num_generations, 0).to(device))


# ----------------------------------------------------------------------------------------------
# hf: transformers' generate (the reference)
# ----------------------------------------------------------------------------------------------

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
    """G completions per row's prompt with HF generate and its dynamic KV cache; records stops,
    truncation and the sampler's log p."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_rows(tokenizer, rows, num_generations, device)   # [R, P]
    stops = stop_token_ids(model, tokenizer)
    recorder = None if greedy else TemperatureAndRecord(temperature)
    was_training, shipped = model.training, model.generation_config
    # A clean generation config: generate fills every setting we leave unset from the model's
    # own config, so the shipped sampling defaults are swapped out for this call.
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    model.eval()   # transformers turns the cache off for a training module with checkpointing
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
    logp = recorder.finish(completion) if recorder else None
    return make_rollouts(tokenizer, rows, num_generations, prompt_ids, prompt_mask, completion,
                         stops, logp)


@dataclass
class HFEngine:
    """`hf`: HF generate with the dynamic KV cache (the reference; the CPU default). A call of
    many prompts (an evaluation) is answered `batch_size` prompts at a time."""
    batch_size: int = 32
    name: str = "hf"

    def generate(self, model, tokenizer, rows, num_generations, *, temperature=1.0,
                 max_new_tokens=64, greedy=False) -> Rollouts:
        n = self.batch_size
        parts = [generate(model, tokenizer, rows[i:i + n], num_generations, temperature=temperature,
                          max_new_tokens=max_new_tokens, greedy=greedy)
                 for i in range(0, len(rows), n)]
        return concat_rollouts(parts, tokenizer)


def concat_rollouts(parts: list[Rollouts], tokenizer) -> Rollouts:
    """One Rollouts from several batches: prompts left-padded, completions right-padded."""
    if len(parts) == 1:
        return parts[0]
    pad = tokenizer.pad_token_id
    P = max(p.prompt_ids.shape[1] for p in parts)
    L = max(p.completion_ids.shape[1] for p in parts)
    left = lambda t, v: torch.nn.functional.pad(t, (P - t.shape[1], 0), value=v)   # noqa: E731
    right = lambda t, v: torch.nn.functional.pad(t, (0, L - t.shape[1]), value=v)  # noqa: E731
    logp = None if parts[0].sampler_logp is None else \
        torch.cat([right(p.sampler_logp, 0.0) for p in parts])
    return Rollouts(sum((p.rows for p in parts), []),
                    torch.cat([left(p.prompt_ids, pad) for p in parts]),
                    torch.cat([left(p.prompt_mask, 0) for p in parts]),
                    torch.cat([right(p.completion_ids, pad) for p in parts]),
                    torch.cat([right(p.completion_mask, 0) for p in parts]),
                    torch.cat([p.truncated for p in parts]), sum((p.texts for p in parts), []),
                    parts[0].group_size, logp)
