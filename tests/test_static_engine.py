"""static_engine.py: the static engine samples like hf, keeps its copy and cache in place,
compiles once per process, attends over a growing span, reads each key/value head once, and
plans balanced evaluation calls sized by the free memory."""

import pytest
import torch

import grpo
import rollouts
import static_engine
import toy
from tests.test_rollouts import ROWS, sampled


def test_static_samples_exactly_like_hf_in_fp32(model, tok):
    """Same seed, same tokens: the copy, the static cache and the own decode loop change nothing."""
    a = sampled(rollouts.HFEngine(), model, tok)
    b = sampled(static_engine.StaticEngine(prompt_width=48), model, tok)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.truncated, b.truncated)
    assert torch.allclose(a.sampler_logp, b.sampler_logp, atol=1e-5)
    greedy = [e.generate(model, tok, ROWS, 1, greedy=True, max_new_tokens=20).texts
              for e in (rollouts.HFEngine(), static_engine.StaticEngine(prompt_width=48))]
    assert greedy[0] == greedy[1]


def test_the_copy_equals_the_policy_after_a_step_and_keeps_its_addresses(tok):
    """bf16 copy == policy cast to bf16 exactly, after an optimizer step too; same addresses;
    the rotary frequencies stay fp32; the tied head stays tied."""
    policy = toy.build_model(tok, seed=0)
    engine = static_engine.StaticEngine(dtype=torch.bfloat16, prompt_width=48)
    copy = engine.refresh(policy)
    ptrs = [t.data_ptr() for t in [*copy.parameters(), *copy.buffers()]]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    ro = sampled(engine, policy, tok)
    logp = grpo.completion_logprobs(policy, ro, 0.9)
    (-(logp * ro.completion_mask).sum()).backward()
    opt.step()
    engine.refresh(policy)
    assert [t.data_ptr() for t in [*copy.parameters(), *copy.buffers()]] == ptrs
    masters = dict(policy.named_parameters())
    for name, p in copy.named_parameters():
        assert p.dtype == torch.bfloat16
        assert torch.equal(p, masters[name].detach().to(torch.bfloat16)), name
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert copy.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(copy.model.rotary_emb.inv_freq, policy.model.rotary_emb.inv_freq)


