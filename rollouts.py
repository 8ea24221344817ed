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

import os
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
             temperature: float = 1.0, max_new_tokens: int = 64, greedy: bool = False,
             static_cache: bool = False, prompt_width: int = 0, compile_config=None) -> Rollouts:
    """G completions per row's prompt with HF generate and its KV cache (dynamic, or static at a
    fixed prompt width); records stops, truncation and the sampler's log p."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = data.encode_prompts(tokenizer, [r["prompt"] for r in rows],
                                                  min_width=prompt_width)       # [B, P]
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
    if static_cache:   # one cache shape [R, P + max_new_tokens]: compiled once, never regrown
        sampling |= dict(cache_implementation="static", compile_config=compile_config)
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
    return _rollouts(tokenizer, rows, num_generations, prompt_ids, prompt_mask, completion, stops, logp)


def _rollouts(tokenizer, rows, num_generations, prompt_ids, prompt_mask, completion, stops,
              sampler_logp) -> Rollouts:
    """Masks, truncation flags and texts of sampled completions, whichever engine drew them."""
    mask, truncated = completion_masks(completion, stops)
    lengths = mask.sum(1).tolist()
    texts = tokenizer.batch_decode([c[:n].tolist() for c, n in zip(completion, lengths)],
                                   skip_special_tokens=True)
    return Rollouts([r for r in rows for _ in range(num_generations)], prompt_ids, prompt_mask,
                    completion, mask, truncated, texts, num_generations, sampler_logp)


# ----------------------------------------------------------------------------------------------
# Engines: one interface, three ways to sample (the same distribution)
# ----------------------------------------------------------------------------------------------

@dataclass
class HFEngine:
    """`hf`: HF generate with the dynamic KV cache (the reference; the CPU default).
    `hf-static`: a static KV cache of one shape -- prompts left-padded to `prompt_width`, so the
    cache is [R, prompt_width + max_new_tokens] every step -- which generate compiles with
    torch.compile on CUDA once and reuses (a cache that had to grow would recompile)."""
    static_cache: bool = False
    prompt_width: int = 0
    compile_config: object = None
    name: str = "hf"

    def generate(self, model, tokenizer, rows, num_generations, *, temperature=1.0,
                 max_new_tokens=64, greedy=False) -> Rollouts:
        return generate(model, tokenizer, rows, num_generations, temperature=temperature,
                        max_new_tokens=max_new_tokens, greedy=greedy,
                        static_cache=self.static_cache, prompt_width=self.prompt_width,
                        compile_config=self.compile_config)


VLLM_HELP = ("--rollout-engine vllm needs vLLM, which pins its own torch and transformers: install "
             "it in a separate environment (README, 'Rollout engines'), e.g. pip install "
             "'vllm>=0.10.2', or use --rollout-engine hf-static")


class VLLMEngine:
    """`vllm`: an in-process vLLM engine on the policy's GPU, asleep while the policy trains.

    Each call: wake the weights -> push the policy's current parameters (from memory, never the
    checkpoint on disk) -> reset the prefix cache (its KV blocks came from the old weights) ->
    wake the KV cache -> generate -> sleep (level 2: weights and KV cache freed for training).
    Sampling maps onto SamplingParams as the plain distribution (temperature only; top-k 0,
    top-p 1, min-p 0, no penalties; every stop id; max_tokens = the completion length), and
    vLLM's own log p of each drawn token becomes `sampler_logp` (logprobs_mode
    "processed_logprobs": after the temperature, as the trainer computes it).
    """
    name = "vllm"

    def __init__(self, llm, sampling_params_cls, seed: int = 0):
        self.llm, self.SamplingParams, self.seed = llm, sampling_params_cls, seed
        self.llm.sleep(level=2)

    def push_weights(self, model) -> None:
        """The policy's parameters, by their HF names, into vLLM's model (cast to its dtype).
        A tied head is not pushed on its own: named_parameters lists the shared tensor once."""
        try:
            target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise SystemExit("--rollout-engine vllm: this vLLM version does not expose its model "
                             "in-process (llm_engine.model_executor.driver_worker.model_runner); "
                             "README lists the versions this adapter was written for") from None
        target.load_weights((name, p.detach()) for name, p in model.named_parameters())

    def generate(self, model, tokenizer, rows, num_generations, *, temperature=1.0,
                 max_new_tokens=64, greedy=False) -> Rollouts:
        device = next(model.parameters()).device
        prompts = [r["prompt"] for r in rows]
        ids = [tokenizer(data.chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
               for p in prompts]
        stops = stop_token_ids(model, tokenizer)
        n = 1 if greedy else num_generations
        params = self.SamplingParams(
            n=n, temperature=0.0 if greedy else temperature, top_k=0, top_p=1.0, min_p=0.0,
            repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
            max_tokens=max_new_tokens, stop_token_ids=stops, ignore_eos=False, logprobs=0,
            detokenize=False, seed=int(torch.randint(2**31 - 1, (1,))))
        self.llm.wake_up(tags=["weights"])
        self.push_weights(model)
        self.llm.reset_prefix_cache()
        self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params,
                                        use_tqdm=False)
        finally:
            self.llm.sleep(level=2)
        samples = [o for request in outputs for o in request.outputs]      # prompt-major, n each
        width = max(1, max(len(o.token_ids) for o in samples))
        pad = tokenizer.pad_token_id
        completion = torch.tensor([list(o.token_ids) + [pad] * (width - len(o.token_ids))
                                   for o in samples], device=device)                   # [R, L]
        logp = None if greedy else torch.tensor(
            [[d[t].logprob for t, d in zip(o.token_ids, o.logprobs)] + [0.0] * (width - len(o.token_ids))
             for o in samples], dtype=torch.float32, device=device)                    # [R, L]
        prompt_ids, prompt_mask = data.encode_prompts(tokenizer, prompts)
        prompt_ids = prompt_ids.repeat_interleave(n, 0).to(device)                     # [R, P]
        prompt_mask = prompt_mask.repeat_interleave(n, 0).to(device)
        return _rollouts(tokenizer, rows, n, prompt_ids, prompt_mask, completion, stops, logp)


def make_engine(name: str, device, *, model_path: str | None = None, prompt_width: int = 0,
                max_model_len: int = 2048, gpu_memory_utilization: float = 0.3, seed: int = 0):
    """'auto' | 'hf' | 'hf-static' | 'vllm' -> an engine; 'auto' says what it chose and why."""
    if name == "auto":
        if getattr(device, "type", device) != "cuda":
            name = "hf"
        else:
            import importlib.util
            name = "vllm" if importlib.util.find_spec("vllm") else "hf-static"
            if name != "vllm":
                print("[rollouts] vLLM is not installed, so rollouts use hf-static (README, "
                      "'Rollout engines')")
    if name == "hf":
        return HFEngine()
    if name == "hf-static":
        return HFEngine(static_cache=True, prompt_width=prompt_width, name="hf-static")
    if name != "vllm":
        raise ValueError(f"unknown rollout engine {name!r} (auto, hf, hf-static or vllm)")
    try:
        import vllm
    except ImportError:
        raise SystemExit(VLLM_HELP) from None
    if getattr(device, "type", device) != "cuda":
        raise SystemExit("--rollout-engine vllm needs a CUDA GPU; on the CPU use hf")
    for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
        os.environ.setdefault(var, value)   # external_launcher: the engine lives in this process
    llm = vllm.LLM(model=model_path, dtype="bfloat16", enable_sleep_mode=True, seed=seed,
                   gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                   distributed_executor_backend="external_launcher", load_format="dummy",
                   generation_config="vllm", logprobs_mode="processed_logprobs",
                   skip_tokenizer_init=True)
    return VLLMEngine(llm, vllm.SamplingParams, seed)
