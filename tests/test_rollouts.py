"""rollouts.py and engines.py: what every engine returns (stops at every stop id, no padding
beyond the longest prompt), every engine under bf16 autocast with fp32 master weights, and
which engine `auto` picks. The static engine's own tests: tests/test_static_engine.py."""

import pytest
import torch

import engines
import grpo
import rollouts
import static_engine
import toy
from tests import worlds

ROWS = [{"prompt": "Describe the cat.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"prompt": "Tell me about the old moon, now. Do not use any commas.",
         "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}]


def sampled(engine, model, tok, rows=ROWS, G=4, **kw):
    torch.manual_seed(0)
    return engine.generate(model, tok, rows, G, **{"temperature": 0.9, "max_new_tokens": 12} | kw)


def test_stops_at_every_stop_id_and_trims(model, tok):
    """A completion ends at the first of several stop ids; columns after every row's stop are
    dropped, as generate drops them. The second stop id is a token greedy decoding does emit."""
    rows = ROWS + toy.train_eval_rows(0, n_train=6, n_eval=1)[0][:4]
    free = rollouts.HFEngine().generate(model, tok, rows, 1, greedy=True, max_new_tokens=10)
    stop = int(free.completion_ids[0, 2])
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    out = [e.generate(model, tok, rows, 1, greedy=True, max_new_tokens=10)
           for e in (rollouts.HFEngine(), static_engine.StaticEngine(prompt_width=64))]
    assert torch.equal(out[0].completion_ids, out[1].completion_ids) and out[0].texts == out[1].texts
    for ro in out:
        assert ro.completion_mask[0].sum() <= 3 and not ro.truncated[0]
        assert ro.completion_ids.shape[1] == ro.completion_mask.sum(1).max()


def test_no_prompt_padding_beyond_the_longest_prompt(model, tok):
    """hf-static used to keep its left padding to --max-prompt-length in Rollouts, so the losses
    paid for 512 + L tokens; now the prompt columns end where the longest prompt begins."""
    longest = max(len(tok(__import__("data").chat_prompt(tok, r["prompt"]),
                          add_special_tokens=False)["input_ids"]) for r in ROWS)
    for engine in (rollouts.HFEngine(), static_engine.StaticEngine(prompt_width=512)):
        ro = sampled(engine, model, tok)
        assert ro.prompt_ids.shape[1] == longest and ro.prompt_mask[:, 0].any()


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_every_engine_under_bf16_autocast_with_fp32_masters(engine, tmp_path):
    """The GPU's numerics on the CPU: fp32 master weights, bf16 autocast around the call (as
    train.py calls it). Qwen3's keys come out fp32 under autocast (fp32 k_norm and RoPE) and its
    values bf16: transformers' own static cache (up to 5.23) then failed in index_copy_. The
    sampler's log-probs must stay close to the trainer's."""
    policy, tok = worlds.write_qwen3_policy(tmp_path, hidden=64, layers=2)
    policy.train()
    eng = engines.make_engine(engine, "cpu", dtype=torch.bfloat16, prompt_width=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ro = sampled(eng, policy, tok, max_new_tokens=8)
        logp = grpo.completion_logprobs(policy, ro, 0.9)
    assert policy.training and next(policy.parameters()).dtype == torch.float32
    gap = (ro.sampler_logp - logp.detach()).abs()[ro.completion_mask.bool()]
    assert torch.isfinite(gap).all() and gap.mean() < 0.05, gap.mean()
    if engine == "static":
        assert eng.cache.keys[0].dtype == eng.cache.values[0].dtype == torch.bfloat16


def test_auto_picks_static_on_cuda_without_vllm_and_under_torchrun(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    assert engines.make_engine("auto", "cuda").name == "static"
    assert engines.make_engine("auto", "cpu").name == "hf"
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    assert engines.make_engine("auto", "cuda", distributed=True).name == "static"
    with pytest.raises(SystemExit, match="one process"):
        engines.make_engine("vllm", "cuda", distributed=True)


def test_auto_on_the_cpu_compiles_only_for_long_runs_in_one_process_with_a_compiler(monkeypatch):
    """The rule of results/bench_engines_cpu.md: inductor's compile repays itself in a long run."""
    long = engines.CPU_COMPILE_STEPS
    monkeypatch.setattr(engines, "cpp_compiler", lambda: "/usr/bin/c++")
    engine = engines.make_engine("auto", "cpu", steps=long)
    assert engine.name == "static" and engine.compile_args == {"backend": "inductor"}
    assert engine.eager_if_compile_fails
    assert engines.make_engine("auto", "cpu", steps=long - 1).name == "hf"
    assert engines.make_engine("auto", "cpu", steps=long, distributed=True).name == "hf"
    assert engines.make_engine("hf", "cpu", steps=long).name == "hf"
    monkeypatch.setattr(engines, "cpp_compiler", lambda: None)
    assert engines.make_engine("auto", "cpu", steps=long).name == "hf"
