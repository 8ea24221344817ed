"""vllm_engine.py, driven by a fake vLLM (vLLM pins its own torch and transformers, so it is never
installed here): the order of a call, the sampling parameters, what is pushed, what it returns."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import vllm_engine
from tests.test_rollouts import ROWS

# What vLLM's Qwen2/Qwen3 `load_weights` skips without a word (vllm/model_executor/models/qwen2.py):
# every other name its model lacks raises KeyError -- HF's `model.rotary_emb.original_inv_freq`
# buffer among them, which is why the adapter pushes parameters only.
VLLM_SKIPS = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached",
              "rotary_pos_emb.inv_freq")


class FakeLLM:
    """vLLM's LLM as the adapter uses it: records calls; answers from a script. Its model's
    `load_weights` follows vLLM's rule: the names of `policy`'s parameters load (vLLM maps HF's
    names onto its fused layers), the skip list and a tied `lm_head.` are skipped, any other
    name is a KeyError."""

    def __init__(self, script, policy=None):
        self.calls, self.script, self.pushed, self.generate_calls = [], script, [], 0
        known = set() if policy is None else {n for n, _ in policy.named_parameters()}
        tied = policy is not None and policy.config.tie_word_embeddings

        def load_weights(weights):
            for name, t in weights:
                if any(s in name for s in VLLM_SKIPS) or (tied and name.startswith("lm_head.")):
                    continue
                if name not in known:
                    raise KeyError(name)
                self.pushed.append((name, t.clone()))
            self.calls.append("load_weights")
        model = SimpleNamespace(load_weights=load_weights)
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
        self.generate_calls += 1
        self.prompts, self.params = prompts, params
        return [SimpleNamespace(outputs=[SimpleNamespace(
            token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=-0.5 - 0.1 * j)} for j, t in enumerate(ids)])
            for ids in self.script[i % len(self.script)]]) for i in range(len(prompts))]


@pytest.fixture
def fake(monkeypatch, model):
    def make(script):
        llm = FakeLLM(script, model)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: llm.calls.append("empty_cache"))
        return llm, vllm_engine.VLLMEngine(llm, SimpleNamespace)
    return make


def test_call_order_sampling_and_rollouts(model, tok, fake):
    eos, eot = tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = [eos, eot]           # two stop ids, as Qwen3
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    the_cat, moon = ids("The cat"), ids("The moon is old now")[:4]
    llm, engine = fake([[the_cat + [eos],                        # stops at <|im_end|>
                         the_cat[:1] + [eot]],                   # stops at <|endoftext|>
                        [moon,                                   # hits max_tokens: truncated
                         [eos]]])                                # stops at once: empty answer
    assert llm.calls == ["sleep(2)"]                              # asleep while the policy trains
    ro = engine.generate(model, tok, ROWS, 2, temperature=0.8, max_new_tokens=4)
    # free cached blocks -> wake weights -> push from memory -> reset the prefix cache -> wake KV
    # -> generate -> sleep
    assert llm.calls[1:] == ["empty_cache", "wake_up(weights)", "load_weights", "reset_prefix_cache",
                             "wake_up(kv_cache)", "generate", "sleep(2)"]
    p = llm.params                                                # the plain distribution
    assert (p.n, p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.presence_penalty,
            p.frequency_penalty, p.max_tokens, p.logprobs) == (2, 0.8, 0, 1.0, 0.0, 1.0, 0.0, 0.0, 4, 0)
    assert sorted(p.stop_token_ids) == sorted([eos, eot]) and p.detokenize is False
    # no per-request seed: one seed for every request made child j of each group draw the same
    # noise (the engine is seeded once, when it is built)
    assert not hasattr(p, "seed")
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


def test_push_sends_every_parameter_and_no_buffer(model, tok, fake):
    """Level-2 sleep drops vLLM's weights; every call pushes all of them again -- parameters
    only: vLLM keeps its own buffers across sleep, and a buffer name its model lacks (HF's
    `rotary_emb.original_inv_freq`) makes its loader raise KeyError on the first call."""
    assert any("original_inv_freq" in n for n, _ in model.named_buffers())   # the crash, had we sent it
    with pytest.raises(KeyError, match="original_inv_freq"):
        FakeLLM([], model).llm_engine.model_executor.driver_worker.model_runner.model.load_weights(
            model.named_buffers())
    llm, engine = fake([[[tok.eos_token_id]]])
    engine.generate(model, tok, ROWS, 1, greedy=True, max_new_tokens=2)
    pushed = dict(llm.pushed)
    wanted = dict(model.named_parameters())
    assert set(pushed) == set(wanted) and all(torch.equal(pushed[k], wanted[k]) for k in wanted)
    # Qwen3 ties its head to the embedding: the embedding carries it (vLLM ties what it loads)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(pushed["model.embed_tokens.weight"], model.lm_head.weight)


def test_an_evaluation_is_one_engine_call(model, tok, fake):
    """17 wake/push/sleep cycles of 32 prompts used to answer IFEval's 541; vLLM schedules them."""
    import eval
    llm, engine = fake([[[tok.eos_token_id]]])
    texts, lengths = eval.generate_responses(model, tok, ROWS * 45, max_new_tokens=4, engine=engine)
    assert llm.generate_calls == 1 and len(llm.prompts) == 90 and len(texts) == 90
    assert llm.params.temperature == 0.0 and llm.params.n == 1 and lengths == [1] * 90


def test_no_fixed_master_port(monkeypatch):
    """Two runs on one node must not both take port 29533: a free port unless one is set."""
    made = {}
    fake_vllm = SimpleNamespace(LLM=lambda **kw: made.update(kw) or FakeLLM([]),
                                SamplingParams=SimpleNamespace)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    for var in ("MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    vllm_engine.make("cuda", model_path="x", seed=3)
    port = os.environ["MASTER_PORT"]
    assert port != "29533" and 0 < int(port) < 65536 and made["seed"] == 3
    monkeypatch.setenv("MASTER_PORT", "31000")
    vllm_engine.make("cuda", model_path="x")
    assert os.environ["MASTER_PORT"] == "31000"


def test_missing_vllm_is_one_line_without_a_traceback(tmp_path):
    code = ("import sys; sys.modules['vllm'] = None; import train; "
            f"train.main(['--rollout-engine', 'vllm', '--steps', '1', '--out', r'{tmp_path}'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "needs vLLM" in lines[0] and "separate environment" in lines[0]
