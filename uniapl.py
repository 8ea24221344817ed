"""UniAPL: Algorithm 1 (the adversarial coefficient), L_ADV, and the methods as presets.

The idea
--------
UniAPL (arXiv 2509.25148; its v2 is titled "AAPA") treats SFT and RL as one preference-learning
problem and optimises, in every gradient step, one objective over a mixed batch:

    L_unified = alpha * L_SFT + (1 - alpha) * L_GRPO + lambda_adv * L_ADV

L_SFT imitates demonstrations (sft.py); L_GRPO rewards the policy's rollouts with verifiable
instruction checks (grpo.py); L_ADV anchors the rollouts to the expert's distribution through a
fixed discriminator (discriminator.py) that compares each rollout with the teacher's response.
This file holds what is new in UniAPL -- L_ADV and its coefficient -- and the weights of each
method; train.py's `unified_step` computes the three terms and their sum, line by line.

Algorithm 1 is OUR RECONSTRUCTION
---------------------------------
The paper's Algorithm 1 is not public in any form we could read (PAPER.md). What is public: the
discriminator is fixed, gives a sentence-level signal, compares rollouts with offline teacher
responses, and works better as a separate loss than as reward shaping (an ablation). This file
builds the simplest thing consistent with all of it (the steps sit above the functions below):
a per-rollout "advantage" that says whether this rollout is more (c_i > 0) or less (c_i < 0)
expert-like than its siblings, driving GRPO's clipped surrogate. Group normalisation makes it
scale-free (POLAR's scores are unbounded, lexical ones lie in [0, 1]) and the clip at c = 2 (our
choice) keeps one odd score from dominating; lambda_adv then weighs it against a GRPO term of
unit scale.

Ablation (`adv_mode="reward"`): no separate loss; instead r_i <- r_i + lambda_adv * d_i before the
group normalisation of GRPO (reward shaping). The paper reports the separate loss as better.

Methods are presets of the same step:

    method       alpha                 lambda_adv  rollouts on
    sft          1                     0           none
    grpo         0                     0           RL prompts
    a-sft        1                     > 0         demonstration prompts (ADV only, no verifier reward)
    a-grpo       0                     > 0         RL prompts
    uniapl       0<a<1                 > 0         RL prompts
    chord-mu     mu(step): 0.9 -> 0.05 0           RL prompts
    chord-phi    0.1, phi-weighted SFT 0           RL prompts
    a-chord-mu   as chord-mu           > 0         RL prompts
    a-chord-phi  as chord-phi          > 0         RL prompts

CHORD (Zhang et al. 2025, arXiv 2508.11408) is the closest published relative: the same
single-stage mix L = (1 - mu) L_GRPO + mu L_SFT, with mu decayed over the run (CHORD-mu) or small
and fixed with each expert token's NLL weighted by phi = p (1 - p) (CHORD-phi; sft.py). The
reviews read the paper's single-stage experiment as CHORD plus the adversarial term, which is
what a-chord-* are. Preset values follow CHORD's published configurations (peak 0.9, valley 0.05,
no warm-up; phi with a fixed 0.1); the decay length is ours (the run's length).

Our defaults where the paper is silent: alpha = 0.5 for uniapl, lambda_adv = 0.1. A weight of
1e-4 ... 1e-2 would suit an unnormalised discriminator score; ours is normalised to unit scale like
an advantage, so 0.1 makes ADV a tenth of a GRPO-sized term (tools/reproduce.py also runs 1e-2
and 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import grpo

PRESETS = {  # method -> (alpha, adversarial signal?, whose prompts are rolled out, CHORD variant)
    "sft": (1.0, False, "none", ""),
    "grpo": (0.0, False, "rl", ""),
    "a-sft": (1.0, True, "demo", ""),
    "a-grpo": (0.0, True, "rl", ""),
    "uniapl": (0.5, True, "rl", ""),
    "chord-mu": (0.9, False, "rl", "mu"),     # alpha: mu's peak; it decays over the run
    "chord-phi": (0.1, False, "rl", "phi"),
    "a-chord-mu": (0.9, True, "rl", "mu"),
    "a-chord-phi": (0.1, True, "rl", "phi"),
}
PRESET_LAMBDA_ADV = 0.1   # every adversarial preset's lambda_adv (ours)


@dataclass(frozen=True)
class Objective:
    """What one step optimises: the weights of the three terms and how the signal is used
    (built from the run's settings by `objective`; each field's why: settings.py)."""
    method: str
    alpha: float              # weight of L_SFT; (1 - alpha) weighs L_GRPO
    lambda_adv: float         # weight of the adversarial signal (0: no discriminator at all)
    rollouts_on: str          # "none" | "rl" (RL prompts) | "demo" (demonstration prompts)
    adv_mode: str             # "loss": L_ADV is its own term; "reward": shaped into r
    adv_coef_clip: float      # c in Algorithm 1
    adv_coef_norm: str        # what a discriminator score is compared with (adversarial_coefficient)
    chord: str = ""           # "" | "mu": alpha follows chord_mu(step) | "phi": phi-weighted L_SFT
    mu_schedule: tuple = ()   # CHORD-mu: (peak, valley, warm-up steps, decay steps)

    def alpha_at(self, step: int) -> float:
        """The weight of L_SFT at this step: fixed, or CHORD-mu's schedule."""
        return chord_mu(step, *self.mu_schedule) if self.chord == "mu" else self.alpha

    @property
    def sft_weighting(self) -> str:
        return "phi" if self.chord == "phi" else "nll"

    @property
    def uses_sft(self) -> bool:
        return self.alpha > 0

    @property
    def uses_grpo(self) -> bool:
        return self.alpha < 1

    @property
    def uses_discriminator(self) -> bool:
        return self.lambda_adv > 0

    @property
    def uses_adv_loss(self) -> bool:
        return self.uses_discriminator and self.adv_mode == "loss"

    @property
    def shapes_reward(self) -> bool:
        return self.uses_discriminator and self.adv_mode == "reward"

    @property
    def needs_demos(self) -> bool:
        return self.uses_sft or self.uses_discriminator


