"""uniapl.py: Algorithm 1's coefficient, method presets, CHORD, and the exact unified objective."""

import math

import pytest
import torch

import settings
import uniapl


def objective(method, **overrides):
    return uniapl.objective(settings.Settings.for_world("toy", method=method, **overrides))


def test_adversarial_coefficient_hand_made_group():
    d = torch.tensor([0.0, 0.0, 0.0, 10.0, 3.0, 3.0, 3.0, 3.0])
    c = uniapl.adversarial_coefficient(d, 4, clip=10.0, norm="group")
    # group 1: mean 2.5, unbiased std 5 -> (-2.5/5, ..., 7.5/5); group 2: no spread -> 0
    assert c[:4].tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-4)
    assert c[4:].tolist() == [0.0] * 4
    assert uniapl.adversarial_coefficient(d, 4, clip=1.0, norm="group")[3].item() == pytest.approx(1.0)


def test_method_presets_and_overrides():
    assert objective("sft") == uniapl.Objective("sft", 1.0, 0.0, "none", "loss", 2.0, "group", "", ())
    assert objective("grpo").alpha == 0 and not objective("grpo").uses_discriminator
    assert objective("a-sft").rollouts_on == "demo"
    assert objective("a-grpo", lambda_adv=0.01).lambda_adv == 0.01
    assert objective("uniapl", alpha=0.3).alpha == 0.3
    mix = objective("uniapl", lambda_adv=0.0)        # the fixed-alpha mix: no adversarial term
    assert mix.uses_sft and mix.uses_grpo and not mix.uses_discriminator and not mix.uses_adv_loss
    for bad in [dict(method="grpo", alpha=0.5), dict(method="uniapl", alpha=1.0),
                dict(method="sft", lambda_adv=0.1), dict(method="a-grpo", lambda_adv=0.0),
                dict(method="uniapl", lambda_adv=-0.1), dict(method="uniapl", lambda_adv=0.0, adv_mode="reward"),
                dict(method="grpo", adv_mode="reward"), dict(method="nope")]:
        with pytest.raises(ValueError):
            objective(**bad)


def test_the_method_list_of_the_command_line_is_the_presets():
    assert settings.METHODS == list(uniapl.PRESETS)


def test_adv_loss_by_hand():
    """L_ADV = -(token mean of min(rho c, clip(rho, 0.8, 1.2) c)), no KL, worked out by hand."""
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]]))
    coef = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    # row 0 (c = 2):  rho 1.5 -> min(3.0, 1.2 * 2) = 2.4;   rho 0.5 -> min(1.0, 0.8 * 2) = 1.0
    # row 1 (c = -1): rho 1.5 -> min(-1.5, -1.2) = -1.5;    the second token is masked out
    loss = uniapl.adv_loss(logp, old, coef, mask, eps_low=0.2, eps_high=0.2)
    assert loss.item() == pytest.approx(-(2.4 + 1.0 - 1.5) / 3)
    # per sequence: -((2.4 + 1.0) / 2 + (-1.5) / 1) / 2
    assert uniapl.adv_loss(logp, old, coef, mask, eps_low=0.2, eps_high=0.2,
                           loss_type="sequence").item() == pytest.approx(-(1.7 - 1.5) / 2)


def test_discriminator_stats_correlation():
    d, r = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    s = uniapl.discriminator_stats(d, r, uniapl.adversarial_coefficient(d, 4, clip=2.0, norm="group"))
    assert s["corr_d_r"] == pytest.approx(0.894427, abs=1e-5)
    assert "corr_d_r" not in uniapl.discriminator_stats(d, torch.ones(4), d)


def test_chord_mu_schedule_hand_values():
    """Warm-up from 0 to the peak, cosine to the valley, then the valley (CHORD's published code)."""
    mu = lambda step: uniapl.chord_mu(step, 0.9, 0.05, 10, 100)  # noqa: E731
    assert [mu(0), mu(5), mu(10)] == pytest.approx([0.0, 0.45, 0.9])
    assert mu(60) == pytest.approx(0.05 + 0.85 * 0.5)             # half way: cos(pi / 2) = 0
    assert mu(35) == pytest.approx(0.05 + 0.85 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert mu(110) == mu(500) == pytest.approx(0.05)
    assert uniapl.chord_mu(3, 0.1, 0.1, 0, 0) == 0.1               # CHORD-phi: constant


def test_chord_presets():
    mu = objective("chord-mu", chord_mu_decay_steps=100)
    assert mu.chord == "mu" and mu.uses_sft and mu.uses_grpo and not mu.uses_discriminator
    assert mu.alpha_at(0) == pytest.approx(0.9) and mu.alpha_at(100) == pytest.approx(0.05)
    assert objective("chord-mu", steps=40).mu_schedule == (0.9, 0.05, 0, 40)   # decay: the run
    phi = objective("chord-phi")
    assert phi.sft_weighting == "phi" and phi.alpha_at(0) == phi.alpha_at(99) == 0.1
    a = objective("a-chord-phi")
    assert a.uses_adv_loss and a.lambda_adv == 0.1 and a.sft_weighting == "phi"
    with pytest.raises(ValueError):
        objective("chord-mu", alpha=0.5)


def test_coefficient_normalisations():
    d = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.6, 0.8])   # group 1 collapsed to one answer
    group = uniapl.adversarial_coefficient(d, 4, clip=10.0, norm="group")
    batch = uniapl.adversarial_coefficient(d, 4, clip=10.0, norm="batch")
    assert group[:4].tolist() == [0.0] * 4                        # no signal inside the group ...
    mean, std = d.mean(), d.std()
    assert batch.tolist() == pytest.approx(((d - mean) / (std + 1e-4)).tolist(), abs=1e-5)
    assert batch[0] < 0                                           # ... but below the batch's mean
    assert uniapl.adversarial_coefficient(d * 30, 4, clip=2.0, norm="none").max() == 2.0


