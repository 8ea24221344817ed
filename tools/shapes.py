"""The real run's shapes without the hub: Qwen3-0.6B and POLAR-1.8B with random weights.

Benchmarks (tools/bench.py, tools/gpu_suite.py) and memory measurements (tools/memory.py) need
the real model sizes, not the real weights, and nothing here can download them. So this file
builds, from the public configs:

* Qwen3-0.6B's shape (596 M parameters, tied embeddings) as a `Qwen3ForCausalLM`;
* a tokenizer with exactly Qwen3's 151,936 ids, one word each (`word_tokenizer`): every id a
  random model samples decodes to one word and encodes back to one id, so rewards and the
  discriminator see texts of the real length;
* a POLAR-1.8B-shaped discriminator (InternLM2-1.8B as a Llama, random weights) scoring POLAR's
  input string at its real length;
* `shaped_world`: policy, tokenizer, rows and discriminator at the toy or the real shape, set up
  as train.py sets them up (train mode, activation checkpointing, the world's precision).
"""

from __future__ import annotations

import torch

import parallel
import settings

QWEN3_H, QWEN3_V = 1024, 151936  # Qwen3-0.6B's hidden size and vocabulary (its config.json)


# Qwen3-0.6B's shape (its config.json) and POLAR-1.8B's (InternLM2-1.8B), random weights.
QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=True)
POLAR_18B = dict(vocab_size=92544, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=8, rms_norm_eps=1e-5,
                 rope_theta=1_000_000.0, max_position_embeddings=32768)


def word_tokenizer(vocab_size: int):
    """A tokenizer with exactly `vocab_size` ids, one whitespace-separated word each, and the toy
    chat template: every id a random-weight model samples decodes to one word and encodes back
    to one id, so text lengths (rewards, the discriminator's inputs) are those of real rollouts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import toy
    specials = toy.SPECIAL_TOKENS
    words = sorted({w for r in toy.make_rows(200, seed=1) for w in (r["prompt"] + " " +
                                                                    r["response"]).split()})
    vocab = specials + words + [f"w{i}" for i in range(vocab_size - len(specials) - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="left")
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = toy.CHAT_TEMPLATE
    return fast


def random_polar(tokenizer, device, dtype):
    """A POLAR-1.8B-shaped scorer with random weights: times the discriminator honestly.

    Its input is POLAR's string (prompt, reference, <|reward|>, prompt, candidate, reward token)
    tokenized with the benchmark's tokenizer, ids wrapped into POLAR's vocabulary: the lengths
    are those of POLAR's real input, give or take the tokenizer.
    """
    from transformers import LlamaConfig, LlamaModel

    import discriminator as D
    polar = D.Polar.__new__(D.Polar)   # skip __init__: no files, random weights of the real shape
    with torch.device(device):
        polar.model = LlamaModel(LlamaConfig(**POLAR_18B)).to(dtype).eval().requires_grad_(False)
        polar.v_head = torch.nn.Linear(POLAR_18B["hidden_size"], 1, bias=False).requires_grad_(False)
    polar.device, polar.batch_size = device, 8
    polar.tokenizer = type("Pad", (), {"pad_id": 0})()

    def score(prompts, references, candidates):
        ids = [tokenizer(f"{p}\n{r} <|reward|> {p}\n{c}", add_special_tokens=False)["input_ids"]
               for p, r, c in zip(prompts, references, candidates)]
        return polar.score_ids([[1] + [i % POLAR_18B["vocab_size"] for i in x] + [92527] for x in ids])
    polar.score = score
    return polar


def shaped_world(shape: str, device: torch.device, s: settings.Settings):
    """(policy, tokenizer, rows, discriminator or None) at `shape`, random weights."""
    import toy
    import uniapl
    from discriminator import load_discriminator
    torch.manual_seed(0)
    if shape == "toy":
        tokenizer = toy.build_tokenizer()
        policy = toy.build_model(tokenizer).to(device)
    else:
        from transformers import Qwen3Config, Qwen3ForCausalLM
        tokenizer = word_tokenizer(QWEN3_06B["vocab_size"])
        cfg = Qwen3Config(**QWEN3_06B, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
        with torch.device(device):
            policy = Qwen3ForCausalLM(cfg)   # fp32 master weights; autocast does the rest
        policy.generation_config.eos_token_id = tokenizer.eos_token_id
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.train()
    if s.gradient_checkpointing:
        parallel.enable_activation_checkpointing(policy)
    rows, _ = toy.train_eval_rows(0, n_train=max(64, 4 * s.rl_batch_size), n_eval=1)
    objective = uniapl.objective(s)
    disc = None
    if objective.uses_discriminator:
        dtype = parallel.autocast_dtype(device, s.precision) or torch.float32
        disc = random_polar(tokenizer, device, dtype) if s.discriminator == "polar" else \
            load_discriminator(s.discriminator, None, device)
    return policy, tokenizer, rows, disc