def objective(s) -> Objective:
    """The method's preset with the settings' overrides, checked against it. `s` is a
    settings.Settings, or anything with its field names (the TRL subclass's config)."""
    if s.method not in PRESETS:
        raise ValueError(f"unknown method {s.method!r}; choose from {', '.join(PRESETS)}")
    default_alpha, adversarial, rollouts_on, chord = PRESETS[s.method]
    if s.alpha is not None and s.method != "uniapl" and s.alpha != default_alpha:
        raise ValueError(f"--alpha {s.alpha} contradicts --method {s.method} (alpha = {default_alpha}); "
                         "use --method uniapl to mix SFT and GRPO")
    alpha = default_alpha if s.alpha is None else s.alpha
    if s.method == "uniapl" and not 0 < alpha < 1:
        raise ValueError(f"--method uniapl needs 0 < alpha < 1, got {alpha}")
    if not adversarial and s.lambda_adv:
        raise ValueError(f"--lambda-adv {s.lambda_adv} contradicts --method {s.method}, which has no "
                         f"adversarial term; use a-{s.method} or uniapl")
    lam = (PRESET_LAMBDA_ADV if s.lambda_adv is None else s.lambda_adv) if adversarial else 0.0
    if adversarial and lam <= 0:
        raise ValueError(f"--method {s.method} needs --lambda-adv > 0, got {lam}")
    if s.adv_mode not in ("loss", "reward"):
        raise ValueError(f"unknown --adv-mode {s.adv_mode!r} (loss or reward)")
    if s.adv_mode == "reward" and not (adversarial and rollouts_on == "rl"):
        raise ValueError("--adv-mode reward shapes the GRPO reward: use it with a-grpo or uniapl")
    if s.adv_coef_norm not in ("group", "batch", "none"):
        raise ValueError(f"unknown --adv-coef-norm {s.adv_coef_norm!r} (group, batch or none)")
    schedule = ()
    if chord == "mu":   # the decay spans the run unless set
        decay = s.chord_mu_decay_steps if s.chord_mu_decay_steps is not None else s.steps
        schedule = (s.chord_mu_peak, s.chord_mu_valley, s.chord_mu_warmup_steps, decay)
        alpha = s.chord_mu_peak
    return Objective(s.method, alpha, lam, rollouts_on, s.adv_mode, s.adv_coef_clip,
                     s.adv_coef_norm, chord, schedule)


# CHORD-mu's weight of L_SFT at step s (warm-up W, decay D; arXiv 2508.11408, as published code):
#   s < W:          mu = peak * s / W
#   W <= s < W + D: mu = valley + (peak - valley) * (1 + cos(pi (s - W) / D)) / 2
#   otherwise:      mu = valley


def chord_mu(step: int, peak: float, valley: float, warmup: int, decay: int) -> float:
    if step < warmup:
        return peak * step / warmup
    if step < warmup + decay:
        return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / decay))
    return valley


# Algorithm 1, for a prompt x with teacher response y_E and rollouts y_1..y_G:
#   1. d_i = D(x, y_E, y_i)                                  frozen discriminator, no gradient
#   2. c_i = clip((d_i - mean_j d_j) / (std_j d_j + eps), -c, c)     the adversarial coefficient
#      with j over the group (default). Ablations (--adv-coef-norm): j over every rollout of the
#      step ("batch"), which still says something when a whole group collapses to one answer;
#      "none": c_i = clip(d_i, -c, c), the raw score (meaningful only for a bounded score).


def adversarial_coefficient(d: torch.Tensor, group_size: int, clip: float, norm: str,
                            eps: float = 1e-4) -> torch.Tensor:
    """Algorithm 1, step 2: normalised, clipped discriminator scores; [R] -> [R]."""
    if norm == "group":
        c = grpo.group_advantages(d, group_size, scale=True, eps=eps)
    elif norm == "batch":
        c = grpo.group_advantages(d, d.numel(), scale=True, eps=eps)
    else:
        c = d
    return c.clamp(-clip, clip)


#   3. L_ADV = aggregate(-min(rho_t c_i, clip(rho_t, 1 - eps_low, 1 + eps_high) c_i))
#      GRPO's clipped surrogate with c_i in place of A_i, aggregated the same way, no KL term.


def adv_loss(logp, old_logp, coef, mask, *, eps_low, eps_high, loss_type="token",
             total=None) -> torch.Tensor:
    """Algorithm 1, step 3: GRPO's clipped surrogate driven by the adversarial coefficient."""
    return grpo.policy_loss(logp, old_logp, coef, mask, eps_low=eps_low, eps_high=eps_high,
                            beta=0.0, loss_type=loss_type, total=total)


def discriminator_stats(d: torch.Tensor, r: torch.Tensor, coef: torch.Tensor) -> dict:
    """Mean score, coefficient spread, and corr(d, r): high r with low d is reward hacking."""
    stats = {"d_mean": float(d.mean()), "coef_std": float(coef.std()) if coef.numel() > 1 else 0.0}
    if d.numel() > 1 and d.std() > 0 and r.std() > 0:
        stats["corr_d_r"] = float(torch.corrcoef(torch.stack([d, r]))[0, 1])
    return stats
