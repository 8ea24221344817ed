"""UniAPL: Algorithm 1 (our reconstruction: the adversarial coefficient), L_ADV, the presets.

The idea
--------
UniAPL (arXiv 2509.25148; its v2 is titled "AAPA") treats SFT and RL as one preference-learning
problem and optimises, in every gradient step, one objective over a mixed batch -- the weighted
sum and its single backward pass are the paper's own (PAPER.md):

    L_unified = alpha * L_SFT + (1 - alpha) * L_GRPO + lambda_adv * L_ADV     (+ beta * KL, ours)

L_SFT imitates demonstrations (sft.py); L_GRPO rewards the policy's rollouts with verifiable
instruction checks (grpo.py); L_ADV anchors the rollouts to the expert's distribution through a
fixed discriminator (discriminator.py) that compares each rollout with the teacher's response.
This file holds what is new in UniAPL -- L_ADV and its coefficient -- the weights of each method,
and `step_at_a_glance`, the whole step in thirty lines; train.py's `unified_step` is the same
step with micro-batches, ranks, the optional KL term, metrics and checks.

Algorithm 1 is OUR RECONSTRUCTION
---------------------------------
The paper's Algorithm 1 is not public in any form we could read (PAPER.md). What is known: the
discriminator is fixed, gives a sentence-level signal, compares rollouts with offline teacher
responses, and works better as a separate loss than as reward shaping (an ablation). This file
builds the simplest thing consistent with all of it (the steps sit above the functions below):
a per-rollout coefficient that says whether this rollout is more (c_i > 0) or less (c_i < 0)
expert-like than its siblings, driving GRPO's clipped surrogate. Group normalisation (a z-score)
makes it scale-free (POLAR's scores are unbounded, lexical ones lie in [0, 1]); its downside: when
a group's scores differ only by noise, the z-score still turns them into unit-size coefficients
(std + 1e-4 in the denominator), so L_ADV pushes as hard on noise as on a real difference. The
clip at c = 2 (ours) bounds that push and keeps one odd score from dominating; it does not
remove it. `--adv-coef-norm batch` (one mean and std over every rollout of the step, every rank)
and `none` (the raw score) are the alternatives.

What the step computes at --num-iterations 1 (the default)
----------------------------------------------------------
With one update per batch pi_old = pi_theta at the update, so every ratio rho = 1 and the clip
never binds. The surrogate's gradient is then plain REINFORCE with a baseline, and the whole
policy-gradient part of the step is

    grad L = -(1/N) sum_{i,t} [ (1 - alpha) A_i + lambda_adv c_i ] grad log pi_theta(y_{i,t})

over the N rollout tokens (token aggregation): L_ADV is an extra per-rollout advantage lambda_adv
c_i. "Separate loss" and "reward shaping" (`--adv-mode reward`: r_i <- r_i + lambda_adv d_i
before GRPO's normalisation) then differ only in where d is normalised -- on its own, or mixed
into r before the group's z-score -- which is why the toy finds them equal (RESULTS.md). They part
when --num-iterations > 1 lets the clip bind on one term and not the other.

The weights
-----------
alpha = 0.5 for uniapl (ours) is a loss weight: the two terms are means over their own tokens, and
the volumes are `--sft-batch-size` and `--rl-batch-size`. The paper describes alpha as balancing
the *volume* of static and dynamic data; PAPER.md discusses what that reading would change.
lambda_adv = 0.1 (ours). The paper's suggested sweep is 1e-4 ... 1e-2, for its own L_ADV, whose
scale we do not know. Ours is normalised to unit scale like an advantage, so 0.1 gives L_ADV a
tenth of the weight of a GRPO term of weight 1 -- 1 : 5 against GRPO's (1 - alpha) = 0.5 in
`uniapl` -- and the number does not carry over to another form of L_ADV (tools/reproduce.py also
runs 1e-2 and 1).

Methods are presets of the same step: PRESETS below is the one table (README's is
`preset_table()`, and a test checks that they agree). CHORD (Zhang et al. 2025, arXiv 2508.11408)
is the closest published relative: the same single-stage mix L = (1 - mu) L_GRPO + mu L_SFT, with
mu decayed over the run (CHORD-mu) or small and fixed with each expert token's NLL weighted by
phi = p (1 - p) (CHORD-phi; sft.py). The reviews read the paper's single-stage experiment as CHORD
plus the adversarial term, which is what a-chord-* are. Preset values follow CHORD's published
configurations (peak 0.9, valley 0.05, no warm-up; phi with a fixed 0.1); the decay length is
ours (the run's length).

This file, sft.py, grpo.py and logprobs.py copy out together into any project and need torch
alone (a test copies them into an empty folder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import grpo
import sft

PRESETS = {  # method -> (alpha, adversarial signal?, whose prompts are rolled out, CHORD variant)
    "sft": (1.0, False, "none", ""),
    "grpo": (0.0, False, "rl", ""),
    "a-sft": (1.0, True, "demo", ""),          # rollouts of demonstration prompts, L_ADV only
    "a-grpo": (0.0, True, "rl", ""),
    "uniapl": (0.5, True, "rl", ""),
    "chord-mu": (0.9, False, "rl", "mu"),     # alpha: mu's peak; it decays over the run
    "chord-phi": (0.1, False, "rl", "phi"),   # alpha fixed, each SFT token weighted by p (1 - p)
    "a-chord-mu": (0.9, True, "rl", "mu"),
    "a-chord-phi": (0.1, True, "rl", "phi"),
}
PRESET_LAMBDA_ADV = 0.1   # every adversarial preset's lambda_adv (ours)


def preset_table() -> str:
    """PRESETS as README's markdown table (a test checks that README holds exactly this)."""
    rows = ["| method | α | λ_adv | rollouts on |", "|---|---|---|---|"]
    for method, (alpha, adversarial, rollouts_on, chord) in PRESETS.items():
        a = {"mu": f"μ(step): {alpha:g} → 0.05, cosine over the run",
             "phi": f"{alpha:g}, each SFT token weighted by p(1−p)"}.get(chord, f"{alpha:g}")
        on = {"none": "—", "rl": "RL prompts", "demo": "demonstration prompts (L_ADV only)"}[rollouts_on]
        name = f"`{method}`" + (" (default)" if method == "uniapl" else "")
        rows.append(f"| {name} | {a} | {PRESET_LAMBDA_ADV if adversarial else 0:g} | {on} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Objective:
    """What one step optimises: the weights of the three terms and how the signal is used
    (built from the run's settings by `objective`; each field's why: settings.py)."""
    method: str
    alpha: float              # weight of L_SFT; (1 - alpha) weighs L_GRPO
    lambda_adv: float         # weight of the adversarial signal (0: no discriminator at all)
    rollouts_on: str          # "none" | "rl" (RL prompts) | "demo" (demonstration prompts)
    adv_mode: str             # "loss": L_ADV is its own term; "reward": shaped into r
    adv_coef_clip: float      # c in Algorithm 1 (the coefficient's clip, not PPO's ratio clip)
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
    # uniapl at lambda_adv = 0 is the fixed-alpha mix of SFT and GRPO, without the adversarial
    # term: no discriminator is loaded (the ablation of the term's own share); the a- presets
    # are nothing without it
    if adversarial and (lam < 0 or (lam == 0 and s.method != "uniapl")):
        raise ValueError(f"--method {s.method} needs --lambda-adv > 0, got {lam}"
                         + ("" if s.method == "uniapl" else " (uniapl alone may take 0)"))
    if lam == 0 and s.adv_mode == "reward":
        raise ValueError("--adv-mode reward shapes the reward with lambda_adv d: it needs --lambda-adv > 0")
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


# Algorithm 1 (our reconstruction), for a prompt x with teacher response y_E, rollouts y_1..y_G:
#   1. d_i = D(x, y_E, y_i)                                  frozen discriminator, no gradient
#   2. c_i = clip((d_i - mean_j d_j) / (std_j d_j + eps), -c, c)     the adversarial coefficient
#      with j over the group (default). Ablations (--adv-coef-norm): j over every rollout of the
#      step, on every rank ("batch"), which still says something when a whole group collapses to
#      one answer; "none": c_i = clip(d_i, -c, c), the raw score (for a bounded score only).


def adversarial_coefficient(d: torch.Tensor, group_size: int, clip: float, norm: str,
                            eps: float = 1e-4, batch_mean_std: tuple | None = None) -> torch.Tensor:
    """Algorithm 1 (ours), step 2: normalised, clipped discriminator scores; [R] -> [R].
    `batch_mean_std`: for norm "batch" under several processes, the mean and (unbiased) std of
    every rank's scores (train.py reduces them); by default, those of `d`."""
    if norm == "group":
        c = grpo.group_advantages(d, group_size, scale=True, eps=eps)
    elif norm == "batch":
        mean, std = batch_mean_std if batch_mean_std is not None else (d.mean(), d.std())
        c = (d - mean) / (std + eps)
    else:
        c = d
    return c.clamp(-clip, clip)


#   3. L_ADV = aggregate(-min(rho_t c_i, clip(rho_t, 1 - eps_low, 1 + eps_high) c_i))
#      GRPO's clipped surrogate with c_i in place of A_i, aggregated the same way.


def adv_loss(logp, old_logp, adv_coef, mask, *, eps_low, eps_high, loss_type="token",
             total=None) -> torch.Tensor:
    """Algorithm 1 (ours), step 3: GRPO's clipped surrogate driven by the adversarial coefficient."""
    return grpo.policy_loss(logp, old_logp, adv_coef, mask, eps_low=eps_low, eps_high=eps_high,
                            loss_type=loss_type, total=total)


def discriminator_stats(d: torch.Tensor, r: torch.Tensor, adv_coef: torch.Tensor) -> dict:
    """Mean score, coefficient spread, and corr(d, r): high r with low d is reward hacking."""
    stats = {"d_mean": float(d.mean()),
             "coef_std": float(adv_coef.std()) if adv_coef.numel() > 1 else 0.0}
    if d.numel() > 1 and d.std() > 0 and r.std() > 0:
        stats["corr_d_r"] = float(torch.corrcoef(torch.stack([d, r]))[0, 1])
    return stats


# ----------------------------------------------------------------------------------------------
# The step at a glance: one process, one micro-batch, one update, no KL (train.py's unified_step
# is this step with micro-batches, several ranks, --num-iterations, the KL term, metrics and checks;
# a test checks that both give the same loss and the same gradients)
# ----------------------------------------------------------------------------------------------

def step_at_a_glance(policy, optimizer, tokenizer, engine, discriminator, batch, o: Objective, s,
                     step: int = 0):
    """One unified step on a mixed batch (`batch.demos`, `batch.prompts`) -> the loss.
    `o` = objective(s); `s` holds the rollout and surrogate settings (settings.Settings)."""
    import data  # (tokenising demonstrations, and the task's verifiers: the losses need torch alone)
    import tasks
    G, kw = s.num_generations, dict(eps_low=s.epsilon, eps_high=s.epsilon_high, loss_type=s.loss_type)
    a, lam, rows = o.alpha_at(step), o.lambda_adv, batch.prompts if o.rollouts_on == "rl" else batch.demos
    loss = 0.0
    if o.rollouts_on != "none":
        with torch.no_grad():                                   # y_i ~ pi_theta(. | x), G per x
            ro = engine.generate(policy, tokenizer, rows, G, temperature=s.temperature,
                                 max_new_tokens=s.max_completion_length)
        verifiers = tasks.reward_functions(tasks.load(s.task), s.reward, s.reward_weights)
        r = grpo.rewards(verifiers, ro.rows, ro.texts)[0]                       # [R] verifier
        d = discriminator.score([x["prompt"] for x in ro.rows], [x["response"] for x in ro.rows],
                                ro.texts).float() if o.uses_discriminator else None    # [R]
        if o.shapes_reward:                                     # the ablation: r + lambda_adv d
            r = r + lam * d
        advantages = grpo.group_advantages(r, G, scale=s.scale_rewards == "group")   # [R]
        logp = grpo.completion_logprobs(policy, ro, s.temperature)             # [R, L]
        old, mask = logp.detach(), ro.completion_mask.to(logp.device)   # pi_old = pi_theta: rho = 1
        if o.uses_grpo:
            loss = loss + (1 - a) * grpo.policy_loss(logp, old, advantages, mask, **kw)
        if o.uses_adv_loss:
            adv_coef = adversarial_coefficient(d, G, o.adv_coef_clip, o.adv_coef_norm)  # [R]
            loss = loss + lam * adv_loss(logp, old, adv_coef, mask, **kw)
    if a > 0:
        demos = data.demo_batch(tokenizer, batch.demos, s.max_completion_length)
        loss = loss + a * sft.sft_loss(policy, demos, weighting=o.sft_weighting)
    loss.backward()                                              # one backward for every term
    torch.nn.utils.clip_grad_norm_(policy.parameters(), s.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