def test_one_compile_per_process_with_the_production_compiler(tok):
    """inductor (the compiler the GPU runs; CUDA graphs are the GPU's part) compiles the decode
    step once: over two training calls (prompts of different lengths, the cache reused in
    place), evaluations of another row count and answer length with a padded last chunk, a
    prompt wider than --max-prompt-length (a wider cache), every span the answer grows through
    (guards checked on each call's first step only), and training again on the kept cache, at
    its addresses. Before, it compiled three times: static shapes, an automatic-dynamic
    recompile, and again when the span first equalled the cache length."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = toy.build_model(tok, seed=0)
    engine = static_engine.StaticEngine(prompt_width=32, compile={"backend": "inductor"})
    engine.generate(model, tok, [ROWS[0]], 4, max_new_tokens=6)
    train_cache = engine.cache
    ptr = train_cache.keys[0].data_ptr()
    engine.generate(model, tok, [ROWS[1]], 4, max_new_tokens=6)       # longer prompt, same bucket
    assert engine.cache is train_cache and train_cache.keys[0].data_ptr() == ptr
    wide = {**ROWS[0], "prompt": " ".join(["Describe the old cat"] * 12)}   # > 32 prompt tokens
    rows = toy.train_eval_rows(0, n_train=10, n_eval=1)[0][:5]
    engine.max_rows = 2                       # 5 prompts: calls of 2, 2 and 1 padded to 2
    for batch in (rows, rows + [wide]):                                # two evaluations
        answers = engine.generate(model, tok, batch, 1, greedy=True, max_new_tokens=static_engine.SPAN_STEP + 9)
    assert engine.last_shape[1] > 32 + static_engine.SPAN_STEP + 9        # the wide prompt's bucket
    engine.max_rows = None
    engine.generate(model, tok, [ROWS[0]], 4, max_new_tokens=6)       # training again
    assert engine.cache is train_cache and train_cache.keys[0].data_ptr() == ptr
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert engine.graph_stats("cpu")["compiles"] == 1 and engine.graph_stats("cpu")["kept_cache_dropped"] == 0
    eager = static_engine.StaticEngine(prompt_width=32, max_rows=2).generate(
        model, tok, rows + [wide], 1, greedy=True, max_new_tokens=static_engine.SPAN_STEP + 9)
    assert answers.texts == eager.texts                     # the compiled step answers the same


def test_the_attended_span_grows_with_the_answer(model, tok, monkeypatch):
    """The decode step reads slots [0, P + t] rounded up to SPAN_STEP, not the whole cache from
    the first token: at most one step's worth of slots beyond what is written."""
    spans, real = [], static_engine.gqa_attention
    monkeypatch.setattr(static_engine, "gqa_attention", lambda m, q, k, v, mask, **kw:
                        spans.append((q.shape[2], mask.shape[-1])) or real(m, q, k, v, mask, **kw))
    monkeypatch.setattr(static_engine, "SPAN_STEP", 16)
    static_engine.register_attention()
    engine = static_engine.StaticEngine(prompt_width=48)
    ro = engine.generate(model, tok, ROWS, 1, greedy=True, max_new_tokens=40)
    static_engine.register_attention()
    P, length = ro.prompt_ids.shape[1], engine.last_shape[1]
    decode = [s for q, s in spans if q == 1][::model.config.num_hidden_layers]   # one per token
    assert len(decode) == ro.completion_ids.shape[1] - 1 and length == 48 + 40
    assert engine.kv_slots == sum(decode) * len(ROWS)                 # the reads counted as read
    for t, span in enumerate(decode):
        assert span == min(length, -(-(P + t + 1) // 16) * 16), (t, span)
    assert decode[0] < length and decode[-1] == min(length, -(-(P + len(decode)) // 16) * 16)


def test_evaluation_in_chunks_of_one_shape_gives_the_same_answers(model, tok):
    rows = toy.train_eval_rows(0, n_train=10, n_eval=1)[0][:7]
    whole = static_engine.StaticEngine(prompt_width=64).generate(model, tok, rows, 1, greedy=True,
                                                           max_new_tokens=8)
    engine = static_engine.StaticEngine(prompt_width=64, max_rows=3)
    shapes = []
    real = engine._cache_for
    engine._cache_for = lambda *a, **k: shapes.append(a[1:3]) or real(*a, **k)
    chunked = engine.generate(model, tok, rows, 1, greedy=True, max_new_tokens=8)
    assert chunked.texts == whole.texts and chunked.rows == rows       # the rows' order, not the calls'
    assert shapes == [(3, 72)]                 # 3 + 3 + (1 padded to 3) rows: one cache of one shape


def test_evaluation_batches_are_sized_by_the_free_gpu_memory(monkeypatch):
    """At Qwen3-0.6B's shape a bf16 cache slot costs 112 KiB (2 x 28 layers x 8 heads x 128 x 2 B);
    an evaluation of 1,280-token answers (+ 512 prompt slots) takes as many rows as fit in 80 % of
    the free memory, KV cache and four fp32 copies of a row's logits each."""
    from transformers import Qwen3Config

    from tools.shapes import QWEN3_06B
    config = Qwen3Config(**QWEN3_06B)
    assert static_engine.cache_bytes_per_row(config, 1, torch.bfloat16) == 114_688
    engine = static_engine.StaticEngine(torch.bfloat16, prompt_width=512)
    engine.copy = __import__("types").SimpleNamespace(dtype=torch.bfloat16)   # only its dtype is read
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (40 * 2**30, 80 * 2**30))
    per_row = 114_688 * 1792 + 16 * 151_936
    rows = engine.rows_per_call(config, 1792, torch.device("cuda"), wanted=541)
    assert rows == int(0.8 * 40 * 2**30) // per_row == 165
    assert engine.rows_per_call(config, 1792, torch.device("cuda"), wanted=64) == 64


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("q", [1, 5])
def test_gqa_attention_equals_the_reference(dtype, tol, q):
    """The folded attention (each KV head read once for its g query heads) against attention
    written out with K and V repeated to every query head, with a mask of the engine's kind and
    the keys longer than the mask (the decode step hands over the whole cache)."""
    from types import SimpleNamespace
    torch.manual_seed(0)
    R, kv, g, d, S, length = 3, 2, 4, 8, 11, 16
    query = torch.randn(R, kv * g, q, d, dtype=dtype)
    key, value = (torch.randn(R, kv, length, d, dtype=dtype) for _ in range(2))
    allowed = torch.rand(R, 1, q, S) < 0.7
    allowed[..., 0] = True                                          # no fully masked row
    mask = torch.zeros(R, 1, q, S, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    out, _ = static_engine.gqa_attention(SimpleNamespace(num_key_value_groups=g), query, key, value,
                                    mask, scaling=d ** -0.5)                 # [R, q, H, d]
    k = key[:, :, :S].double().repeat_interleave(g, 1)                      # [R, H, S, d]
    v = value[:, :, :S].double().repeat_interleave(g, 1)
    scores = query.double() @ k.transpose(-1, -2) * d ** -0.5 + mask.double()
    ref = (scores.softmax(-1) @ v).transpose(1, 2)                          # [R, q, H, d]
    assert out.shape == (R, q, kv * g, d) and out.dtype == dtype
    assert (out.double() - ref).abs().max() < tol


def test_the_copy_never_repeats_keys_and_values(model, tok, monkeypatch):
    """transformers' sdpa path copies K and V to every query head when a mask is given (always,
    for the engine) -- in the compiled decode step at every token. The copy attends with
    gqa_attention and calls repeat_kv nowhere, prefill and traced decode step alike; the policy
    keeps its own attention."""
    import transformers.integrations.sdpa_attention as sdpa
    assert model.config.num_attention_heads > model.config.num_key_value_heads      # GQA
    calls, real = [], sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda *a: calls.append(a[0].shape) or real(*a))
    torch._dynamo.reset()
    engine = static_engine.StaticEngine(prompt_width=48, compile={"backend": "eager"})
    ro = sampled(engine, model, tok)
    assert ro.completion_ids.shape[1] > 1 and calls == []
    assert engine.copy.config._attn_implementation == static_engine.DECODE_ATTENTION
    assert model.config._attn_implementation == "sdpa"


def test_evaluation_calls_are_balanced_and_sized_for_the_widest_prompt(tok, monkeypatch):
    """7 prompts at 6 rows per call were 6 + 1 padded to 6 (12 rows decoded); balanced, they are
    2 calls of 4. A prompt wider than --max-prompt-length gets a wider cache, and the rows per
    call are sized for that cache, not for prompt_width + the answer."""
    from types import SimpleNamespace
    config = toy.build_model(tok, seed=0).config
    engine = static_engine.StaticEngine(torch.bfloat16, prompt_width=48)   # the rows: 21-44 tokens
    engine.copy = SimpleNamespace(dtype=torch.bfloat16)              # only its dtype is read
    per_row = lambda length: (static_engine.cache_bytes_per_row(config, length, torch.bfloat16)  # noqa: E731
                              + 16 * config.vocab_size)
    free = int(6.5 * per_row(48 + 64) / 0.8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, 2 * free))
    rows = toy.train_eval_rows(0, n_train=10, n_eval=1)[0][:7]
    cuda = torch.device("cuda")
    assert engine.rows_per_call(config, 112, cuda, 7) == 6
    plan = engine.plan(config, tok, rows, 1, 64, cuda)
    assert (plan.length, plan.per_call, plan.calls) == (112, 4, 2)
    wide = {**rows[0], "prompt": " ".join(["Describe the old cat"] * 20)}   # 107 tokens
    plan = engine.plan(config, tok, rows + [wide], 1, 64, cuda)
    length, n, calls = plan.length, plan.per_call, plan.calls
    assert plan.order[-1] == 7 and plan.order != list(range(8))            # the widest goes last
    fits = int(0.8 * free) // per_row(length)
    assert length == 256 + 64 and calls == -(-8 // fits) and n == -(-8 // calls) and n < 6


@pytest.mark.parametrize("prompt_width,answer", [(512, 500), (512, 1000), (512, 1280), (128, 64), (48, 37)])
def test_every_planned_length_and_span_is_a_multiple_of_8(tok, prompt_width, answer):
    """On CUDA inductor guards the mask's row stride to a multiple of 8: a cache length of
    512 + 500 would compile the decode step a second time. Every length the plan makes, and
    every span a decode step attends over, is one (and so is a cache's slot count)."""
    from types import SimpleNamespace
    config = toy.build_model(tok, seed=0).config
    engine = static_engine.StaticEngine(prompt_width=prompt_width)
    engine.copy = SimpleNamespace(dtype=torch.float32)
    wide = {**ROWS[0], "prompt": " ".join(["Describe the old cat"] * 40)}   # wider than 128
    for rows in (ROWS, ROWS + [wide]):
        length = engine.plan(config, tok, rows, 2, answer, torch.device("cpu")).length
        assert length % 8 == 0 and length >= prompt_width + answer
        cache = static_engine.KVCache(config, 2, length, torch.float32, "cpu")
        assert cache.keys[0].shape[2] % 8 == 0 and cache.keys[0].shape[2] > length
        spans = {min(length, static_engine.round_up(P + t + 1, static_engine.SPAN_STEP))
                 for P in (5, 37, length - answer) for t in range(answer)}
        assert all(span % 8 == 0 for span in spans), sorted(span for span in spans if span % 8)


def test_an_evaluation_keeps_the_rollout_cache_where_memory_allows(tok, monkeypatch):
    """A rollout call (G >= 2) keeps its cache; an evaluation (one answer per prompt) is sized
    beside it and uses a cache of its own, so the rollout cache -- and on CUDA its graphs --
    outlives it; only where not one evaluation row would fit beside it is it dropped (counted)."""
    from types import SimpleNamespace
    config = toy.build_model(tok, seed=0).config
    engine = static_engine.StaticEngine(torch.bfloat16, prompt_width=48)
    engine.copy = SimpleNamespace(dtype=torch.bfloat16)
    kept = static_engine.KVCache(config, 8, 112, torch.bfloat16, "cpu")
    engine.cache = kept
    per_row = static_engine.cache_bytes_per_row(config, 112, torch.bfloat16) + 16 * config.vocab_size
    free = {"bytes": int(10.5 * per_row / 0.8)}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free["bytes"], 4 * free["bytes"]))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    cuda = torch.device("cuda")
    assert engine.rows_per_call(config, 112, cuda, 40, keep=False) == 10 and engine.cache is kept
    free["bytes"] = int(0.5 * per_row / 0.8)              # not one row fits beside it: dropped
    assert engine.rows_per_call(config, 112, cuda, 40, keep=False) == 1 and engine.cache is None
    assert engine.dropped == 1


def test_evaluations_sorted_by_prompt_length_answer_as_one_call_does(model, tok):
    """Several calls take the prompts shortest first (a call of short prompts attends over short
    prompts: fewer KV slots read); the answers come back in the rows' order, equal to one call's."""
    short = toy.train_eval_rows(0, n_train=10, n_eval=1)[0][:8]
    wide = {**ROWS[0], "prompt": " ".join(["Describe the old cat"] * 20)}     # about 100 tokens
    rows = [wide] + short[:4] + [wide] + short[4:]        # unsorted, both calls hold a wide prompt
    whole = static_engine.StaticEngine(prompt_width=128).generate(model, tok, rows, 1, greedy=True,
                                                                  max_new_tokens=12)
    sorted_engine = static_engine.StaticEngine(prompt_width=128, max_rows=5)
    chunked = sorted_engine.generate(model, tok, rows, 1, greedy=True, max_new_tokens=12)
    assert chunked.texts == whole.texts and chunked.rows == rows
    assert torch.equal(chunked.completion_ids, whole.completion_ids)
    unsorted = static_engine.StaticEngine(prompt_width=128, max_rows=5)
    unsorted.plan = lambda *a, **k: dataclasses_replace(static_engine.StaticEngine.plan(unsorted, *a, **k))
    unsorted.generate(model, tok, rows, 1, greedy=True, max_new_tokens=12)
    assert 0 < sorted_engine.kv_slots < unsorted.kv_slots


def dataclasses_replace(plan):
    import dataclasses
    return dataclasses.replace(plan, order=list(range(len(plan.order))))


def test_the_plans_kv_slots_are_the_slots_the_engine_reads(model, tok, monkeypatch):
    """planned_kv_slots (tools/bench.py kv-plan's figures) counts what the decode steps do read:
    the engine's own count over two calls, every answer run to its limit (no stop id comes)."""
    monkeypatch.setattr(static_engine, "stop_token_ids", lambda model, tok: [10**6])
    rows = toy.train_eval_rows(0, n_train=10, n_eval=1)[0][:5] + [
        {**ROWS[0], "prompt": " ".join(["Describe the old cat"] * 20)}]
    engine = static_engine.StaticEngine(prompt_width=64, max_rows=3)
    plan = engine.plan(model.config, tok, rows, 1, 70, torch.device("cpu"))
    engine.generate(model, tok, rows, 1, greedy=True, max_new_tokens=70)
    widths = __import__("data").encode_prompts(tok, [r["prompt"] for r in rows])[1].sum(1).tolist()
    assert plan.calls == 2 and engine.kv_slots == static_engine.planned_kv_slots(plan, widths, 1, 70)


def test_kv_plan_reports_before_and_now(monkeypatch):
    from tools import bench
    monkeypatch.setattr(bench, "decode_guard_nodes", lambda layers: 100)
    r = bench.kv_plan(widths=[20] * 100 + [300] * 5, free_gib=1.0)
    assert r["evaluation"]["calls"] > 1 and r["evaluation"]["ratio"] < 1 and r["training"]["ratio"] < 1
    assert r["evaluation"]["ideal_ratio"] <= r["evaluation"]["ratio"]
    assert r["guards"]["evaluation_nodes_checked_after"] == 100 * r["evaluation"]["calls"]
    assert "| evaluation |" in bench.kv_plan_table(r)


def test_a_compile_that_fails_decodes_eagerly_with_a_line_or_raises(model, tok, capsys):
    """auto's CPU engine (eager_if_compile_fails) meets a machine where inductor cannot compile (no
    C++ compiler, no Python headers): one line, then the same tokens as the eager engine. Any
    other static engine raises: on a GPU a silently slow decode is the failure to see."""
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    a = sampled(static_engine.StaticEngine(prompt_width=48, compile=None), model, tok)
    falls_back = static_engine.StaticEngine(prompt_width=48, compile={"backend": broken},
                                            eager_if_compile_fails=True)
    b = sampled(falls_back, model, tok)
    assert torch.equal(a.completion_ids, b.completion_ids) and falls_back.step is static_engine._decode
    assert "could not compile the decode step here (RuntimeError: no C++ compiler found)" in \
        capsys.readouterr().out
    assert torch.equal(sampled(falls_back, model, tok).completion_ids, a.completion_ids)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=r"no C\+\+ compiler"):
        sampled(static_engine.StaticEngine(prompt_width=48, compile={"backend": broken}), model, tok)
    torch._dynamo.reset()


