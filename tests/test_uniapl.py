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
    for bad in [dict(method="grpo", alpha=0.5), dict(method="uniapl", alpha=1.0),
                dict(method="sft", lambda_adv=0.1), dict(method="a-grpo", lambda_adv=0.0),
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
