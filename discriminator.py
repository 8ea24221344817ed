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
  Loaded WITHOUT trust_remote_code (polar.py converts its files into a stock LlamaModel and a
  value head). The input string is built exactly as POLAR's own client builds it (`polar_input`).

Every candidate has a leading `<think>...</think>` block removed first (POLAR's RL hook does this;
Qwen3's empty think block would otherwise count as text).
"""

from __future__ import annotations

import collections
import re

import torch

import polar

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
# POLAR: its input string and the scorer (its files: polar.py)
# ----------------------------------------------------------------------------------------------

POLAR_MAX_LENGTH = polar.MAX_LENGTH                    # the client's total budget ...
POLAR_MAX_RESPONSE_LENGTH = 4096                       # ... and per-response budget, in tokens


def polar_input(tokenizer: polar.PolarTokenizer, prompt: str, reference: str, candidate: str,
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
    return p + "\n" + r + "<|reward|>" + p + "\n" + c + polar.REWARD_TOKEN


def polar_scores(model, v_head, chunk: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """POLAR's value head read at each input's last token (the reward token): fp32 [B]. Left
    padding; differentiable (tools/toy_polar.py trains a toy POLAR through this very function)."""
    width = max(len(x) for x in chunk)
    ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in chunk], device=device)   # [B, T]
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    hidden = model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state  # [B, T, H]
    last = mask.cumsum(1).argmax(1)                   # the last real token: the reward token
    return v_head(hidden[torch.arange(len(chunk)), last].float()).squeeze(-1)            # [B]


class Polar:
    name = "polar"

    def __init__(self, path: str = "internlm/POLAR-1_8B", device="cpu", batch_size: int = 8,
                 dtype: torch.dtype | None = None):
        if dtype is None:   # bf16 weights on a GPU (half the memory and time), fp32 elsewhere
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        self.model, self.v_head, self.tokenizer, self.reward_token_id = polar.load(path, device, dtype)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def score_ids(self, batch: list[list[int]]) -> torch.Tensor:
        """Scores of already tokenized inputs (each ending in the reward token): fp32 [B]."""
        return torch.cat([polar_scores(self.model, self.v_head, batch[i:i + self.batch_size],
                                       self.tokenizer.pad_id, self.device)
                          for i in range(0, len(batch), self.batch_size)]).cpu()

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
