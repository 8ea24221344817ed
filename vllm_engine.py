"""The `vllm` rollout engine: an in-process vLLM on the policy's GPU, asleep while the policy trains.

    python train.py --model Qwen/Qwen3-0.6B --rollout-engine vllm    # auto picks it where installed

The idea
--------
vLLM (paged attention, continuous batching, CUDA graphs) samples several times faster than
`generate`. It shares the GPU with training ("colocated", as TRL's vllm_mode="colocate"): built
once in bf16 with sleep mode and *dummy* weights -- it never reads the checkpoint, so nothing can
overwrite the weights we push (the bug of TRL issue #5312) -- and each call then:

    free the training step's cached blocks (torch.cuda.empty_cache: vLLM allocates outside
    torch's cache, and TRL reports out-of-memory without it) -> wake the weights -> push every
    parameter of the policy from memory (buffers stay vLLM's own) -> reset the prefix cache (its
    KV blocks came from the old weights) -> wake the KV cache -> generate -> sleep (level 2:
    weights and KV cache freed for training, so every call pushes every parameter again)

Sampling maps onto SamplingParams as the plain distribution (temperature only; top-k 0, top-p 1,
min-p 0, no penalties; every stop id; max_tokens = the completion length). No per-request seed:
the engine is seeded once at creation (a shared per-request seed would give child j of every
group the same noise, and seeded requests take vLLM's slow sampling path). vLLM's own log p of
each drawn token becomes `sampler_logp` (logprobs_mode "processed_logprobs": after the
temperature, as the trainer computes it). An evaluation is one `generate` call for all prompts:
vLLM schedules them itself.

Versions: written against vLLM 0.10-0.33's source (logprobs_mode needs >= 0.10.2, sleep-mode tags
>= 0.8.3); vLLM pins its own torch and transformers (< 5.21), so it lives in its own environment
(docs/running.md). One engine per process (vLLM's memory allocator is a per-process singleton).
"""

from __future__ import annotations

import os
import socket

import torch

import rollouts

HELP = ("--rollout-engine vllm needs vLLM, which pins its own torch and transformers: install "
        "it in a separate environment (docs/running.md, 'Rollout engines'), e.g. pip install "
        "'vllm>=0.10.2', or use --rollout-engine static")


class VLLMEngine:
    name = "vllm"

    def __init__(self, llm, sampling_params_cls):
        self.llm, self.SamplingParams = llm, sampling_params_cls
        self.llm.sleep(level=2)

    def push_weights(self, model) -> list[str]:
        """Every parameter of the policy, by its HF name, into vLLM's model (which casts to its
        dtype and ties a tied head to the embedding it was given). Returns the names. No buffers:
        vLLM keeps its own (rotary frequencies) across sleep, and its loader raises KeyError for
        a name its model lacks, such as HF's `rotary_emb.original_inv_freq` (as TRL, parameters
        only)."""
        try:
            target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise SystemExit("--rollout-engine vllm: this vLLM version does not expose its model "
                             "in-process (llm_engine.model_executor.driver_worker.model_runner); "
                             "this file's docstring lists the versions the adapter was written for") from None
        tensors = list(model.named_parameters())
        target.load_weights((name, t.detach()) for name, t in tensors)
        return [name for name, _ in tensors]

    def generate(self, model, tokenizer, rows, num_generations, *, temperature=1.0,
                 max_new_tokens=64, greedy=False) -> rollouts.Rollouts:
        device = next(model.parameters()).device
        stops = rollouts.stop_token_ids(model, tokenizer)
        n = 1 if greedy else num_generations
        params = self.SamplingParams(
            n=n, temperature=0.0 if greedy else temperature, top_k=0, top_p=1.0, min_p=0.0,
            repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
            max_tokens=max_new_tokens, stop_token_ids=stops, ignore_eos=False, logprobs=0,
            detokenize=False)
        prompt_ids, prompt_mask = rollouts.encode_rows(tokenizer, rows, 1, device)     # [B, P]
        requests = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids, prompt_mask)]
        torch.cuda.empty_cache()          # give vLLM the blocks the training step cached
        self.llm.wake_up(tags=["weights"])
        self.push_weights(model)
        self.llm.reset_prefix_cache()
        self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
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
        return rollouts.make_rollouts(tokenizer, rows, n, prompt_ids.repeat_interleave(n, 0),
                                      prompt_mask.repeat_interleave(n, 0), completion, stops, logp)


def free_port() -> str:
    """A TCP port nobody listens on (vLLM's in-process executor joins a one-rank group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def make(device, *, model_path: str, seed: int = 0, max_model_len: int = 2048,
         gpu_memory_utilization: float = 0.3) -> VLLMEngine:
    """The engine for the policy saved (config and tokenizer only) at `model_path`."""
    try:
        import vllm
    except ImportError:
        raise SystemExit(HELP) from None
    if torch.device(device).type != "cuda":
        raise SystemExit("--rollout-engine vllm needs a CUDA GPU; on the CPU use hf")
    for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(var, value)   # external_launcher: the engine lives in this process
    os.environ.setdefault("MASTER_PORT", free_port())   # two runs on one node must not collide
    llm = vllm.LLM(model=model_path, dtype="bfloat16", enable_sleep_mode=True, seed=seed,
                   gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                   distributed_executor_backend="external_launcher", load_format="dummy",
                   generation_config="vllm", logprobs_mode="processed_logprobs",
                   skip_tokenizer_init=True)
    return VLLMEngine(llm, vllm.SamplingParams)
