"""tools/trl_uniapl.py: the TRL subclass computes this project's unified objective, trains, resumes."""

import copy
import json
import os

import pytest
import torch

import data
import grpo
import ifeval
import rollouts
import settings
import sft
import toy
import uniapl
from discriminator import Lexical
from tools import trl_uniapl  # TRL is in requirements.txt: an import error must fail, not skip

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def world(tmp_path, tok):
    model = toy.build_model(tok, seed=0)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows, _ = toy.train_eval_rows(0, n_train=40, n_eval=1)
    return tmp_path, rows


def trainer_for(world, tok, method="uniapl", **overrides):
    path, rows = world
    settings = dict(output_dir=str(path / "out"), use_cpu=True, bf16=False, report_to="none",
                    per_device_train_batch_size=4, num_generations=2, max_completion_length=12,
                    max_steps=3, logging_steps=1, save_strategy="no", learning_rate=1e-3, seed=0,
                    sft_batch_size=2, method=method)
    args = trl_uniapl.UniAPLConfig(**(settings | overrides))
    return trl_uniapl.UniAPLTrainer(model=str(path / "model"), reward_funcs=[ifeval.fraction],
                                    args=args, train_dataset=trl_uniapl.trl_dataset(rows),
                                    demonstrations=rows, discriminator=Lexical(),
                                    processing_class=tok)


@pytest.mark.parametrize("method,off_policy", [("uniapl", False), ("a-grpo", False), ("grpo", False),
                                               ("uniapl", True)])
def test_loss_and_gradient_equal_the_projects_objective(world, tok, method, off_policy):
    """Same rollouts, advantages, coefficients and demonstrations: TRL's subclass and this
    project's terms (grpo.py, uniapl.py, sft.py) give the same loss and gradient. off_policy:
    old log-probs 0.4 away from the current ones, so that the ratio is e^(+-0.4) and the clip
    binds on both sides (on-policy the ratio is 1 and the clip never acts)."""
    trainer = trainer_for(world, tok, method)
    model = trainer.model
    path, rows = world
    from transformers import AutoModelForCausalLM
    ours = AutoModelForCausalLM.from_pretrained(path / "model")   # the same weights, its own grads
    torch.manual_seed(0)
    ro = rollouts.generate(ours, tok, rows[:2], 2, max_new_tokens=8)      # prompts of two lengths
    A = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.25, 0.75]), 2)
    c = uniapl.adversarial_coefficient(torch.tensor([0.1, 0.4, 0.3, 0.2]), 2, 2.0, "group")
    inputs = {"prompt_ids": ro.prompt_ids, "prompt_mask": ro.prompt_mask,
              "completion_ids": ro.completion_ids, "completion_mask": ro.completion_mask,
              "advantages": A, "num_items_in_batch": ro.completion_mask.sum(),
              "adversarial_coefficient": c}
    with torch.no_grad():
        shift = 0.4 * (torch.arange(ro.completion_ids.numel()).reshape(ro.completion_ids.shape) % 2 * 2 - 1)
        old = grpo.completion_logprobs(ours, ro, 1.0) + (shift if off_policy else 0)   # [R, L]
    if off_policy:
        inputs["old_per_token_logps"] = old
    demo_rows = copy.deepcopy(trainer.demos).next().demos if trainer.demos else []
    trainer.current_gradient_accumulation_steps = 1
    model.train()
    loss_trl = trainer._compute_loss(model, inputs)
    loss_trl.backward()

    objective = uniapl.objective(settings.Settings.for_world("toy", method=method))
    logp = grpo.completion_logprobs(ours, ro, 1.0)
    clip = dict(eps_low=0.2, eps_high=0.2)
    old = old if off_policy else logp.detach()
    l_grpo = grpo.policy_loss(logp, old, A, ro.completion_mask, **clip)   # token = TRL's dapo
    l_adv = uniapl.adv_loss(logp, old, c, ro.completion_mask, **clip) if objective.uses_adv_loss else 0.0
    if off_policy:     # the clip really binds here
        assert grpo.ratio_clip_frac(logp.detach(), old, A, ro.completion_mask, **clip) > 0.2
    l_sft = sft.sft_loss(ours, data.demo_batch(tok, demo_rows, 12)) if objective.uses_sft else 0.0
    a, lam = objective.alpha, objective.lambda_adv
    loss = a * l_sft + (1 - a) * l_grpo + lam * l_adv
    loss.backward()
    assert loss_trl.item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
    g_trl = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    g_ours = torch.cat([p.grad.reshape(-1) for p in ours.parameters()])
    assert (g_trl - g_ours).norm() / g_ours.norm() <= 1e-6


