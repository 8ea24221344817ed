"""The `static` rollout engine: a bf16 copy, one static KV cache, the decode step as CUDA graphs.

The fast default on a GPU without vLLM (engines.py chooses; rollouts.py says what every engine
returns and which distribution it samples). A decode step of a 0.6B model on a GPU is mostly host
overhead -- Python, kernel launches, and (under autocast) re-casting every fp32 weight to bf16 at
every token -- so this engine removes each of those:

1. it samples from a **bf16 copy of the policy**, refreshed in place from the fp32 master weights
   before every call (`torch._foreach_copy_`: the addresses never change), outside autocast, so no
   weight is cast per token and keys and values are both bf16;
2. it owns **one static KV cache** (`KVCache`) at fixed addresses, reused across calls, and runs
   the decode step -- one token for every row -- through `torch.compile(mode="reduce-overhead")`,
   i.e. **CUDA graphs**: one graph replay per token;
3. the decode step **compiles once per process**: rows, cache length and attended span are dynamic
   dimensions (marked before the first call), so training calls, evaluation chunks and wider
   prompts reuse one compiled step; each new shape is one more CUDA graph of it;
4. its attention reads **each key/value head once** (`gqa_attention`): transformers' sdpa path
   copies K and V to every query head whenever a mask is given (Qwen3-0.6B: 2x the bytes read,
   plus the copy, at every token);
5. the **attended span grows with the answer** in steps of `SPAN_STEP` (64) slots, instead of
   the whole cache from the first token (masked slots are read all the same), and dynamo's guards
   are checked on the first decode step of a call only (within a call only the span changes);
6. evaluation goes through it in **balanced calls as large as the free GPU memory allows**,
   sized for the widest prompt's cache, **shortest prompts first** (a call of short prompts
   attends over short prompts), in a cache of its own: the rollout cache stays allocated, so
   its CUDA graphs are not recorded again after every evaluation;
7. **finished rows are compacted away** every `COMPACT_EVERY` tokens: the rows still decoding
   move to the front of the cache, in place, and the decode step runs on views of its first rows
   (a power of two of them, at least 8) -- a trained model's answers end at scattered lengths,
   and each finished row would otherwise decode padding until the call's last row ends. Sampled
   calls still draw from a tensor of every row (`_multinomial`), so the tokens stay `hf`'s.

Choices: the prefill runs eagerly (its shape changes with every batch, and it is a small share of
the time); the rollout cache stays allocated through the backward pass and through evaluations,
since its addresses are baked into the CUDA graphs (freeing it would record every graph again;
at 0.6B, 64 x 1,024 slots are 7.3 GiB; an evaluation that would not fit beside it drops it, and
`graph_stats` counts how often); every cache length and span is a multiple of 8, because on CUDA
inductor guards the mask's row stride so (another length would compile the decode step again);
sampling runs eagerly after each graph replay, exactly as `generate` samples (softmax, then
`torch.multinomial`), so that under one seed in fp32 `static` draws the same tokens as `hf` (a
test checks it); compaction keeps that (the draws are made for every row of the call) and
happens only where a smaller power of two holds the live rows (few row counts: few graphs).
`graph_stats` reports compiles, CUDA graphs recorded (and recorded again: a static input that
moved), the inputs copied into them (tokens, positions, mask; were the cache copied, its static
marks would be lost), inductor's skips with their reasons (a step it declines to record runs
without graphs and nothing fails), compactions, and the KV slots the decode steps read.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import inspect
import math
import time
from dataclasses import dataclass

import torch

import data
from rollouts import Rollouts, concat_rollouts, encode_rows, make_rollouts, stop_token_ids


class KVCache:
    """Keys and values of every layer, [rows, kv_heads, length, head_dim], allocated once.

    transformers' attention calls `cache.update(k, v, layer_idx)` with the new keys and values and
    attends over what it returns. Ours writes them where the engine says and returns views of
    tensors that keep their addresses (CUDA graphs replay on them), in our dtype (transformers'
    own static cache took the key's dtype for both, which broke under autocast, where Qwen3's keys
    come out fp32 and its values bf16):

    * prefill (`self.rows = (r0, r1)`, `self.width = P`): the prompts of rows r0..r1 go to slots
      [0, P); attention sees those P slots only;
    * decode (`self.rows = None`): one token per row goes to slot `self.slot` (a 1-element tensor,
      updated in place); the whole cache is returned and the decode attention reads only the
      slots the mask covers (`gqa_attention`): the attended span grows with the answer.

    Rows and length are marked dynamic and the addresses static *without a guard*, so a new cache
    (evaluation after training) means new CUDA graphs but never a new compile.
    """

    def __init__(self, config, rows: int, length: int, dtype, device):
        layers, heads, head_dim = kv_geometry(config)
        # SPARE slots more than any span: were a span ever the whole cache, the compiled step would
        # hold `span == cache length` as a guard (the view is then contiguous) and recompile; 8 of
        # them keep every size a multiple of 8 (`plan` rounds the length), as CUDA's kernels guard
        shape = (rows, heads, length + SPARE, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        torch._dynamo.mark_static_address(self.slot, guard=False)
        _mark(self.keys + self.values)
        self.rows, self.width = None, 0
        self.shape = (rows, length)

    def first_rows(self, rows: int) -> KVCache:
        """The cache's first `rows` rows, as views at the same addresses (the decode step after
        finished rows are compacted away: `_compact`). A row slice of a contiguous tensor starts
        where the tensor does and keeps its strides, so the compiled step takes it as it takes
        the whole cache -- another row count, no recompile."""
        view = copy_module.copy(self)
        view.keys, view.values = [k[:rows] for k in self.keys], [v[:rows] for v in self.values]
        _mark(view.keys + view.values)
        return view

    def update(self, key, value, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if self.rows is not None:                                  # prefill of rows r0..r1
            r0, r1 = self.rows
            k[r0:r1, :, :self.width] = key
            v[r0:r1, :, :self.width] = value
            return k[r0:r1, :, :self.width], v[r0:r1, :, :self.width]
        k.index_copy_(2, self.slot, key)                           # decode: one slot for all rows
        v.index_copy_(2, self.slot, value)
        return k, v                                                # gqa_attention cuts the span

    def reset(self) -> None:
        """Zero every slot in place (masked slots are never read, but 0 * garbage can be NaN)."""
        torch._foreach_zero_(self.keys + self.values)


def _mark(tensors: list[torch.Tensor]) -> None:
    for t in tensors:
        # graphs replay on these very tensors; guard=False: torch <= 2.8 guarded by default,
        # and each new cache would then recompile (past dynamo's limit: silently eager)
        torch._dynamo.mark_static_address(t, guard=False)
        torch._dynamo.maybe_mark_dynamic(t, 0)                     # rows
        torch._dynamo.maybe_mark_dynamic(t, 2)                     # slots


def kv_geometry(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder config."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, heads, head_dim


def cache_bytes_per_row(config, length: int, dtype) -> int:
    """KV-cache bytes of one row of `length` slots: 2 x layers x kv_heads x head_dim x length."""
    layers, heads, head_dim = kv_geometry(config)
    return 2 * layers * heads * head_dim * length * torch.finfo(dtype).bits // 8


def bucket(width: int, prompt_width: int) -> int:
    """The smallest of prompt_width / 4, / 2, / 1 that holds `width` (multiples of 16); wider
    prompts round up to a multiple of 256 (evaluation prompts are not length-checked)."""
    for b in (prompt_width // 4, prompt_width // 2, prompt_width):
        b = max(16, math.ceil(b / 16) * 16)
        if width <= b:
            return b
    return math.ceil(width / 256) * 256


DECODE_ATTENTION = "uniapl_gqa"   # the copy's attention implementation (registered below)


def gqa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention that reads each key/value head once for all the query heads that share it.

    Qwen3 has fewer key/value heads than query heads (grouped-query attention: 0.6B has 16 query
    heads on 8 KV heads, g = 2 per group). transformers' sdpa path, given a mask on CUDA, copies K
    and V to every query head (`repeat_kv`) -- at decode time, for every token, the whole cache
    span g times over. Instead, fold each group's query heads into the query axis:

        q [R, kv*g, q, d] -> [R, kv, g*q, d]      against      K, V [R, kv, S, d]

    and one SDPA call reads K and V at their own head count; the mask [R, 1, q, S] broadcasts over
    the KV heads (for q > 1 it is repeated g times along the folded axis). Query head h uses KV
    head h // g, as `repeat_kv` pairs them. The keys are cut to the mask's width S: the decode
    step hands over the whole cache and the mask says how much of it is attended (the span).
    """
    if attention_mask is None:              # not how the engine calls it: transformers' own path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout,
                                      scaling=scaling, **kwargs)
    R, H, q, d = query.shape                                              # [R, H, q, d]
    kv = key.shape[1]
    g = H // kv
    S = attention_mask.shape[-1]
    key, value = key.narrow(2, 0, S), value.narrow(2, 0, S)   # [R, kv, S, d] (size S even if S = length)
    query = query.reshape(R, kv, g * q, d)                                # [R, kv, g*q, d]
    if q > 1 and g > 1:                  # row (j, t) of the folded axis is query t: mask row t
        attention_mask = attention_mask.repeat(1, 1, g, 1)                # [R, 1, g*q, S]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling)  # [R, kv, g*q, d]
    return out.reshape(R, H, q, d).transpose(1, 2).contiguous(), None     # [R, q, H, d]