def many_stops(model, tok, share=8):
    """Every `share`-th token id stops an answer: rows end at scattered steps, as real ones do."""
    model.generation_config.eos_token_id = [tok.eos_token_id, *range(3, len(tok), share)]


def test_finished_rows_are_compacted_and_the_answers_stay_equal(model, tok):
    """Every few tokens the rows still decoding move to the front of the cache and the decode step
    runs on them alone (a power of two of rows, at least 8): fewer KV slots read, and the same
    answers -- sampled ones equal to hf's under one seed (the multinomial draws for every row of
    the call), greedy ones equal to the engine's own without compaction."""
    many_stops(model, tok)
    rows = toy.train_eval_rows(0, n_train=10, n_eval=1)[0][:4]
    hf = sampled(rollouts.HFEngine(), model, tok, rows, G=8, max_new_tokens=40)
    never = static_engine.StaticEngine(prompt_width=48, compact_every=0)
    often = static_engine.StaticEngine(prompt_width=48, compact_every=2)
    a, b = (sampled(e, model, tok, rows, G=8, max_new_tokens=40) for e in (never, often))
    lengths = hf.completion_mask.sum(1)
    assert lengths.min() < 10 and lengths.max() > 20                 # rows end at scattered steps
    for ro in (a, b):
        assert torch.equal(ro.completion_ids, hf.completion_ids) and ro.texts == hf.texts
        mask = ro.completion_mask.bool()
        assert torch.allclose(ro.sampler_logp[mask], hf.sampler_logp[mask], atol=1e-5)
    assert 0 < often.kv_slots < 0.8 * never.kv_slots
    torch.manual_seed(1)              # greedy answers of small random weights repeat one token:
    with torch.no_grad():             # larger weights answer each prompt differently
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    evaluation = toy.train_eval_rows(0, n_train=10, n_eval=24)[1]
    never, often = (static_engine.StaticEngine(prompt_width=48, compact_every=n) for n in (0, 2))
    g = [e.generate(model, tok, evaluation, 1, greedy=True, max_new_tokens=40)
         for e in (rollouts.HFEngine(), never, often)]
    assert g[0].completion_mask.sum(1).min() < 4 and g[0].completion_mask.sum(1).max() > 20
    for ro in g[1:]:
        assert ro.texts == g[0].texts and torch.equal(ro.completion_ids, g[0].completion_ids)
    assert 0 < often.kv_slots < 0.8 * never.kv_slots