def test_train_logs_sft_and_discriminator_and_resumes_the_demonstration_stream(world, tok):
    path, _ = world
    trainer = trainer_for(world, tok, save_strategy="steps", save_steps=2)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all({"sft/nll", "adv/loss", "adv/d_mean", "reward"} <= set(h) for h in logs)
    end = trainer.demos.state_dict()
    assert end["sft"]["pos"] == 6                        # 3 steps x 2 demonstrations, one process
    ckpt = path / "out" / "checkpoint-2"
    assert json.load(open(ckpt / "uniapl_demos_rank0.json"))["sft"]["pos"] == 4
    again = trainer_for(world, tok)
    again.train(resume_from_checkpoint=str(ckpt))
    assert again.demos.state_dict() == end               # continued the stream, not restarted


def test_reward_shaping_is_plain_trl_with_two_reward_functions(world, tok):
    trainer = trainer_for(world, tok, adv_mode="reward", lambda_adv=0.3)
    assert trainer.reward_func_names == ["fraction", "discriminator_score"]
    assert trainer.reward_weights.tolist() == pytest.approx([1.0, 0.3])
    assert not trainer.objective.uses_adv_loss and trainer.objective.shapes_reward


def test_outside_the_tested_trl_versions_is_one_clear_error(monkeypatch):
    import trl
    monkeypatch.setattr(trl, "__version__", "0.20.0")
    with pytest.raises(SystemExit, match="tested with trl>=1.15,<1.17; found 0.20.0"):
        trl_uniapl._check_trl()


def test_a_tasks_reward_functions_serve_trl_unchanged(tmp_path):
    """GSM8K's answer and process rewards, as train.py sums them (grpo.rewards), are what TRL's
    GRPOTrainer computes from the same functions with reward_weights -- None (no calculation
    written) left out of its sum as ours leaves it out -- and a two-step run trains and logs them."""
    import gsm8k
    tok = gsm8k.toy_tokenizer()
    model = toy.build_model(tok, seed=0)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = gsm8k.toy_rows("", "train", 0, 24, 1, 0.65)
    functions = [("answer", gsm8k.answer_reward, 1.0), ("steps", gsm8k.step_reward, 0.5)]
    args = trl_uniapl.UniAPLConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False,
                                   report_to="none", per_device_train_batch_size=4, num_generations=2,
                                   max_completion_length=8, max_steps=2, logging_steps=1,
                                   save_strategy="no", seed=0, sft_batch_size=2, method="uniapl",
                                   reward_weights=[w for _, _, w in functions])
    trainer = trl_uniapl.UniAPLTrainer(model=str(tmp_path / "model"), reward_funcs=[f for _, f, _ in functions],
                                       args=args, train_dataset=trl_uniapl.trl_dataset(rows),
                                       demonstrations=rows, discriminator=Lexical(), processing_class=tok)
    texts = [rows[0]["response"], "no working\n#### 3", rows[1]["response"].replace("=", "=1", 1), "#### x"]
    inputs = [dict(trainer.train_dataset[i % 2]) for i in range(4)]
    per_func = trainer._calculate_rewards(inputs, [x["prompt"] for x in inputs],
                                          [[{"role": "assistant", "content": t}] for t in texts], [[1]] * 4)
    trl_total = (per_func * torch.tensor([1.0, 0.5])).nansum(1)
    ours, _ = grpo.rewards(functions, [rows[i % 2] for i in range(4)], texts)
    assert torch.isnan(per_func[1, 1]) and trl_total.tolist() == pytest.approx(ours.tolist())
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and all("rewards/answer_reward/mean" in h for h in logged)
