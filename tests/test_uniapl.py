"""uniapl.py: Algorithm 1's coefficient, method presets, and the exact unified objective."""

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
    assert uniapl.resolve("sft") == uniapl.Objective("sft", 1.0, 0.0, "none", "loss", 2.0)
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
