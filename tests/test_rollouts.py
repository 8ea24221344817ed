"""rollouts.py engines: hf-static samples like hf and compiles once; the vLLM adapter, with a fake."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import rollouts
import toy

ROWS = [{"prompt": "Describe the cat.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"prompt": "Tell me about the old moon, now. Do not use any commas.",
         "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}]


def test_hf_static_samples_exactly_like_hf(model, tok):
    """Same seed, same tokens: the fixed prompt width and the static cache change nothing."""
    out = {}
    for engine in (rollouts.HFEngine(), rollouts.HFEngine(static_cache=True, prompt_width=48)):
        torch.manual_seed(0)
        ro = engine.generate(model, tok, ROWS, 4, temperature=0.9, max_new_tokens=12)
        lengths = ro.completion_mask.sum(1)
        out[engine.static_cache] = ([c[:n].tolist() for c, n in zip(ro.completion_ids, lengths)],
                                    ro.texts, ro.truncated.tolist(), ro.sampler_logp)
    assert out[True][:3] == out[False][:3]
    assert torch.allclose(out[True][3], out[False][3], atol=1e-5)


def test_hf_static_compiles_once_for_every_prompt_length(tok):
    """The cache keeps one shape, so torch.compile traces the decode step once (a growing cache
    would retrace: the counter checks itself with prompt_width 0)."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig
    config = CompileConfig(backend="eager", dynamic=False)   # trace, no code generation
    config._compile_all_devices = True                       # compile on the CPU, for the test
    graphs = {}
    for width in (48, 0):
        torch._dynamo.reset()
        counters.clear()
        model = toy.build_model(tok, seed=0)                  # no compiled call cached on it
        engine = rollouts.HFEngine(static_cache=True, prompt_width=width, compile_config=config)
        for row in (ROWS[0], ROWS[1], ROWS[0]):
            engine.generate(model, tok, [row], 2, max_new_tokens=6)
        graphs[width] = counters["stats"]["unique_graphs"]
    assert graphs[48] == 1 and graphs[0] > 1


class FakeLLM:
    """vLLM's LLM as the adapter uses it: records calls; answers from a script."""

    def __init__(self, script):
        self.calls, self.script, self.pushed = [], script, []
        model = SimpleNamespace(load_weights=lambda weights: self.pushed.extend(
            (name, t.clone()) for name, t in weights) or self.calls.append("load_weights"))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=SimpleNamespace(model=model))))

    def sleep(self, level):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags):
        self.calls.append(f"wake_up({','.join(tags)})")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def generate(self, prompts, params, use_tqdm):
        self.calls.append("generate")
        self.prompts, self.params = prompts, params
        return [SimpleNamespace(outputs=[SimpleNamespace(
            token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=-0.5 - 0.1 * j)} for j, t in enumerate(ids)])
            for ids in self.script[i]]) for i in range(len(prompts))]


def test_vllm_adapter_order_sampling_and_rollouts(model, tok):
    eos, eot = tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = [eos, eot]           # two stop ids, as Qwen3
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    the_cat, moon = ids("The cat"), ids("The moon is old now")[:4]
    script = [[the_cat + [eos],                                  # stops at <|im_end|>
               the_cat[:1] + [eot]],                             # stops at <|endoftext|>
              [moon,                                             # hits max_tokens: truncated
               [eos]]]                                           # stops at once: empty answer
    llm = FakeLLM(script)
    engine = rollouts.VLLMEngine(llm, SimpleNamespace, seed=0)
    assert llm.calls == ["sleep(2)"]                              # asleep while the policy trains
    torch.manual_seed(0)
    ro = engine.generate(model, tok, ROWS, 2, temperature=0.8, max_new_tokens=4)
    # wake weights -> push from memory -> reset the prefix cache -> wake KV -> generate -> sleep
    assert llm.calls[1:] == ["wake_up(weights)", "load_weights", "reset_prefix_cache",
                             "wake_up(kv_cache)", "generate", "sleep(2)"]
    names = [n for n, _ in llm.pushed]
    assert names == [n for n, _ in model.named_parameters()] and "lm_head.weight" not in names
    assert all(torch.equal(t, dict(model.named_parameters())[n]) for n, t in llm.pushed)
    p = llm.params                                                # the plain distribution
    assert (p.n, p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.presence_penalty,
            p.frequency_penalty, p.max_tokens, p.logprobs) == (2, 0.8, 0, 1.0, 0.0, 1.0, 0.0, 0.0, 4, 0)
    assert sorted(p.stop_token_ids) == sorted([eos, eot]) and p.detokenize is False
    assert llm.prompts[0]["prompt_token_ids"] == tok(
        tok.apply_chat_template([{"role": "user", "content": ROWS[0]["prompt"]}], tokenize=False,
                                add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    # the same Rollouts as HF generate: groups prompt-major, masks through the first stop
    assert ro.group_size == 2 and ro.rows == [ROWS[0], ROWS[0], ROWS[1], ROWS[1]]
    assert ro.completion_mask.sum(1).tolist() == [len(the_cat) + 1, 2, 4, 1]
    assert ro.truncated.tolist() == [False, False, True, False]
    assert ro.texts[0] == "The cat" and ro.texts[3] == ""
    assert ro.sampler_logp[0, :3].tolist() == pytest.approx([-0.5, -0.6, -0.7])
    assert ro.prompt_ids.shape[0] == 4 and (ro.prompt_mask[:, -1] == 1).all()   # left-padded
    # greedy evaluation: one answer per prompt at temperature 0, no log-probs kept
    llm.script = [[[eos]], [[eos]]]
    greedy = engine.generate(model, tok, ROWS, 1, greedy=True, max_new_tokens=4)
    assert llm.params.temperature == 0.0 and llm.params.n == 1 and greedy.sampler_logp is None


def test_missing_vllm_is_one_line_without_a_traceback(tmp_path):
    code = ("import sys; sys.modules['vllm'] = None; import train; "
            f"train.main(['--rollout-engine', 'vllm', '--steps', '1', '--out', r'{tmp_path}'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "needs vLLM" in lines[0] and "separate environment" in lines[0]
