"""POLAR's files, read without remote code: its tokenizer, and its InternLM2 weights as a stock
transformers LlamaModel plus a value head.

InternLM's POLAR reward models (internlm/POLAR-1_8B, POLAR-7B; arXiv 2507.05197) ship as
`InternLM2ForRewardModel`, whose hub code needs `trust_remote_code` and is reported to break on
transformers 5. The architecture is a Llama decoder with other weight names and a fused
query/key/value matrix, so this file converts the weights at load time (the key map and the
fused `wqkv` layout sit above `convert_internlm2_state_dict`) and never executes code from the
hub: safetensors, or pickled `.bin` shards through torch.load(weights_only=True). The tokenizer
is its sentencepiece model plus the added tokens of tokenizer_config.json. How a score is asked
for (POLAR's input string) is the scoring idea, in discriminator.py.
"""

from __future__ import annotations

import glob
import json
import os
import re

import torch

MAX_LENGTH = 16384          # tokens of POLAR's whole input (its client's budget)
REWARD_TOKEN = "[UNUSED_TOKEN_130]"


class PolarTokenizer:
    """InternLM2's tokenizer from its files, without remote code: sentencepiece + added tokens.

    Text is split at added-token strings; each plain segment is encoded by sentencepiece (which
    prepends its dummy-prefix space per segment, as InternLM2's slow tokenizer does).
    """

    def __init__(self, path: str):
        try:
            import sentencepiece
        except ImportError:
            raise SystemExit("discriminator 'polar' needs sentencepiece for POLAR's tokenizer: "
                             "pip install sentencepiece") from None
        model_file = os.path.join(path, "tokenizer.model")
        if not os.path.exists(model_file):
            raise SystemExit(f"discriminator 'polar': {model_file} not found")
        self.sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        cfg_file = os.path.join(path, "tokenizer_config.json")
        cfg = json.load(open(cfg_file)) if os.path.exists(cfg_file) else {}
        self.added = {v["content"]: int(k) for k, v in cfg.get("added_tokens_decoder", {}).items()}
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else self.added.get("<s>", 1)
        self.pad_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else 0
        # skip_special_tokens drops control tokens and added tokens marked special
        self.special_ids = {i for c, i in self.added.items()
                            if cfg["added_tokens_decoder"][str(i)].get("special", True)}
        self.special_ids |= {self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()} - {-1}
        names = sorted(self.added, key=len, reverse=True)   # longest match first
        self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
        # POLAR's input joins reference and candidate with "<|reward|>" and ends with the reward
        # token; were either missing from the added tokens, sentencepiece would split it into
        # ordinary pieces and every score would be read at the wrong position, silently.
        for marker in ("<|reward|>", REWARD_TOKEN):
            if marker not in self.added or self.encode(marker, add_bos=False) != [self.added[marker]]:
                raise SystemExit(f"discriminator 'polar': {marker!r} is not one added token in "
                                 f"{cfg_file} (added_tokens_decoder); is this POLAR's tokenizer?")

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for part in (self._split.split(text) if self._split else [text]):
            if not part:
                continue
            ids += [self.added[part]] if part in self.added else self.sp.encode(part)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.sp.decode(ids)


def llama_config_from_internlm2(cfg: dict):
    """A stock LlamaConfig with the shapes and RoPE of an InternLM2 config.json."""
    from transformers import LlamaConfig
    rope = cfg.get("rope_scaling")
    if rope and rope.get("type", rope.get("rope_type")) not in ("dynamic", None):
        raise SystemExit(f"discriminator 'polar': unsupported rope_scaling {rope}")
    # InternLM2's dynamic NTK scaling changes RoPE only past max_position_embeddings; POLAR inputs
    # are at most 16,384 tokens, so plain RoPE is exact when that limit is at least as large.
    if rope and cfg.get("max_position_embeddings", 0) < MAX_LENGTH:
        raise SystemExit("discriminator 'polar': dynamic rope scaling below 16,384 positions is not "
                         "supported by the conversion")
    heads = cfg["num_attention_heads"]
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=cfg.get("num_key_value_heads", heads),
        head_dim=cfg["hidden_size"] // heads, rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=cfg.get("rope_theta", 10000.0),
        max_position_embeddings=cfg.get("max_position_embeddings", 32768),
        attention_bias=bool(cfg.get("bias", False)), mlp_bias=False, hidden_act="silu",
        tie_word_embeddings=False, pad_token_id=cfg.get("pad_token_id"))


# InternLM2 -> Llama (transformers) weight names, per layer i:
#   attention_norm -> input_layernorm          ffn_norm -> post_attention_layernorm
#   attention.wo   -> self_attn.o_proj          feed_forward.w1 / w3 / w2 -> mlp.gate / up / down_proj
#   tok_embeddings -> embed_tokens              norm -> norm;  v_head -> the value head [1, H]
#   attention.wqkv [(n_heads + 2 n_kv) d, H] -> q_proj, k_proj, v_proj: its rows are grouped per
#   key/value head -- for each of the n_kv groups, g = n_heads / n_kv query heads, then one key
#   head, then one value head, d rows each -- i.e. rows viewed as [n_kv, g + 2, d, H].


