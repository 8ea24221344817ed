"""uniapl.py: Algorithm 1's coefficient, method presets, CHORD, and the exact unified objective."""

import math

import pytest
import torch

import grpo
import uniapl


def test_adversarial_coefficient_hand_made_group():
    d = torch.tensor([0.0, 0.0, 0.0, 10.0, 3.0, 3.0, 3.0, 3.0])
    c = uniapl.adversarial_coefficient(d, 4, clip=10.0)
    # group 1: mean 2.5, unbiased std 5 -> (-2.5/5, ..., 7.5/5); group 2: no spread -> 0
    assert c[:4].tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-4)
    assert c[4:].tolist() == [0.0] * 4
    assert uniapl.adversarial_coefficient(d, 4, clip=1.0)[3].item() == pytest.approx(1.0)


def test_method_presets_and_overrides():
    assert uniapl.resolve("sft") == uniapl.Objective("sft", 1.0, 0.0, "none", "loss", 2.0, "group",
                                                     "", (0.9, 0.05, 0, 0))
    assert uniapl.resolve("grpo").alpha == 0 and not uniapl.resolve("grpo").uses_discriminator
    assert uniapl.resolve("a-sft").rollouts_on == "demo"
    assert uniapl.resolve("a-grpo", lambda_adv=0.01).lambda_adv == 0.01
    assert uniapl.resolve("uniapl", alpha=0.3).alpha == 0.3
    for bad in [dict(method="grpo", alpha=0.5), dict(method="uniapl", alpha=1.0),
                dict(method="sft", lambda_adv=0.1), dict(method="a-grpo", lambda_adv=0.0),
                dict(method="grpo", adv_mode="reward"), dict(method="nope")]:
        with pytest.raises(ValueError):
            uniapl.resolve(**bad)


def test_unified_loss_reduces_exactly_to_each_term():
    l_sft, l_grpo, l_adv = torch.tensor(1.25), torch.tensor(-0.5), torch.tensor(0.75)
    assert uniapl.unified_loss(uniapl.resolve("sft"), l_sft, None, None) is l_sft
    assert uniapl.unified_loss(uniapl.resolve("grpo"), None, l_grpo, None) is l_grpo
    # a NaN in a term whose weight is 0 cannot leak into the objective
    assert uniapl.unified_loss(uniapl.resolve("sft"), l_sft, torch.tensor(float("nan")), None) is l_sft
    obj = uniapl.resolve("uniapl", alpha=0.25, lambda_adv=0.1)
    total = uniapl.unified_loss(obj, l_sft, l_grpo, l_adv)
    assert total.item() == pytest.approx(0.25 * 1.25 + 0.75 * -0.5 + 0.1 * 0.75)


def test_adv_loss_is_the_grpo_surrogate_with_the_coefficient():
    torch.manual_seed(0)
    logp, old = torch.randn(4, 3), torch.randn(4, 3)
    coef, mask = torch.tensor([1.0, -0.5, 2.0, 0.0]), torch.ones(4, 3)
    a, _ = uniapl.adv_loss(logp, old, coef, mask, eps_low=0.2, eps_high=0.28)
    b, _ = grpo.policy_loss(logp, old, coef, mask, eps_low=0.2, eps_high=0.28)
    assert a.item() == b.item()


def test_discriminator_stats_correlation():
    d, r = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    s = uniapl.discriminator_stats(d, r, uniapl.adversarial_coefficient(d, 4, clip=2.0))
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
    mu = uniapl.resolve("chord-mu", mu_schedule=(0.9, 0.05, 0, 100))
    assert mu.chord == "mu" and mu.uses_sft and mu.uses_grpo and not mu.uses_discriminator
    assert mu.alpha_at(0) == pytest.approx(0.9) and mu.alpha_at(100) == pytest.approx(0.05)
    phi = uniapl.resolve("chord-phi")
    assert phi.sft_weighting == "phi" and phi.alpha_at(0) == phi.alpha_at(99) == 0.1
    a = uniapl.resolve("a-chord-phi")
    assert a.uses_adv_loss and a.lambda_adv == 0.1 and a.sft_weighting == "phi"
    # L = (1 - mu) L_GRPO + mu L_SFT at this step's mu
    l_sft, l_grpo = torch.tensor(2.0), torch.tensor(-1.0)
    assert uniapl.unified_loss(mu, l_sft, l_grpo, None, mu.alpha_at(50)).item() == pytest.approx(
        mu.alpha_at(50) * 2.0 - (1 - mu.alpha_at(50)))
    with pytest.raises(ValueError):
        uniapl.resolve("chord-mu", alpha=0.5)


def test_coefficient_normalisations():
    d = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.6, 0.8])   # group 1 collapsed to one answer
    group = uniapl.adversarial_coefficient(d, 4, clip=10.0)
    batch = uniapl.adversarial_coefficient(d, 4, clip=10.0, norm="batch")
    assert group[:4].tolist() == [0.0] * 4                        # no signal inside the group ...
    mean, std = d.mean(), d.std()
    assert batch.tolist() == pytest.approx(((d - mean) / (std + 1e-4)).tolist(), abs=1e-5)
    assert batch[0] < 0                                           # ... but below the batch's mean
    assert uniapl.adversarial_coefficient(d * 30, 4, clip=2.0, norm="none").max() == 2.0
