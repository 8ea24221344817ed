"""Worlds written to disk in the hub's formats, made in code: a POLAR-format discriminator, a
Qwen3-format policy directory, and rows as google/IFEval and argilla/ifeval-like-data ship them.

Nothing here is fetched: every file is written in the format the hub ships, so that the real
loading code (from_pretrained on a directory, POLAR's conversion in polar.py, IFEval's and
argilla's row formats in data.py) runs offline -- in the tests at a tiny size, and in the GPU
suite (tools/gpu_suite.py) at Qwen3-0.6B's width and depth.
"""

import json
import pathlib

import torch

import toy

# ----------------------------------------------------------------------------------------------
# POLAR: a tiny InternLM2-format reward model (sentencepiece tokenizer, pickled or safetensors)
# ----------------------------------------------------------------------------------------------

CFG = {"architectures": ["InternLM2ForRewardModel"], "model_type": "internlm2", "bias": False,
       "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
       "num_key_value_heads": 2, "num_hidden_layers": 2, "rms_norm_eps": 1e-5,
       "rope_theta": 1000000, "rope_scaling": None, "max_position_embeddings": 32768,
       "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def write_polar_tokenizer(path):
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    import io

    import sentencepiece as spm
    corpus = ["The capital of China is Beijing.", "Shanghai is a large city.",
              "What is the capital of France? Paris.", "Answer briefly and clearly, please.",
              "numbers 1 2 3 and letters a b c"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=320,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   byte_fallback=True, minloglevel=2)
    (path / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    n = sp.get_piece_size()
    added = {str(n): {"content": "<|reward|>", "special": True},
             str(n + 1): {"content": "[UNUSED_TOKEN_130]", "special": True}}
    (path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    return n + 2, n + 1


def write_polar_checkpoint(path, fmt="bin", cfg_overrides=None):
    path = pathlib.Path(path)
    vocab, reward_id = write_polar_tokenizer(path)
    cfg = dict(CFG, vocab_size=vocab, reward_token_id=reward_id, **(cfg_overrides or {}))
    (path / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    H, I, nh, kv = cfg["hidden_size"], cfg["intermediate_size"], 4, 2
    d = H // nh
    sd = {"model.tok_embeddings.weight": torch.randn(vocab, H),
          "model.norm.weight": 1 + 0.1 * torch.randn(H), "v_head.weight": torch.randn(1, H),
          "output.weight": torch.randn(vocab, H)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "attention_norm.weight"] = 1 + 0.1 * torch.randn(H)
        sd[p + "ffn_norm.weight"] = 1 + 0.1 * torch.randn(H)
        sd[p + "attention.wqkv.weight"] = torch.randn((nh + 2 * kv) * d, H) / H ** 0.5
        sd[p + "attention.wo.weight"] = torch.randn(H, H) / H ** 0.5
        sd[p + "feed_forward.w1.weight"] = torch.randn(I, H) / H ** 0.5
        sd[p + "feed_forward.w3.weight"] = torch.randn(I, H) / H ** 0.5
        sd[p + "feed_forward.w2.weight"] = torch.randn(H, I) / I ** 0.5
    if fmt == "bin":
        torch.save(sd, path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path / "model.safetensors"))
    return cfg, sd


# ----------------------------------------------------------------------------------------------
# The real world, small: a Qwen3-format policy directory and rows in the hub's formats
# ----------------------------------------------------------------------------------------------

# Qwen3's chat format, written for these tests: one turn per message, and with
# enable_thinking=False the assistant's answer opens with an empty think block.
QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")


def write_qwen3_policy(path, hidden: int = 64, layers: int = 2, seed: int = 0, **shape):
    """A random Qwen3ForCausalLM + tokenizer saved like a hub model: two stop ids (<|im_end|>,
    <|endoftext|>) in its generation config, and Qwen3's shipped sampling defaults (which our
    rollouts must ignore). The toy tokenizer (so that rewards mean something); `shape` overrides
    the config (Qwen3-0.6B's width and depth: hidden 1024, 28 layers, see tools/shapes.py)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = toy.build_tokenizer()
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = QWEN3_STYLE_TEMPLATE
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Qwen3Config(**(dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=hidden // 4, max_position_embeddings=4096, rope_theta=1_000_000.0,
                             tie_word_embeddings=True) | shape),
                      eos_token_id=im_end, pad_token_id=eot, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id = [im_end, eot], eot
    gc.do_sample, gc.temperature, gc.top_k, gc.top_p = True, 0.6, 20, 0.95
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


# Every kwarg name any toy instruction uses: google/IFEval rows carry all of them, unused ones null.
IFEVAL_KWARG_NAMES = ["keywords", "keyword", "frequency", "relation", "forbidden_words",
                      "num_words", "end_phrase", "postscript_marker", "capital_frequency",
                      "capital_relation"]


def _padded_kwargs(kwargs: list[dict]) -> list[dict]:
    return [{k: kw.get(k) for k in IFEVAL_KWARG_NAMES} for kw in kwargs]


def write_ifeval_rows(path, rows: list[dict]) -> None:
    """google/IFEval's format: no response, every kwargs dict with every key (nulls)."""
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"key": 1000 + i, "prompt": r["prompt"],
                                "instruction_id_list": r["instruction_id_list"],
                                "kwargs": _padded_kwargs(r["kwargs"])}) + "\n")


def write_argilla_rows(path, rows: list[dict]) -> None:
    """argilla/ifeval-like-data's format: kwargs as a JSON string, integer keys, extra columns."""
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"key": i, "prompt": r["prompt"], "response": r["response"],
                                "instruction_id_list": r["instruction_id_list"],
                                "kwargs": json.dumps(_padded_kwargs(r["kwargs"])),
                                "prompt_level_strict_acc": True}) + "\n")