def test_compaction_keeps_one_compile_with_the_production_compiler(tok):
    """The compacted step runs on row views of the same cache (same addresses, same strides):
    inductor compiles it once over rows 32 -> 16 -> 8, and answers as the eager engine does."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = toy.build_model(tok, seed=0)
    many_stops(model, tok)
    rows = toy.train_eval_rows(0, n_train=10, n_eval=1)[0][:4]
    compiled = static_engine.StaticEngine(prompt_width=48, compact_every=2, compile={"backend": "inductor"})
    seen, real = [], static_engine._compact
    static_engine._compact = lambda u: seen.append(r := real(u)) or r
    try:
        a = sampled(compiled, model, tok, rows, G=8, max_new_tokens=40)
    finally:
        static_engine._compact = real
    assert [len(k) for k in seen if k is not None] == [16, 8]
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    b = sampled(static_engine.StaticEngine(prompt_width=48, compact_every=2, compile=None), model, tok,
                rows, G=8, max_new_tokens=40)
    assert torch.equal(a.completion_ids, b.completion_ids)
    torch._dynamo.reset()


def test_compact_picks_the_live_rows_then_finished_ones_to_a_power_of_two():
    u = torch.zeros(64, dtype=torch.bool)
    assert static_engine._compact(torch.ones(64, dtype=torch.bool)) is None
    u[[3, 40, 41]] = True
    assert static_engine._compact(u).tolist() == [3, 40, 41, 0, 1, 2, 4, 5]     # 8, not 3
    u[:20] = True
    keep = static_engine._compact(u)
    assert len(keep) == 32 and keep[:22].tolist() == [*range(20), 40, 41] and not u[keep[22:]].any()
    assert static_engine._compact(torch.ones(6, dtype=torch.bool).index_fill(0, torch.tensor([0]), False)) is None
    assert len(static_engine._compact(torch.zeros(16, dtype=torch.bool))) == 0     # all ended: stop


def test_the_compaction_table_says_what_was_measured():
    from tools import bench
    v = {"kv_slots": 100, "wall_s": 2.0, "mean_answer_tokens": 9.5, "truncated": 0.1, "answers_equal": True,
         "kv_ratio": 1.0, "wall_ratio": 1.0}
    r = {"device": "CPU", "threads": 1, "prompts": 5, "max_new_tokens": 16,
         "variants": {"off": v, "every 32": {**v, "kv_slots": 31, "kv_ratio": 0.31, "answers_equal": False}}}
    md = bench.compaction_table(r)
    assert "| every 32 | 31 | 0.31 |" in md and md.rstrip().endswith("| NO |") and "10.0% truncated" in md


def test_only_skips_count_as_skip_reasons():
    """inductor's `cudagraphs` log also warns when a step has many distinct sizes (every span and
    row count is one): that is not a step run without graphs, and must not read as one."""
    import logging
    reasons = []
    static_engine._listen_for_cudagraph_skips(reasons)
    log = logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs")
    log.warning("CUDAGraph supports dynamic shapes by recording a new graph for each distinct input size.")
    log.warning("skipping cudagraphs due to mutated inputs (2 instances)")
    assert reasons == ["skipping cudagraphs due to mutated inputs (2 instances)"]
    stats = static_engine.StaticEngine().graph_stats("cpu")
    assert stats["cuda_graphs"] is None and stats["cuda_graphs_recorded_again"] is None
    assert stats["copied_inputs_recorded"] >= 0 and stats["compactions"] == 0
