"""UniAPL for TRL users: a `GRPOTrainer` that also imitates demonstrations and is anchored by a
fixed discriminator, in the same gradient step.

    from tools.trl_uniapl import UniAPLConfig, UniAPLTrainer, trl_dataset
    trainer = UniAPLTrainer(model="Qwen/Qwen3-0.6B", reward_funcs=[ifeval.fraction],
                            args=UniAPLConfig(output_dir="out", method="uniapl"),
                            train_dataset=trl_dataset(rows), demonstrations=rows,
                            discriminator=load_discriminator("polar"))
    trainer.train()

The reward functions are train.py's own: a task's (tasks.py: `ifeval.fraction`, `gsm8k.answer_reward`
and `gsm8k.step_reward`, or yours) go in unchanged as `reward_funcs`, with `reward_weights`.

Swap `GRPOTrainer` for `UniAPLTrainer` and `GRPOConfig` for `UniAPLConfig`: TRL still generates
(HF or its vLLM engine), scores, normalises advantages, and computes its clipped GRPO loss, with
all of its options and its DeepSpeed/FSDP support through accelerate. This subclass adds, per the
project's `uniapl.py`:

    L = alpha * L_SFT + (1 - alpha) * L_GRPO + lambda_adv * L_ADV

* L_GRPO is TRL's own loss, untouched (so `loss_type="dapo"` equals this project's `token`,
  `"grpo"` its `sequence`).
* L_ADV is TRL's *same* clipped surrogate with the adversarial coefficient c_i in place of the
  advantage (`uniapl.adversarial_coefficient`: the discriminator's score of each completion
  against the row's teacher `response`, normalised within its group, clipped), as a separate
  term -- folding c into the advantage would be exact only while the probability ratio is 1 --
  with no KL. Both policy terms share one forward pass.
* L_SFT is the token-mean NLL of demonstrations at temperature 1. Demonstrations cannot go through
  TRL's dataloader (it repeats each prompt G times), so each process draws its own shard of
  `demonstrations` with its own sampler, `sft_batch_size` rows per micro-step, and saves its
  position in every checkpoint (`uniapl_demos_rank{r}.json`), so that a resumed run continues the
  stream. TRL already divides its loss for gradient accumulation; the added terms are divided
  here.
* `adv_mode="reward"` is the reward-shaping ablation, which *is* plain TRL: the discriminator
  becomes a second reward function with weight lambda_adv (`reward_weights`), summed before
  TRL's group normalisation -- exactly this project's `--adv-mode reward`.

Presets (`method`): grpo (alpha 0, lambda 0: GRPOTrainer itself), a-grpo (alpha 0), uniapl. SFT
alone is not this class's job (TRL's SFTTrainer, or `train.py --method sft`).

It overrides TRL's private methods (`_generate_and_score_completions`, `_compute_loss`,
`_get_per_token_logps_and_entropies`, `_save_checkpoint`, `_load_optimizer_and_scheduler`), so it
is pinned to the TRL versions it was tested with (requirements-trl.txt) and stops with one line
outside them. Not the same as this project's KL: TRL puts `beta * KL` inside its GRPO loss, so
here it is weighed by (1 - alpha) beta, where train.py makes it a fourth term of weight beta; and
TRL's `use_bias_correction_kl=True` (its default) reweights the k3 KL by the ratio. `beta` is 0 by
default in both.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import data
import sft
import uniapl
from settings import Settings

TESTED = ((1, 15), (1, 17))   # trl >= 1.15, < 1.17


def _check_trl():
    try:
        import trl
    except ImportError:
        raise SystemExit("tools/trl_uniapl.py needs TRL: pip install -r requirements-trl.txt") from None
    version = tuple(int(x) for x in trl.__version__.split(".")[:2])
    if not TESTED[0] <= version < TESTED[1]:
        raise SystemExit(f"tools/trl_uniapl.py overrides private methods of TRL and is tested with "
                         f"trl>={'.'.join(map(str, TESTED[0]))},<{'.'.join(map(str, TESTED[1]))}; "
                         f"found {trl.__version__}: pip install -r requirements-trl.txt")
    return trl


trl = _check_trl()


@dataclass
class UniAPLConfig(trl.GRPOConfig):
    """GRPOConfig plus the unified objective's weights; every default is settings.py's."""
    method: str = Settings.method                         # grpo | a-grpo | uniapl
    alpha: float | None = Settings.alpha                  # weight of L_SFT (preset: uniapl 0.5)
    lambda_adv: float | None = Settings.lambda_adv        # weight of the adversarial term (preset 0.1)
    adv_mode: str = Settings.adv_mode                     # "loss" | "reward"
    adv_coef_clip: float = Settings.adv_coef_clip
    adv_coef_norm: str = Settings.adv_coef_norm
    sft_batch_size: int = Settings.sft_batch_size         # demonstrations per micro-step, per process


def trl_dataset(rows: list[dict]):
    """Normalised rows (data.py) as a TRL dataset: a conversational prompt, the teacher's
    response (the discriminator's reference) and every field of the task as a column, which TRL
    passes to the reward functions by name (IFEval's kwargs, dicts of varying keys, as JSON)."""
    import datasets
    return datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}], "response": r["response"] or "",
         **{k: json.dumps(v) if k == "kwargs" else v for k, v in r.items()
            if k not in ("prompt", "response", "key")}}
        for r in rows])


def discriminator_reward(discriminator):
    """The discriminator as a TRL reward function, for adv_mode="reward"."""
    def discriminator_score(prompts, completions, response, **_):
        return discriminator.score([_text(p) for p in prompts], list(response),
                                   [_text(c) for c in completions]).tolist()
    return discriminator_score


