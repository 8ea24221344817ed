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
    for bad in (["--steps", "0"], ["--save-total-limit", "0"], ["--resume", "auto"],
                ["--eval-limit", "0"]):     # an empty evaluation: before, a traceback from rollouts
        with pytest.raises(SystemExit):
            settings.parse(bad)


def test_the_step_runs_without_a_command_line(tok, toy_rows):
    """What a reader copying the step needs: a policy, a batch, the settings, and the Run (the
    tokenizer, the objective, an optimizer, a discriminator)."""
    policy = toy.build_model(tok, seed=0)
    s = settings.Settings.for_world("toy", num_generations=2, max_completion_length=8)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    from discriminator import Lexical
    run = train.Run(tok, uniapl.objective(s), optimizer, scheduler, discriminator=Lexical())
    rows = toy_rows[0]
    batch = data.MixedBatch(demos=rows[:2], prompts=rows[2:4])
    before = [p.detach().clone() for p in policy.parameters()]
    m, samples = train.unified_step(policy, batch, s, run)
    assert {"loss", "sft/nll", "grpo/loss", "adv/loss", "reward", "time/generate"} <= set(m)
    assert len(samples) == 4 and {"prompt", "completion", "reward", "discriminator"} == set(samples[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_every_default_is_written_once():
    """The objective has no defaults of its own, and the TRL config takes each shared one from
    Settings: the coefficient clip (2.0) once lived in five places."""
    import dataclasses

    from tools import trl_uniapl
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(uniapl.Objective)
               if f.name in ("alpha", "lambda_adv", "adv_mode", "adv_coef_clip", "adv_coef_norm"))
    ours = {f.name: f.default for f in dataclasses.fields(settings.Settings)}
    trl_own = {f.name for f in dataclasses.fields(trl_uniapl.trl.GRPOConfig)}
    added = [f for f in dataclasses.fields(trl_uniapl.UniAPLConfig) if f.name not in trl_own]
    assert {f.name for f in added} == {"method", "alpha", "lambda_adv", "adv_mode", "adv_coef_clip",
                                       "adv_coef_norm", "sft_batch_size"}
    assert all(f.default == ours[f.name] for f in added)


@pytest.mark.parametrize("method,flag,value,why", [
    ("sft", "--beta", "0.05", "no rollouts, so there is no KL"),
    ("grpo", "--adv-coef-clip", "3.0", "no adversarial term"),
    ("chord-phi", "--adv-coef-norm", "batch", "no adversarial term"),
    ("uniapl", "--chord-mu-peak", "0.5", "only chord-mu and a-chord-mu"),
])
def test_an_option_the_preset_ignores_is_refused_with_one_line(method, flag, value, why):
    with pytest.raises(SystemExit, match=f"^{flag} {value} has no effect with --method {method}: .*{why}"):
        settings.parse(["--method", method, flag, value, "--out", "x"])


def test_options_that_do_act_are_accepted():
    for method, flag, value in (("a-sft", "--beta", "0.05"), ("grpo", "--beta", "0.05"),
                                ("a-grpo", "--adv-coef-clip", "3"), ("a-chord-mu", "--chord-mu-peak", "0.5")):
        assert settings.parse(["--method", method, flag, value, "--out", "x"]).method == method
    assert settings.ADVERSARIAL == {m for m, p in uniapl.PRESETS.items() if p[1]}