@pytest.mark.parametrize("method,extra", [("uniapl", {}), ("a-sft", {}), ("sft", {}),
                                          ("a-grpo", {"adv_mode": "reward"}), ("chord-phi", {}),
                                          ("uniapl", {"loss_type": "sequence"}), ("chord-mu", {})])
def test_the_step_at_a_glance_is_unified_step(tok, method, extra):
    """uniapl.step_at_a_glance (thirty lines) and train.unified_step (micro-batches, ranks, KL,
    metrics) give the same loss and the same update, on the same replayed rollouts."""
    import copy

    import data
    import toy
    import train
    from discriminator import Lexical
    from tests.worlds import Replay, replay_texts
    rows, _ = toy.train_eval_rows(0, n_train=40, n_eval=1)
    batch = data.MixedBatch(demos=rows[:4], prompts=rows[4:8])
    s = settings.Settings.for_world("toy", method=method, num_generations=4, max_completion_length=40,
                                    logprobs_backend="torch", precision="fp32", max_grad_norm=0.5,
                                    **extra)
    o, engine = uniapl.objective(s), Replay(replay_texts(rows))
    base = toy.build_model(tok, seed=0)
    updates, losses = [], []
    for which in ("glance", "unified"):
        model = copy.deepcopy(base)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        if which == "glance":
            losses.append(float(uniapl.step_at_a_glance(model, opt, tok, engine, Lexical(), batch, o, s,
                                                        step=7)))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
            run = train.Run(tok, o, opt, sched, engine, Lexical())
            losses.append(train.unified_step(model, batch, s, run, step=7)[0]["loss"])
        updates.append(torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before)]))
    assert updates[0].norm() > 1e-4
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-7)
    assert float((updates[0] - updates[1]).norm() / updates[1].norm()) < 1e-5


def test_the_loss_files_copy_out_and_compute_with_torch_alone(tmp_path):
    """logprobs.py, sft.py, grpo.py and uniapl.py copied into an empty folder import without the
    rest of the project (or transformers) and compute each loss."""
    import os
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("logprobs.py", "sft.py", "grpo.py", "uniapl.py"):
        shutil.copy(os.path.join(root, name), tmp_path / name)
    script = """
import sys, torch
import logprobs, sft, grpo, uniapl
torch.manual_seed(0)
R, L, V, H = 4, 5, 11, 8
logp = torch.randn(R, L).requires_grad_()
mask = torch.ones(R, L)
r = torch.tensor([1.0, 0.0, 0.5, 0.5])
A = grpo.group_advantages(r, 2)
c = uniapl.adversarial_coefficient(torch.randn(R), 2, 2.0, "group")
kw = dict(eps_low=0.2, eps_high=0.2)
old = logp.detach()
loss = 0.5 * grpo.policy_loss(logp, old, A, mask, **kw) + 0.1 * uniapl.adv_loss(logp, old, c, mask, **kw)
loss = loss + 0.05 * grpo.kl_penalty(logp, logp.detach() - 0.1, mask)
logits = torch.randn(2, 6, V, requires_grad=True)
labels = torch.randint(0, V, (2, 6))
l_sft = sft.sft_loss_from_logits(logits, labels, torch.tensor([[0, 0, 0, 1, 1, 1]] * 2))
h, w = torch.randn(3, H), torch.randn(V, H)
lp = logprobs.token_logprobs(h, w, torch.tensor([1, 2, 3]), backend="torch")
(loss + 0.5 * l_sft + lp.sum()).backward()
heavy = [m for m in ("transformers", "data", "rollouts", "ifeval", "settings", "toy") if m in sys.modules]
print("OK" if not heavy else f"imported {heavy}")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stdout + res.stderr[-2000:]


def test_sft_loss_from_logits_equals_the_chunked_path(model, tok, toy_rows):
    import data
    import sft
    batch = data.demo_batch(tok, toy_rows[0][:3], 24)
    chunked = sft.sft_loss(model, batch, backend="torch")
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert sft.sft_loss_from_logits(logits, batch.input_ids, batch.score_mask).item() == \
        pytest.approx(chunked.item(), rel=1e-5)


def test_readme_holds_the_preset_table():
    import os
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "README.md")).read()
    assert uniapl.preset_table() in readme