def register_attention() -> str:
    """Register `gqa_attention` with transformers under DECODE_ATTENTION (once; idempotent)."""
    from transformers import AttentionInterface
    AttentionInterface.register(DECODE_ATTENTION, gqa_attention)
    return DECODE_ATTENTION


def _decode(model, cache_kw: str, cache: KVCache, tokens, positions, mask) -> torch.Tensor:
    """One token for every row: logits fp32 [R, V]. This is what becomes a CUDA graph."""
    out = model(input_ids=tokens, position_ids=positions, attention_mask=mask, use_cache=True,
                **{cache_kw: cache})
    return out.logits[:, -1].float()


class StaticEngine:
    """`static`: sample from an inference copy of the policy with a static KV cache and (on CUDA)
    the decode step compiled into CUDA graphs. See the module docstring for why each piece.

    dtype: the copy's dtype (bf16 on CUDA; the policy's dtype elsewhere, so that in fp32 it
    samples exactly as `hf`). prompt_width: the longest prompt expected (--max-prompt-length);
    the cache holds prompt_width + the longest answer asked for. compile: torch.compile's
    arguments for the decode step (default on CUDA: mode "reduce-overhead"; elsewhere none).
    max_rows: rows per call (default: as many as 80 % of the free GPU memory holds).
    """
    name = "static"

    def __init__(self, dtype=None, prompt_width: int = 512, compile: dict | None | str = "auto",
                 max_rows: int | None = None, check_every: int = 16, eager_if_compile_fails: bool = False,
                 compact_every: int | None = None):
        self.dtype, self.prompt_width, self.compile_args = dtype, prompt_width, compile
        self.eager_if_compile_fails = eager_if_compile_fails   # auto's CPU choice: a line, not a crash
        self.max_rows, self.check_every = max_rows, check_every
        self.compact_every = COMPACT_EVERY if compact_every is None else compact_every   # 0: never
        self.copy, self.pairs, self.cache, self.step = None, None, None, None
        self.first_step_s = None     # the first decode step's wall time: the compile, for the GPU suite
        self.last_shape, self.dropped = None, 0   # the last call's cache (rows, length); kept caches dropped
        self.kv_slots = 0            # KV slots the decode steps read (rows x attended span, summed)
        self.compactions = 0         # times finished rows were dropped from a call
        self.cudagraph_skips = []    # why inductor ran a step without CUDA graphs (its log's words)
        self.announce = None         # called with first_step_s once it is measured (the GPU suite)

    # --- the inference copy ------------------------------------------------------------------

    def refresh(self, policy) -> torch.nn.Module:
        """The copy := the policy's current weights in the sampling dtype, in place.

        Built once: the policy's architecture on the meta device, materialised on its device,
        parameters in `dtype`, buffers as the policy keeps them (Qwen3's rotary inv_freq stays
        fp32: a bf16 cast would rotate late positions by the wrong angle). Then every call is one
        `torch._foreach_copy_` of the masters into it -- same addresses, so the CUDA graphs
        recorded on the copy stay valid. Under FSDP2 each parameter is gathered first.
        """
        sources = {k: _full(t) for k, t in [*policy.named_parameters(), *policy.named_buffers()]}
        if self.copy is None:
            self.copy = self._build(policy, sources)
            dests = dict(self.copy.named_parameters()) | dict(self.copy.named_buffers())
            if set(dests) != set(sources):
                raise RuntimeError("static engine: the copy and the policy hold different tensors: "
                                   f"{sorted(set(dests) ^ set(sources))[:4]}")
            self.pairs = [(dests[k], k) for k in sorted(dests)]
        torch._foreach_copy_([d.data for d, _ in self.pairs], [sources[k] for _, k in self.pairs])
        return self.copy

    def _build(self, policy, sources: dict) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM
        device = next(iter(sources.values())).device
        dtype = self.dtype or next(iter(sources.values())).dtype
        with torch.device("meta"):
            # its own config: from_config keeps the object it is given, and the policy's must keep sdpa
            config = copy_module.deepcopy(policy.config)
            copy = AutoModelForCausalLM.from_config(config, attn_implementation=register_attention())
        copy = copy.to_empty(device=device).eval().requires_grad_(False)
        copy.tie_weights()                                # to_empty unties a tied head
        for p in copy.parameters():                       # a tied head is listed once
            p.data = p.data.to(dtype)
        for name, _ in list(copy.named_buffers()):        # the policy's buffer dtypes (fp32 RoPE)
            module, _, attr = name.rpartition(".")
            copy.get_submodule(module)._buffers[attr] = torch.empty_like(sources[name])
        return copy

    # --- the cache, and how many rows one call answers ----------------------------------------

    def _cache_for(self, config, rows: int, length: int, device, keep: bool) -> KVCache:
        """The cache of a call. A rollout call (`keep`: G >= 2, training) uses the kept cache,
        reset in place while calls keep its shape (its addresses are baked into the CUDA graphs),
        else freed and allocated anew; any other call (one answer per prompt: an evaluation) uses
        a cache of its own, dropped when the call ends, so that the rollout cache -- and every
        graph recorded on it -- outlives the evaluation and is not recorded again after it."""
        self.last_shape = (rows, length)
        if keep and self.cache is not None and self.cache.shape == (rows, length):
            self.cache.reset()
            return self.cache
        if keep:
            self._free_cache(device)
            self.cache = KVCache(config, rows, length, self.copy.dtype, device)
            return self.cache
        return KVCache(config, rows, length, self.copy.dtype, device)

    def _free_cache(self, device) -> None:
        """Drop the kept cache (the next rollout call allocates one anew and records its graphs)."""
        if self.cache is not None:
            self.cache, self.dropped = None, self.dropped + 1
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def rows_per_call(self, config, length: int, device, wanted: int, keep: bool = True) -> int:
        """max_rows if set; else the kept cache's rows while it has this length (a rollout call
        of many rows goes in chunks of one size); else on CUDA as many as fit in 80 % of the
        free memory (the KV cache, and four fp32 copies of a row's logits) -- beside the kept
        rollout cache for any other call (an evaluation), unless not even one row would fit:
        then it is dropped and its memory counted as free; elsewhere all of them."""
        if self.max_rows:
            return min(wanted, self.max_rows)
        if keep and self.cache is not None and self.cache.shape == (min(wanted, self.cache.shape[0]), length):
            return self.cache.shape[0]
        if device.type != "cuda":
            return wanted
        per_row = cache_bytes_per_row(config, length, self.copy.dtype) + 16 * config.vocab_size
        if keep or int(0.8 * torch.cuda.mem_get_info(device)[0]) < per_row:
            self._free_cache(device)              # its memory counts as free for the new shape
        return max(1, min(wanted, int(0.8 * torch.cuda.mem_get_info(device)[0]) // per_row))

    def _decode_step(self, device):
        if self.step is None:
            args = self.compile_args
            if args == "auto":
                args = {"mode": "reduce-overhead"} if device.type == "cuda" else None
            self.step = torch.compile(_decode, **args) if args else _decode
            if args:
                _listen_for_cudagraph_skips(self.cudagraph_skips)
        return self.step

    def graph_stats(self, device) -> dict:
        """What the decode step did in this process: dynamo's compiles, CUDA graphs recorded
        (None where this torch's graph trees cannot be read), inductor's skips with their
        reasons (a skipped step runs without graphs, silently), graphs recorded again (a static
        input moved), inputs copied into the graphs, kept caches dropped, KV slots, and
        compactions (each new row count is one more graph per span, never a compile)."""
        from torch._dynamo.utils import counters
        graphs, again = _graph_trees(device)
        return {"compiles": int(counters["stats"]["unique_graphs"]), "cuda_graphs": graphs,
                "cuda_graphs_recorded_again": again,
                # inputs each recording copies into graph-owned memory: tokens, positions and the
                # mask, a few sizes -- not the 2 x layers cache tensors (static: never copied)
                "copied_inputs_recorded": int(counters["inductor"]["cudagraph_recorded_non_static_inputs"]),
                "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
                "cudagraph_skip_reasons": list(self.cudagraph_skips), "kept_cache_dropped": self.dropped,
                "kv_slots_read": self.kv_slots, "compactions": self.compactions}

    # --- generation -----------------------------------------------------------------------------

    def plan(self, config, tokenizer, rows, num_generations: int, max_new_tokens: int,
             device) -> CallPlan:
        """How `rows` are answered: the cache length, prompts per call, calls, and their order.

        The length holds the widest prompt's bucket (an evaluation prompt may be longer than
        --max-prompt-length) + the answer, rounded up to a multiple of 8 (so is every span: on
        CUDA inductor guards the mask's row stride to a multiple of 8, and a length like 512 + 500
        would compile the decode step again); the rows per call are sized for that length; the
        calls are balanced -- 541 prompts at 165 per call are 4 calls of 136, not 3 of 165 and a
        fourth of 46 padded to 165 -- so at most calls - 1 padded prompts are decoded; and where
        there are several calls the prompts go to them shortest first, so that a call of short
        prompts attends over short prompts only (the answers come back in the rows' order)."""
        ids, mask = data.encode_prompts(tokenizer, [r["prompt"] for r in rows])   # [B, P]
        widths = mask.sum(1).tolist()
        length = round_up(max(self.prompt_width, bucket(max(widths), self.prompt_width)) + max_new_tokens, 8)
        keep = num_generations > 1
        per_call = self.rows_per_call(config, length, device, len(rows) * num_generations, keep)
        calls = math.ceil(len(rows) / max(1, per_call // num_generations))
        order = sorted(range(len(rows)), key=widths.__getitem__) if calls > 1 else list(range(len(rows)))
        return CallPlan(length, math.ceil(len(rows) / calls), calls, order)

    @torch.no_grad()
    def generate(self, model, tokenizer, rows, num_generations, *, temperature=1.0,
                 max_new_tokens=64, greedy=False) -> Rollouts:
        """G completions per row, in balanced calls of prompts of like lengths (`plan`); the
        last call's missing prompts are repeats of its last one, so that every call has the same
        shape and one cache serves them all (a rollout call's is kept: `_cache_for`)."""
        device = next(model.parameters()).device
        copy = self.refresh(model)
        stops = stop_token_ids(model, tokenizer)
        G = num_generations
        plan = self.plan(copy.config, tokenizer, rows, G, max_new_tokens, device)
        n, ordered = plan.per_call, [rows[i] for i in plan.order]
        cache = self._cache_for(copy.config, n * G, plan.length, device, keep=G > 1)
        parts = []
        with torch.autocast(device.type, enabled=False):                # the copy has its dtype
            for i in range(0, len(rows), n):
                chunk = ordered[i:i + n]
                padded = chunk + [chunk[-1]] * (n - len(chunk)) if plan.calls > 1 else chunk
                if i:
                    cache.reset()
                ro = self._sample(copy, tokenizer, padded, G, temperature, max_new_tokens, greedy,
                                  stops, cache, device)
                parts.append(ro.select(slice(0, len(chunk) * G)))
        ro = concat_rollouts(parts, tokenizer)
        if plan.calls > 1:                     # back to the rows' order (a prompt's G rows together)
            back = sorted(range(len(rows)), key=plan.order.__getitem__)
            ro = ro.take([p * G + g for p in back for g in range(G)])
        if device.type == "cuda" and cache is not self.cache:
            del cache                          # an evaluation's own cache: its memory back now
            torch.cuda.empty_cache()
        return ro

    def _sample(self, copy, tokenizer, rows, G, temperature, max_new, greedy, stops, cache,
                device) -> Rollouts:
        prompt_ids, prompt_mask = encode_rows(tokenizer, rows, G, device)        # [R, P]
        R, P = prompt_ids.shape
        length = cache.shape[1]
        cache_kw = "cache" if "cache" in inspect.signature(type(copy).forward).parameters \
            else "past_key_values"                                                 # transformers 5.24
        low = torch.finfo(copy.dtype).min

        # Prefill: the prompts into slots [0, P), a few rows at a time (attention over P x P),
        # each query seeing the real tokens up to itself; a padding query sees itself only, so
        # that no row of the attention is fully masked (that would make NaNs).
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)                      # [R, P]
        sees = torch.ones(P, P, dtype=torch.bool, device=device).tril()[None] & prompt_mask.bool()[:, None]
        sees |= torch.eye(P, dtype=torch.bool, device=device)[None]                # [R, P, P]
        rows_at_once = max(1, 2**28 // (P * P * copy.config.num_attention_heads))
        logits, cache.width = [], P
        for r0 in range(0, R, rows_at_once):
            r1 = min(R, r0 + rows_at_once)
            cache.rows = (r0, r1)
            mask = torch.zeros(r1 - r0, 1, P, P, dtype=copy.dtype, device=device)
            mask.masked_fill_(~sees[r0:r1, None], low)                             # [r, 1, P, P]
            out = copy(input_ids=prompt_ids[r0:r1], attention_mask=mask, position_ids=positions[r0:r1],
                       use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            logits.append(out.logits[:, -1].float())
        logits = torch.cat(logits)                                                 # [R, V]
        cache.rows = None

        # Decode: token t of every row goes to slot P + t, at position n_r + t (n_r: its prompt's
        # real tokens); each graph replay returns the logits of the next token. The mask covers
        # the attended span: slots [0, P + t] rounded up to SPAN_STEP, so the reads grow with the
        # answer (each span is one more CUDA graph of the same compiled step).
        mask = torch.full((R, 1, 1, length), low, dtype=copy.dtype, device=device)
        mask[:, 0, 0, :P].masked_fill_(prompt_mask.bool(), 0.0)                    # [R, 1, 1, S]
        position = prompt_mask.sum(1, keepdim=True)                                # [R, 1]
        unfinished = torch.ones(R, dtype=torch.bool, device=device)
        stop_ids = torch.tensor(stops, device=device)
        check = self.check_every if device.type == "cuda" else 1   # a check costs a sync on a GPU
        step = self._decode_step(device)
        tokens, logps = [], []
        # Finished rows are compacted away every `compact_every` tokens (`_compact`): `live` is
        # the cache the decode step sees (its first rows), `origin` maps its rows to the call's.
        live, origin = cache, None
        # Dynamo checks its guards (thousands of checks on 28 layers' caches: ~0.5 ms per call on a
        # host CPU, more than a small decode step) before every call of the compiled step. Within
        # a call only the span and the tokens change, so they are checked on its first step (and
        # the first after a compaction) only: later steps skip them (`skip_guard_eval_unsafe`:
        # with the step compiled once there is one graph to run).
        guards, checked = contextlib.ExitStack(), False
        for t in range(max_new):
            if greedy:
                token = logits.argmax(-1)                                          # [r]
            else:                                   # as generate samples: softmax, multinomial
                scores = logits / temperature
                token = _multinomial(torch.softmax(scores, -1), origin, R)         # [r]
                logps.append(_to_call(torch.log_softmax(scores, -1).gather(1, token[:, None]),
                                      origin, R, 0.0))                             # [R, 1]
            token = torch.where(unfinished, token, tokenizer.pad_token_id)
            tokens.append(_to_call(token, origin, R, tokenizer.pad_token_id))     # [R]
            unfinished &= ~torch.isin(token, stop_ids)
            if t + 1 == max_new or ((t + 1) % check == 0 and not bool(unfinished.any())):
                break
            if self.compact_every and (t + 1) % self.compact_every == 0:
                keep = _compact(unfinished)
                if keep is not None and not len(keep):        # every row has ended (a sync paid)
                    break
                if keep is not None:       # the live rows to the front, in place, then their views
                    for k in cache.keys + cache.values:
                        k[:len(keep), :, :P + t] = k[keep, :, :P + t]
                    live, self.compactions = cache.first_rows(len(keep)), self.compactions + 1
                    token, mask, position, unfinished = token[keep], mask[keep], position[keep], unfinished[keep]
                    origin = keep if origin is None else origin[keep]
                    guards.close()                                   # another row count: check once
                    guards, checked = contextlib.ExitStack(), False
            cache.slot.fill_(P + t)
            mask[:, 0, 0, P + t] = 0.0                                             # it sees itself
            span = span_at(P, t, length)
            # [r, 1], [r, 1], [r, 1, 1, span]
            inputs = dynamic(token[:, None], position + t, mask[..., :span].contiguous())
            torch.compiler.cudagraph_mark_step_begin()
            t0 = time.perf_counter() if self.first_step_s is None else None
            try:
                logits = step(copy, cache_kw, live, *inputs)                       # [r, V]
            except torch._dynamo.exc.BackendCompilerFailed as e:
                if not (self.eager_if_compile_fails and t0 is not None):
                    raise
                # the compile runs before the step does: nothing has been written, decode eagerly
                why = getattr(e, "inner_exception", None) or e
                print(f"static engine: inductor could not compile the decode step here "
                      f"({type(why).__name__}: {str(why).strip()[:200]}); decoding without it "
                      f"(the same tokens)", flush=True)
                self.step = step = _decode
                logits = step(copy, cache_kw, live, *inputs)
            self.kv_slots += len(token) * span
            if t0 is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.first_step_s = time.perf_counter() - t0
                if self.announce:                    # the compile's time, the moment it is known
                    self.announce(self.first_step_s)
            if not checked and step is not _decode and SKIP_GUARDS:
                guards.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
            checked = True
        guards.close()
        completion = torch.stack(tokens, 1)                                        # [R, L]
        sampler_logp = torch.cat(logps, 1) if logps else None
        return _trim(make_rollouts(tokenizer, rows, G, prompt_ids, prompt_mask, completion, stops,
                                   sampler_logp))


def _compact(unfinished: torch.Tensor) -> torch.Tensor | None:
    """Which rows go on decoding once finished rows are dropped: None while the unfinished rows
    need as many rows as the step has now; none (empty) when every row has ended; else the
    unfinished rows, then finished ones up to
    the next power of two (at least 8). Powers of two bound the row counts a process sees (each
    is one more CUDA graph per span, never a compile); 8 keeps rows off dynamo's 1."""
    rows = len(unfinished)
    alive = unfinished.nonzero().squeeze(1)                                        # [a]
    if not len(alive):
        return alive                                                # none: the call is over
    target = max(8, 1 << max(0, len(alive) - 1).bit_length())
    if target >= rows:
        return None
    done = (~unfinished).nonzero().squeeze(1)
    return torch.cat([alive, done[:target - len(alive)]])                          # [target]


def _to_call(x: torch.Tensor, origin: torch.Tensor | None, rows: int, fill) -> torch.Tensor:
    """A per-row tensor of the live rows, back in the call's `rows` rows (`fill` elsewhere)."""
    if origin is None:
        return x
    return x.new_full((rows, *x.shape[1:]), fill).index_copy_(0, origin, x)


def _multinomial(probs: torch.Tensor, origin: torch.Tensor | None, rows: int) -> torch.Tensor:
    """One token per live row, drawn exactly as `generate` draws it for the call's `rows` rows.

    torch.multinomial(p, 1) is argmax(p / q) over q ~ Exp(1), one draw per entry of the whole
    [rows, V] tensor: the random numbers a row gets depend on its place among *all* the rows. So
    after a compaction the live rows' probabilities go back to their places in a tensor of every
    row (the finished ones certain of token 0, and ignored), and the generator advances as if
    no row had been dropped: the same tokens as `hf` under one seed."""
    if origin is None:
        return torch.multinomial(probs, 1).squeeze(1)                              # [R]
    full = probs.new_zeros(rows, probs.shape[1])
    full[:, 0] = 1.0
    full.index_copy_(0, origin, probs)                                             # [R, V]
    return torch.multinomial(full, 1).squeeze(1)[origin]                           # [r]


COMPACT_EVERY = 32   # tokens between checks for finished rows to drop (a sync on a GPU)
SPAN_STEP = 64    # the decode step attends over a multiple of this many slots (or the whole cache)
SPARE = 8         # slots a cache holds beyond its length (`KVCache`)
# torch.compiler.set_stance(skip_guard_eval_unsafe=...): where a torch lacks it, guards run every step
SKIP_GUARDS = "skip_guard_eval_unsafe" in inspect.signature(torch.compiler.set_stance).parameters


@dataclass
class CallPlan:
    """How a generate call answers its rows (`StaticEngine.plan`)."""
    length: int          # the cache's slots per row: prompt bucket + answer, a multiple of 8
    per_call: int        # prompts per call (each rolled out G times)
    calls: int
    order: list[int]     # the rows' order across the calls: shortest prompts first when calls > 1


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def span_at(P: int, t: int, length: int) -> int:
    """The slots decode step t attends over in a call whose prompts are P wide: the written
    slots [0, P + t] rounded up to SPAN_STEP, at most the cache's length."""
    return min(length, round_up(P + t + 1, SPAN_STEP))


def planned_kv_slots(plan: CallPlan, widths: list[int], G: int, max_new: int) -> int:
    """The KV slots a plan's decode steps read when every answer runs to `max_new` tokens (as
    random weights' do; real answers that stop early read fewer): per call, its rows (padded to
    the plan's size) times the span of each step, over the call's widest prompt (`_sample`)."""
    total, n = 0, plan.per_call
    for i in range(0, len(widths), n):
        P = max(widths[j] for j in plan.order[i:i + n])
        total += n * G * sum(span_at(P, t, plan.length) for t in range(max_new - 1))
    return total


def _graph_trees(device) -> tuple[int | None, int | None]:
    """(CUDA graphs inductor's graph trees recorded on this device -- one per distinct (rows,
    span, cache) --, graphs recorded again because a static input moved); (None, None) off CUDA
    or where this torch's trees cannot be read."""
    if torch.device(device).type != "cuda":
        return None, None
    try:
        from torch._inductor import cudagraph_trees
        manager = cudagraph_trees.get_manager(torch.device(device).index or 0, create_if_none_exists=False)
        if manager is None:
            return 0, 0
        nodes, count = [n for ns in manager.roots.values() for n in ns], 0
        while nodes:
            node = nodes.pop()
            count += 1
            nodes += [c for cs in node.children.values() for c in cs]
        again = sum(n for by in getattr(manager, "num_rerecord", {}).values() for n in by.values())
        return count, again
    except Exception:          # a private structure: its shape may change between versions
        return None, None


def _listen_for_cudagraph_skips(into: list) -> None:
    """Collect inductor's reasons for running a compiled step without CUDA graphs: it logs them
    (the `cudagraphs` log, off by default) and counts them, and the step runs all the same."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record):        # the same log warns of many distinct sizes: not a skip
            if record.getMessage().startswith("skipping cudagraphs"):
                into.append(record.getMessage())
    logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs").addHandler(Keep())


def dynamic(tokens, positions, mask):
    """The decode step's inputs, their rows and the mask's span marked dynamic: one compile
    serves training calls, evaluation chunks and every span (a dimension of size 1 stays static:
    dynamo specialises it, and such a call compiles once more)."""
    for t in (tokens, positions, mask):
        torch._dynamo.maybe_mark_dynamic(t, 0)
    torch._dynamo.maybe_mark_dynamic(mask, 3)
    return tokens, positions, mask


def _full(t: torch.Tensor) -> torch.Tensor:
    """A parameter's whole tensor: gathered from its shards under FSDP2 (a collective)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def _trim(ro: Rollouts) -> Rollouts:
    """Completion columns after every row's stop token hold only padding (the loop checks for
    the end every few tokens): drop them, as generate would never have made them."""
    L = max(1, int(ro.completion_mask.sum(1).max()))
    if L == ro.completion_ids.shape[1]:
        return ro
    return Rollouts(ro.rows, ro.prompt_ids, ro.prompt_mask, ro.completion_ids[:, :L],
                    ro.completion_mask[:, :L], ro.truncated, ro.texts, ro.group_size,
                    None if ro.sampler_logp is None else ro.sampler_logp[:, :L])