def _text(x) -> str:
    """A plain string from TRL's str-or-messages prompts and completions."""
    return x if isinstance(x, str) else "\n".join(m["content"] for m in x)


class UniAPLTrainer(trl.GRPOTrainer):
    def __init__(self, model, reward_funcs=None, args: UniAPLConfig | None = None,
                 train_dataset=None, demonstrations: list[dict] | None = None,
                 discriminator=None, **kwargs):
        if args.method not in ("grpo", "a-grpo", "uniapl"):
            raise ValueError(f"UniAPLTrainer runs grpo, a-grpo and uniapl, not {args.method!r}")
        self.objective = uniapl.objective(args)
        if self.objective.uses_discriminator and discriminator is None:
            raise ValueError(f"method {args.method!r} needs a discriminator (discriminator.py)")
        reward_funcs = list(reward_funcs or [])
        if self.objective.shapes_reward:   # plain TRL: r + lambda_adv * d, then group normalisation
            args.reward_weights = list(args.reward_weights or [1.0] * len(reward_funcs)) + \
                [self.objective.lambda_adv]
            reward_funcs.append(discriminator_reward(discriminator))
        super().__init__(model, reward_funcs, args=args, train_dataset=train_dataset, **kwargs)
        self.discriminator = discriminator
        self._shared_logps = None
        self.demos = None
        if self.objective.uses_sft:
            rows = [r for r in (demonstrations or []) if r.get("response")]
            mine = rows[self.accelerator.process_index::self.accelerator.num_processes]
            if not mine:
                raise ValueError(f"method {args.method!r} needs demonstrations (rows with a 'response')")
            self.demos = data.MixedSampler(mine, [], args.sft_batch_size, 0, args.seed)

    # --- the adversarial coefficient, computed once per generation batch -------------------

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.objective.uses_adv_loss:
            lengths = out["completion_mask"].sum(1).tolist()
            texts = self.processing_class.batch_decode(
                [ids[:n] for ids, n in zip(out["completion_ids"].tolist(), lengths)],
                skip_special_tokens=True)
            d = self.discriminator.score([_text(x["prompt"]) for x in inputs],
                                         [x["response"] for x in inputs], texts).float()
            device = self.accelerator.device
            d_all = self.accelerator.gather(d.to(device))                     # groups may span ranks
            c_all = uniapl.adversarial_coefficient(d_all, self.num_generations,
                                                   self.objective.adv_coef_clip, self.objective.adv_coef_norm)
            rank = self.accelerator.process_index
            out["adversarial_coefficient"] = c_all[rank * len(inputs):(rank + 1) * len(inputs)]
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["adv/d_mean"].append(float(d_all.mean()))
            self._metrics[mode]["adv/coef_std"].append(float(c_all.std()))
        return out

    # --- one forward for both policy terms ------------------------------------------------

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if self._shared_logps is None:
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if not self._shared_logps:                    # first call in this loss: compute, keep
            self._shared_logps.append(super()._get_per_token_logps_and_entropies(*args, **kwargs))
        return self._shared_logps[0]

    @contextlib.contextmanager
    def _one_forward(self):
        self._shared_logps = []
        try:
            yield
        finally:
            self._shared_logps = None

    # --- the unified loss --------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        a, lam = self.objective.alpha, self.objective.lambda_adv
        with self._one_forward():
            l_grpo = super()._compute_loss(model, inputs)          # TRL's GRPO term, GA-scaled
            l_adv = self._adv_term(model, inputs, mode) if self.objective.uses_adv_loss else 0.0
        l_sft = self._sft_term(model) if a > 0 and mode == "train" else 0.0
        return a * l_sft + (1 - a) * l_grpo + lam * l_adv

    def _adv_term(self, model, inputs, mode: str):
        """TRL's clipped surrogate with c in place of A, no KL, its metrics kept apart."""
        saved = self.beta, self._metrics, getattr(self, "_entropy_bonus_enabled", False)
        self.beta, self._metrics = 0.0, {"train": defaultdict(list), "eval": defaultdict(list)}
        if hasattr(self, "_entropy_bonus_enabled"):
            self._entropy_bonus_enabled = False
        try:
            l_adv = super()._compute_loss(model, {**inputs, "advantages": inputs["adversarial_coefficient"]})
            ratio_clip_frac = self._metrics[mode].get("clip_ratio/region_mean", [])
        finally:
            self.beta, self._metrics = saved[0], saved[1]
            if hasattr(self, "_entropy_bonus_enabled"):
                self._entropy_bonus_enabled = saved[2]
        self._metrics[mode]["adv/loss"].append(float(l_adv.detach()))
        if ratio_clip_frac:
            self._metrics[mode]["adv/ratio_clip_frac"].append(ratio_clip_frac[-1])
        return l_adv

    def _sft_term(self, model):
        """Token-mean NLL of this process's next demonstrations, at temperature 1."""
        rows = self.demos.next().demos
        batch = data.demo_batch(self.processing_class, rows, self.max_completion_length)
        l_sft = sft.sft_loss(model, batch)
        self._metrics["train"]["sft/nll"].append(float(l_sft.detach()))
        return l_sft / self.current_gradient_accumulation_steps

    # --- the demonstration stream in checkpoints ---------------------------------------------

    def _demo_state_path(self, checkpoint_dir: str) -> str:
        return os.path.join(checkpoint_dir, f"uniapl_demos_rank{self.accelerator.process_index}.json")

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.demos is not None:
            folder = os.path.join(self._get_output_dir(trial=trial),
                                  f"checkpoint-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            with open(self._demo_state_path(folder), "w") as f:
                json.dump(self.demos.state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.demos is not None and checkpoint is not None:
            path = self._demo_state_path(checkpoint)
            if os.path.exists(path):
                with open(path) as f:
                    self.demos.load_state_dict(json.load(f))

