"""grpo.py and rollouts.py: advantages, clipping, KL, aggregation by hand; rollouts and rewards."""

import math

import pytest
import torch

import data
import grpo
import ifeval
import rollouts
import tasks


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    a = grpo.group_advantages(r, 4)
    s = math.sqrt(1 / 3)                     # unbiased std of [1, 0, 0, 1]
    expected = [0.5 / (s + 1e-4), -0.5 / (s + 1e-4)] * 1
    assert a[:4].tolist() == pytest.approx([expected[0], expected[1], expected[1], expected[0]])
    assert a[4:].tolist() == [0.0] * 4      # no spread: no signal
    assert grpo.group_advantages(r, 4, scale=False)[:4].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_clipped_surrogate_hand_computed():
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]]))
    coef = torch.tensor([1.0, -1.0, 1.0, -1.0])
    s, clipped = grpo.clipped_surrogate(logp, old, coef, 0.2, 0.2)
    # rho=1.5,A=+1: min(1.5, 1.2)=1.2 (clipped); A=-1: min(-1.5,-1.2)=-1.5
    # rho=0.5,A=+1: min(0.5, 0.8)=0.5;             A=-1: min(-0.5,-0.8)=-0.8 (clipped)
    assert s.squeeze(1).tolist() == pytest.approx([1.2, -1.5, 0.5, -0.8])
    assert clipped.squeeze(1).tolist() == [True, False, False, True]
    s2, _ = grpo.clipped_surrogate(logp, old, coef, 0.2, 0.6)     # clip-higher (DAPO)
    assert s2[0].item() == pytest.approx(1.5)


def test_kl_k3_hand_computed_and_nonnegative():
    logp, ref = torch.tensor([0.0, -1.0, -2.0]), torch.tensor([0.5, -1.0, -3.0])
    k = grpo.kl_k3(logp, ref)
    assert k.tolist() == pytest.approx([math.exp(0.5) - 0.5 - 1, 0.0, math.exp(-1) + 1 - 1])
    assert (grpo.kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_aggregation_token_vs_sequence():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert grpo.aggregate(x, m, "token").item() == pytest.approx(16 / 4)
    assert grpo.aggregate(x, m, "sequence").item() == pytest.approx((2 + 10) / 2)


def test_policy_loss_value_and_on_policy_gradient():
    torch.manual_seed(0)
    logp = torch.randn(4, 5).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    clip = dict(eps_low=0.2, eps_high=0.2)
    loss = grpo.policy_loss(logp, logp.detach(), adv, mask, **clip)
    assert loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item() / mask.sum().item())
    loss.backward()   # rho = 1: the gradient is -A / N_tokens on every scored token (REINFORCE)
    assert torch.allclose(logp.grad, -adv[:, None] * mask / mask.sum())
    assert grpo.ratio_clip_frac(logp, logp.detach(), adv, mask, **clip) == 0.0
    ref = logp.detach() - 0.3           # the KL term, on its own: k3 of a constant gap 0.3
    k3 = math.exp(-0.3) + 0.3 - 1
    assert grpo.kl_penalty(logp, ref, mask).item() == pytest.approx(k3, rel=1e-5)
    # rho = e on every token: the ratio clip binds wherever A > 0 (rows 0 and 2: 4 of 11 tokens)
    assert grpo.ratio_clip_frac(logp.detach(), logp.detach() - 1.0, adv, mask, **clip) == \
        pytest.approx(4 / 11)


