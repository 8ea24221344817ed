"""The fixed discriminator D(x, y_E, y): how much a rollout y looks like the teacher's answer y_E.

The idea
--------
UniAPL's anchoring signal comes from a *fixed, lightweight* discriminator that compares each
policy rollout with the pre-collected expert response to the same prompt and returns one
sentence-level score (PAPER.md; the reviews say it is a modified, fixed POLAR model). It is never
trained here and never sees gradients:

    d = D(prompt, reference, candidate) -> float        higher = more like the expert

Interface: every implementation has `score(prompts, references, candidates) -> FloatTensor [B]`,
evaluated under torch.no_grad(). Only differences between scores of rollouts of the same prompt
matter downstream (uniapl.py normalises them within each group), so the scales of the three
implementations need not agree.

Implementations
---------------
* `lexical` -- zero-dependency text overlap: the mean over n = 1, 2 of the F1 between the
  multisets of word/punctuation n-grams of candidate and reference (case-sensitive, so
  capitalisation and commas count). The toy world's default and the cheapest baseline.
* `embedding` -- cosine similarity of mean-pooled, L2-normalised token embeddings of candidate and
  reference from any Hugging Face encoder (default sentence-transformers/all-MiniLM-L6-v2; any
  local directory). The prompt is not used.
* `polar` -- InternLM's POLAR reward model (arXiv 2507.05197; internlm/POLAR-1_8B default,
  POLAR-7B optional), a policy-discriminative RM: pre-trained to tell whether two responses come
  from the same policy, so its score of (reference, candidate) is exactly an "is this the expert's
  distribution" signal. Its output is one unbounded scalar: about 0 means "indistinguishable from
  the reference", clearly wrong answers score far below; only differences matter.
  What the paper's "modified POLAR" changes is not public; we use POLAR as released.
  Loaded WITHOUT trust_remote_code: its InternLM2 weights are converted at load time into a
  stock transformers LlamaModel plus Linear(hidden, 1) (the key map and the fused `wqkv` layout
  sit above `convert_internlm2_state_dict`); weights load through safetensors or
  torch.load(weights_only=True); the tokenizer is its sentencepiece model plus the added tokens of
  tokenizer_config.json. The input string is built exactly as POLAR's own client builds it (see
  `polar_input`).

Every candidate has a leading `<think>...</think>` block removed first (POLAR's RL hook does this;
Qwen3's empty think block would otherwise count as text).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re

import torch

THINK = re.compile(r"^\s*<think>.*?</think>\s*", flags=re.DOTALL)


def strip_think(text: str) -> str:
    return THINK.sub("", text, count=1)


# ----------------------------------------------------------------------------------------------
# lexical
# ----------------------------------------------------------------------------------------------

def _ngram_f1(a: list[str], b: list[str], n: int) -> float:
    ca = collections.Counter(zip(*[a[i:] for i in range(n)]))
    cb = collections.Counter(zip(*[b[i:] for i in range(n)]))
    overlap = sum((ca & cb).values())
    if not ca or not cb or not overlap:
        return 0.0
    p, r = overlap / sum(ca.values()), overlap / sum(cb.values())
    return 2 * p * r / (p + r)


def lexical_similarity(reference: str, candidate: str) -> float:
    """Mean of unigram and bigram F1 over word and punctuation tokens; in [0, 1]."""
    a = re.findall(r"\w+|[^\w\s]", reference)
    b = re.findall(r"\w+|[^\w\s]", candidate)
    return (_ngram_f1(a, b, 1) + _ngram_f1(a, b, 2)) / 2


class Lexical:
    name = "lexical"

    def score(self, prompts, references, candidates) -> torch.Tensor:
        return torch.tensor([lexical_similarity(r, strip_think(c))
                             for r, c in zip(references, candidates)], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------------------------

class Embedding:
    name = "embedding"

    def __init__(self, path: str = "sentence-transformers/all-MiniLM-L6-v2", device="cpu",
                 batch_size: int = 64, max_length: int = 512):
        from transformers import AutoModel, AutoTokenizer
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except OSError as e:
            raise SystemExit(f"discriminator 'embedding': cannot load encoder {path!r} "
                             f"({str(e).splitlines()[0]}). Give a local directory with "
                             "--discriminator-model, or use --discriminator lexical.") from None
        self.model.requires_grad_(False)
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()                 # [b, T, H]
            mask = enc["attention_mask"][..., None].float()                       # [b, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)            # [b, H]
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out)                                                     # [B, H]

    def score(self, prompts, references, candidates) -> torch.Tensor:
        ref = self.embed(list(references))
        cand = self.embed([strip_think(c) for c in candidates])
        return (ref * cand).sum(-1).cpu()                                         # cosine [B]


# ----------------------------------------------------------------------------------------------
# POLAR: tokenizer, input string, InternLM2 -> Llama conversion, scorer
# ----------------------------------------------------------------------------------------------

POLAR_MAX_LENGTH = 16384          # the client's total budget ...
POLAR_MAX_RESPONSE_LENGTH = 4096  # ... and per-response budget, in tokens
POLAR_REWARD_TOKEN = "[UNUSED_TOKEN_130]"


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
        for marker in ("<|reward|>", POLAR_REWARD_TOKEN):
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


def polar_input(tokenizer: PolarTokenizer, prompt: str, reference: str, candidate: str,
                max_length: int = POLAR_MAX_LENGTH,
                max_response_length: int = POLAR_MAX_RESPONSE_LENGTH) -> str:
    """The string POLAR's client sends: p + "\\n" + ref + "<|reward|>" + p + "\\n" + cand + RT.

    Each part is encoded (BOS included in the counts), responses are cut to their first
    `max_response_length` ids, the prompt to its LAST (max_length - 4 - |ref| - |cand|) // 2 ids
    (the 4 tokens are the reward token, <|reward|> and two newlines), and every part is decoded
    back with special tokens skipped -- one round trip even when nothing was cut.
    """
    candidate = strip_think(candidate)
    p_ids = tokenizer.encode(prompt)
    r_ids = tokenizer.encode(reference)[:max_response_length]
    c_ids = tokenizer.encode(candidate)[:max_response_length]
    budget = (max_length - 4 - len(r_ids) - len(c_ids)) // 2
    if len(p_ids) > budget:
        p_ids = p_ids[-budget:] if budget > 0 else []
    p, r, c = (tokenizer.decode(x) for x in (p_ids, r_ids, c_ids))
    return p + "\n" + r + "<|reward|>" + p + "\n" + c + POLAR_REWARD_TOKEN


def llama_config_from_internlm2(cfg: dict):
    """A stock LlamaConfig with the shapes and RoPE of an InternLM2 config.json."""
    from transformers import LlamaConfig
    rope = cfg.get("rope_scaling")
    if rope and rope.get("type", rope.get("rope_type")) not in ("dynamic", None):
        raise SystemExit(f"discriminator 'polar': unsupported rope_scaling {rope}")
    # InternLM2's dynamic NTK scaling changes RoPE only past max_position_embeddings; POLAR inputs
    # are at most 16,384 tokens, so plain RoPE is exact when that limit is at least as large.
    if rope and cfg.get("max_position_embeddings", 0) < POLAR_MAX_LENGTH:
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


class Polar:
    name = "polar"

    def __init__(self, path: str = "internlm/POLAR-1_8B", device="cpu", batch_size: int = 8,
                 dtype: torch.dtype | None = None):
        from transformers import LlamaModel
        path = resolve_model_dir(path)
        cfg = json.load(open(os.path.join(path, "config.json")))
        self.tokenizer = PolarTokenizer(path)
        llama_cfg = llama_config_from_internlm2(cfg)
        sd, v_head = convert_internlm2_state_dict(load_state_dict_safely(path), cfg)
        if dtype is None:   # bf16 weights on a GPU (half the memory and time), fp32 elsewhere
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        with torch.device("meta"):
            self.model = LlamaModel(llama_cfg)
        self.model.load_state_dict(sd, strict=True, assign=True)
        # RoPE's inverse frequencies are a buffer, so casting the model to bf16 would round them:
        # at head_dim 128 and rope_theta 1e6 that rotates position 2,000 by up to 2.3 rad too far,
        # and POLAR's reference and candidate sit 500-1,500 tokens apart. So the rotary module is
        # built (for real, not on the meta device) in fp32 and kept out of the cast; its forward
        # computes the angles in fp32 and only then casts cos/sin to the model's dtype.
        rotary = type(self.model.rotary_emb)(llama_cfg).to(device)
        self.model.rotary_emb = None
        self.model = self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.model.rotary_emb = rotary
        # The value head stays fp32 and reads an fp32 copy of the last hidden state: a bf16
        # output would quantise scores to steps of 0.016-0.06 before group normalisation.
        self.v_head = torch.nn.Linear(cfg["hidden_size"], 1, bias=False, device=device)
        self.v_head.weight.data = v_head.to(device=device, dtype=torch.float32).reshape(1, -1)
        self.v_head.requires_grad_(False)
        self.reward_token_id = cfg.get("reward_token_id", self.tokenizer.added.get(POLAR_REWARD_TOKEN))
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def score_ids(self, batch: list[list[int]]) -> torch.Tensor:
        """Scores of already tokenized inputs (each ending in the reward token): fp32 [B]."""
        out = []
        for i in range(0, len(batch), self.batch_size):
            chunk = batch[i:i + self.batch_size]
            width = max(len(x) for x in chunk)
            pad = self.tokenizer.pad_id
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk],
                                device=self.device)                                # left padding
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            hidden = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
            last = mask.cumsum(1).argmax(1)            # the last real token: the reward token
            out.append(self.v_head(hidden[torch.arange(len(chunk)), last].float()).squeeze(-1))
        return torch.cat(out).cpu()

    def score(self, prompts, references, candidates) -> torch.Tensor:
        texts = [polar_input(self.tokenizer, p, r, c)
                 for p, r, c in zip(prompts, references, candidates)]
        ids = [self.tokenizer.encode(t) for t in texts]   # the server adds one BOS at the start
        for x in ids:
            if x[-1] != self.reward_token_id:
                raise RuntimeError("POLAR input does not end with the reward token "
                                   f"{self.reward_token_id}; the tokenizer files look wrong")
        return self.score_ids(ids)


def load_discriminator(name: str, model: str | None = None, device="cpu",
                       dtype: torch.dtype | None = None):
    """'lexical' | 'embedding' | 'polar' -> an object with .score(prompts, references, candidates).

    `dtype` is POLAR's weight dtype (default: bf16 on CUDA, fp32 elsewhere)."""
    if name == "lexical":
        return Lexical()
    if name == "embedding":
        return Embedding(model or "sentence-transformers/all-MiniLM-L6-v2", device)
    if name == "polar":
        return Polar(model or "internlm/POLAR-1_8B", device, dtype=dtype)
    raise ValueError(f"unknown discriminator {name!r} (lexical, embedding or polar)")