def convert_internlm2_state_dict(sd: dict, cfg: dict) -> tuple[dict, torch.Tensor]:
    """InternLM2 keys -> LlamaModel keys (no 'model.' prefix) and the value-head weight [1, H]."""
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    kv = cfg.get("num_key_value_heads", heads)
    g, d = heads // kv, hidden // heads
    renames = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
               "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj"}
    out, v_head = {}, None
    for key, w in sd.items():
        if key == "v_head.weight":
            v_head = w
        elif key == "model.tok_embeddings.weight":
            out["embed_tokens.weight"] = w
        elif key == "model.norm.weight":
            out["norm.weight"] = w
        elif ".attention.wqkv." in key:
            prefix = key.split(".attention.wqkv.")[0].removeprefix("model.")
            if key.endswith(".bias"):
                raise SystemExit("discriminator 'polar': wqkv bias is not supported")
            # rows grouped per key/value head: g query heads, then 1 key head, then 1 value head
            w = w.reshape(kv, g + 2, d, hidden)
            out[f"{prefix}.self_attn.q_proj.weight"] = w[:, :g].reshape(kv * g * d, hidden)
            out[f"{prefix}.self_attn.k_proj.weight"] = w[:, g].reshape(kv * d, hidden)
            out[f"{prefix}.self_attn.v_proj.weight"] = w[:, g + 1].reshape(kv * d, hidden)
        elif key.startswith("model.layers."):
            new = key.removeprefix("model.")
            for old, repl in renames.items():
                new = new.replace(f".{old}.", f".{repl}.")
            out[new] = w
        elif key != "output.weight":  # an LM head, if present, is not used by a reward model
            raise SystemExit(f"discriminator 'polar': unexpected weight {key!r} in the checkpoint")
    if v_head is None:
        raise SystemExit("discriminator 'polar': the checkpoint has no 'v_head.weight' -- is it a "
                         "POLAR reward model?")
    return out, v_head


def load_state_dict_safely(path: str) -> dict:
    """All weight shards of a checkpoint directory: safetensors, or .bin with weights_only=True."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if files:
        from safetensors.torch import load_file
        sd = {}
        for f in files:
            sd.update(load_file(f))
        return sd
    files = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if not files:
        raise SystemExit(f"discriminator 'polar': no *.safetensors or pytorch_model*.bin in {path}")
    sd = {}
    for f in files:  # weights_only: a pickle cannot run code while loading
        sd.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return sd


def resolve_model_dir(name: str) -> str:
    """A local directory as is; a hub id through huggingface_hub's cache (network if needed)."""
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name, allow_patterns=["*.json", "*.model", "*.safetensors", "*.bin"])
    except Exception as e:
        raise SystemExit(f"cannot fetch {name!r} from the Hugging Face hub ({type(e).__name__}). "
                         "Download it elsewhere and pass the directory, or use --discriminator "
                         "lexical.") from None


def load(path: str, device, dtype: torch.dtype):
    """POLAR from its files: (decoder as a stock LlamaModel, fp32 value head, tokenizer, the
    reward token's id). `path`: a directory, or a hub id fetched into huggingface_hub's cache."""
    from transformers import LlamaModel
    path = resolve_model_dir(path)
    cfg = json.load(open(os.path.join(path, "config.json")))
    tokenizer = PolarTokenizer(path)
    llama_cfg = llama_config_from_internlm2(cfg)
    sd, v_head_weight = convert_internlm2_state_dict(load_state_dict_safely(path), cfg)
    with torch.device("meta"):
        model = LlamaModel(llama_cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    # RoPE's inverse frequencies are a buffer, so casting the model to bf16 would round them:
    # at head_dim 128 and rope_theta 1e6 that rotates position 2,000 by up to 2.3 rad too far,
    # and POLAR's reference and candidate sit 500-1,500 tokens apart. So the rotary module is
    # built (for real, not on the meta device) in fp32 and kept out of the cast; its forward
    # computes the angles in fp32 and only then casts cos/sin to the model's dtype.
    rotary = type(model.rotary_emb)(llama_cfg).to(device)
    model.rotary_emb = None
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model.rotary_emb = rotary
    # The value head stays fp32 and reads an fp32 copy of the last hidden state: a bf16
    # output would quantise scores to steps of 0.016-0.06 before group normalisation.
    v_head = torch.nn.Linear(cfg["hidden_size"], 1, bias=False, device=device)
    v_head.weight.data = v_head_weight.to(device=device, dtype=torch.float32).reshape(1, -1)
    v_head.requires_grad_(False)
    reward_token_id = cfg.get("reward_token_id", tokenizer.added.get(REWARD_TOKEN))
    return model, v_head, tokenizer, reward_token_id