def test_rollouts_masks_truncation_and_rewards(model, tok):
    torch.manual_seed(0)
    rows = [{"prompt": "Describe the cat.", "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{}]}]
    ro = rollouts.generate(model, tok, rows, 6, temperature=1.0, max_new_tokens=5)
    assert ro.completion_ids.shape[0] == 6 and ro.completion_ids.shape[1] <= 5
    eos = tok.eos_token_id
    for ids, m, trunc, text in zip(ro.completion_ids, ro.completion_mask, ro.truncated, ro.texts):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()                   # a prefix
        assert bool(trunc) == (eos not in ids[:n].tolist())
        if not trunc:
            assert ids[n - 1] == eos
        assert text == tok.decode(ids[:n], skip_special_tokens=True)
    assert ro.rows == rows * 6                                   # each rollout carries its row
    r, _ = grpo.rewards(tasks.reward_functions(ifeval), ro.rows, ro.texts)
    assert r.shape == (6,) and all(x in (0.0, 1.0) for x in r.tolist())


def test_scored_logprobs_equal_the_sampling_distribution(model, tok):
    """Left padding + temperature: our log-probs of sampled tokens are generate's own."""
    torch.manual_seed(1)
    ids, mask = data.encode_prompts(tok, ["Describe the cat.", "Tell me about the old moon, now."])
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7,
                         top_k=0, top_p=1.0, max_new_tokens=6, output_scores=True,
                         return_dict_in_generate=True, eos_token_id=[10**6],
                         pad_token_id=tok.pad_token_id)
    comp = out.sequences[:, ids.shape[1]:]
    expected = torch.log_softmax(torch.stack(out.scores, 1).float(), -1).gather(-1, comp[..., None])
    ro = rollouts.Rollouts([{}, {}], ids, mask, comp, torch.ones_like(comp),
                           torch.zeros(2, dtype=torch.bool), [], 1)
    ours = grpo.completion_logprobs(model, ro, 0.7)
    assert torch.allclose(ours, expected.squeeze(-1), atol=1e-5)


def test_generate_ignores_a_models_top_k_and_top_p(model, tok):
    model.generation_config.top_k, model.generation_config.top_p = 1, 0.01   # would be greedy
    torch.manual_seed(0)
    ro = rollouts.generate(model, tok, [{"prompt": "Describe the cat."}], 8, max_new_tokens=4)
    assert len({tuple(x.tolist()) for x in ro.completion_ids}) > 1        # really sampled


def test_rollouts_record_the_samplers_log_probs(model, tok):
    """In fp32 the sampler's log p of each drawn token equals the trainer's (up to kernels)."""
    torch.manual_seed(0)
    rows = [{"prompt": "Describe the cat."}, {"prompt": "Tell me about the old moon, now."}]
    ro = rollouts.generate(model, tok, rows, 3, temperature=0.7, max_new_tokens=6)
    assert ro.sampler_logp.shape == ro.completion_ids.shape
    with torch.no_grad():
        trainer = grpo.completion_logprobs(model, ro, 0.7)
    gap = grpo.sampler_gap(ro, trainer)
    assert gap["sampler_gap_max"] < 1e-4
    # the detector works: the wrong temperature is a large gap
    with torch.no_grad():
        assert grpo.sampler_gap(ro, grpo.completion_logprobs(model, ro, 1.0))["sampler_gap_max"] > 1e-2
    assert rollouts.generate(model, tok, rows, 1, greedy=True, max_new_tokens=3).sampler_logp is None


def test_partial_credit_and_the_papers_binary_reward():
    row = {"prompt": "Describe the cat.", "instruction_id_list": ["punctuation:no_comma",
                                                                  "startend:end_checker"],
           "kwargs": [{}, {"end_phrase": "That is all."}], "key": "k"}
    texts = ["The cat, calm.", "The cat is calm.", "The cat is calm. That is all.", ""]
    r, means = grpo.rewards(tasks.reward_functions(ifeval), [row] * 4, texts)
    assert r.tolist() == [0.0, 0.5, 1.0, 0.0] and means == {"fraction": 0.375}
    assert grpo.rewards(tasks.reward_functions(ifeval, ["all"]), [row] * 4, texts)[0].tolist() == \
        [0.0, 0.0, 1.0, 0.0]


def test_reward_functions_are_summed_with_their_weights_skipping_none():
    """TRL's convention: every field of the rows by name, one value per completion, None for "not
    mine"; the weighted sum skips None; a completion no function scores names its row's key."""
    rows = [{"prompt": f"p{i}", "response": "r", "n": i, "key": f"k{i}"} for i in range(3)]
    seen = {}

    def first(prompts, completions, n, response, key, **rest):
        seen.update(prompts=prompts, completions=completions, n=n, response=response, key=key, rest=rest)
        return [1.0, None, 0.5]

    def second(prompts, completions, **_):
        return [0.0, 2.0, None]

    r, means = grpo.rewards([("first", first, 1.0), ("second", second, 0.25)], rows, ["a", "b", "c"])
    assert r.tolist() == [1.0, 0.5, 0.5] and means == {"first": 0.75, "second": 1.0}
    assert seen == {"prompts": ["p0", "p1", "p2"], "completions": ["a", "b", "c"], "n": [0, 1, 2],
                    "response": ["r"] * 3, "key": ["k0", "k1", "k2"], "rest": {}}
    with pytest.raises(ValueError, match="row 'k2': no reward function scored its completion"):
        grpo.rewards([("first", lambda **k: [1.0, 1.0, None], 1.0)], rows, ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 values for 3 completions"):
        grpo.rewards([("short", lambda **k: [1.0, 1.0], 1.0)], rows, ["a", "b", "c"])
