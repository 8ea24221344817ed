"""settings.py: one source of settings; the world decides defaults; --help shows both worlds."""

import json

import pytest
import torch

import data
import settings
import toy
import train
import uniapl


def test_help_shows_each_worlds_value(capsys):
    with pytest.raises(SystemExit):
        settings.parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())    # argparse wraps lines
    assert "[toy: 0.001, real: 1e-06]" in out            # --learning-rate
    assert "[toy: 300, real: 500]" in out                # --steps
    assert "[toy: 64, real: 1280]" in out                # --eval-max-new-tokens
    assert "[default: 0.2]" in out                       # --epsilon: one value for both
    for section in ("model and method", "data:", "rollouts", "optimisation", "evaluation"):
        assert section in out


def test_the_model_decides_the_world(tmp_path):
    toy_s = settings.parse(["--out", str(tmp_path / "a")])
    assert toy_s.world == "toy" and toy_s.learning_rate == 1e-3 and toy_s.discriminator == "lexical"
    real = settings.parse(["--model", "Qwen/Qwen3-0.6B", "--out", str(tmp_path / "b")])
    assert real.world == "real" and real.learning_rate == 1e-6 and real.discriminator == "polar"
    assert real.gradient_checkpointing and real.eval_max_new_tokens == 1280
    marked = tmp_path / "toyrun"
    marked.mkdir()
    (marked / "uniapl.json").write_text(json.dumps({"world": "toy"}))
    assert settings.parse(["--model", str(marked), "--out", str(tmp_path / "c")]).world == "toy"
    # a flag beats the world's default; derived values are filled once
    s = settings.parse(["--model", "Qwen/Qwen3-0.6B", "--steps", "7", "--epsilon", "0.3",
                        "--no-gradient-checkpointing", "--out", str(tmp_path / "d")])
    assert s.steps == 7 and s.epsilon_high == 0.3 and not s.gradient_checkpointing


def test_for_world_equals_the_command_line(tmp_path):
    out = str(tmp_path / "x")
    parsed = settings.parse(["--model", "Qwen/Qwen3-0.6B", "--steps", "3", "--out", out])
    built = settings.Settings.for_world("real", model="Qwen/Qwen3-0.6B", steps=3, out=out)
    assert built == parsed
    with pytest.raises(TypeError, match="no field"):
        settings.Settings.for_world("toy", stpes=3)
    for bad in (["--steps", "0"], ["--save-total-limit", "0"], ["--resume", "auto"]):
        with pytest.raises(SystemExit):
            settings.parse(bad)


def test_the_step_runs_without_a_command_line(tok, toy_rows):
    """What a reader copying the step needs: a policy, a batch, an Objective, a StepSettings."""
    policy = toy.build_model(tok, seed=0)
    objective = uniapl.resolve("uniapl")
    step = train.StepSettings(num_generations=2, temperature=1.0, max_completion_length=8,
                              epsilon=0.2, epsilon_high=0.2, beta=0.0, loss_type="token",
                              scale_rewards="group", mask_truncated=False, num_iterations=1,
                              max_grad_norm=1.0, logprobs_backend="auto", precision="auto")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    rows = toy_rows[0]
    batch = data.MixedBatch(demos=rows[:2], prompts=rows[2:4])
    from discriminator import Lexical
    before = [p.detach().clone() for p in policy.parameters()]
    m = train.unified_step(policy, tok, batch, objective, step, optimizer, scheduler, Lexical())
    assert {"loss", "sft/nll", "grpo/loss", "adv/loss", "reward"} <= set(m)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    # StepSettings.from_settings picks exactly its fields from a Settings
    s = settings.Settings.for_world("real")
    assert train.StepSettings.from_settings(s).max_completion_length == 512
