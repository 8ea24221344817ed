"""Every setting of a run, in one place: its toy value, its real value, and why.

    python train.py --help          # the same list, grouped, with the values of both worlds

Two worlds share every line of code: `--model toy` (the default) trains
the embedded toy world on a CPU in minutes; any other `--model` (a hub id such as Qwen/Qwen3-0.6B,
or a local directory) is the real run. The world decides the defaults below; a directory saved
by a toy run carries a marker (`uniapl.json`) so that training it further stays in the toy world.

Each field is declared with `toy(...)` values first and, where the real run differs, `real=...`.
Values marked "ours" are our choices where the paper is silent (PAPER.md lists what is known);
none of the paper's own hyper-parameters are public. `Settings.for_world("real", method="grpo")`
builds the same object in code, without a command line: tools/bench.py, eval.py and tools/reproduce.py
read their defaults from here instead of restating them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
from dataclasses import dataclass

METHODS = ["sft", "grpo", "a-sft", "a-grpo", "uniapl",   # uniapl.PRESETS (a test checks)
           "chord-mu", "chord-phi", "a-chord-mu", "a-chord-phi"]
ADVERSARIAL = {"a-sft", "a-grpo", "uniapl", "a-chord-mu", "a-chord-phi"}   # the same (a test checks)

# Options a preset ignores: set away from the world's default they are refused with one line, as
# a setting that silently does nothing would mislead. Shapes every method shares (batch sizes,
# lengths, the discriminator's model) are not listed: tools pass them to every method alike.
IGNORED = [  # (options, the methods that ignore them, why)
    (("beta",), lambda m: m == "sft", "it has no rollouts, so there is no KL to a reference to weigh"),
    (("adv_coef_clip", "adv_coef_norm"), lambda m: m not in ADVERSARIAL, "it has no adversarial term"),
    (("chord_mu_peak", "chord_mu_valley", "chord_mu_warmup_steps", "chord_mu_decay_steps"),
     lambda m: not m.endswith("chord-mu"), "only chord-mu and a-chord-mu schedule alpha"),
]
SAME = object()                                           # the real world uses the toy value


def _section(title: str):
    """A `setting(toy, real=..., help=...)` factory whose fields appear under `title` in --help."""
    def setting(toy, help: str, real=SAME, **argparse_kwargs):
        meta = {"section": title, "help": help, "real": toy if real is SAME else real,
                "argparse": argparse_kwargs}
        return dataclasses.field(default=toy, metadata=meta)
    return setting


METHOD = _section("model and method: what is trained, with which terms and weights")
DATA = _section("data")
ROLLOUTS = _section("rollouts (the G samples per RL prompt)")
OPTIM = _section("optimisation")
RUN = _section("evaluation, checkpoints and the run")


@dataclass
class Settings:
    """One training run. Defaults are the toy world's; `for_world("real")` gives the real run's."""

    # --- method ---------------------------------------------------------------------------------
    model: str = METHOD("toy", "'toy', a local model directory, or a hub id (e.g. Qwen/Qwen3-0.6B)")
    method: str = METHOD("uniapl", "the preset of the unified step (README's table)",
                         choices=METHODS)
    alpha: float | None = METHOD(None, "weight of L_SFT; only uniapl may set it (preset 0.5, ours)")
    lambda_adv: float | None = METHOD(None, "weight of the adversarial term (preset 0.1 for a-sft, "
                                      "a-grpo and uniapl; ours: the coefficient has unit scale; the "
                                      "paper's suggested sweep, 1e-4 to 1e-2, is for its own L_ADV; "
                                      "uniapl at 0: the fixed-alpha mix of SFT and GRPO, no "
                                      "discriminator loaded)")
    adv_mode: str = METHOD("loss", "loss: L_ADV is its own term (the paper's choice); reward: "
                           "lambda_adv * d is added to the GRPO reward (the ablation)",
                           choices=["loss", "reward"])
    adv_coef_clip: float = METHOD(2.0, "c in Algorithm 1 (our reconstruction): coefficients are "
                                  "clipped to [-c, c] (ours: one odd score cannot dominate its group)")
    adv_coef_norm: str = METHOD("group", "what a discriminator score is compared with: its group "
                                "(Algorithm 1 as we read it), every rollout of the step, or "
                                "nothing (the raw, clipped score)", choices=["group", "batch", "none"])
    chord_mu_peak: float = METHOD(0.9, "CHORD-mu: the SFT weight's peak (CHORD's published value)")
    chord_mu_valley: float = METHOD(0.05, "CHORD-mu: the value it decays to (CHORD's)")
    chord_mu_warmup_steps: int = METHOD(0, "CHORD-mu: linear warm-up from 0 to the peak (CHORD's)")
    chord_mu_decay_steps: int | None = METHOD(None, "CHORD-mu: cosine decay length (default: the "
                                              "whole run; ours -- CHORD used 200 of its steps)")
    discriminator: str = METHOD("lexical", "the fixed discriminator (the paper: a POLAR model)",
                                real="polar", choices=["lexical", "embedding", "polar"])
    discriminator_model: str | None = METHOD(
        None, "encoder / POLAR directory or hub id (default: MiniLM for embedding)",
        real="internlm/POLAR-1_8B")

    # --- data -----------------------------------------------------------------------------------
    task: str = DATA("ifeval", "what is learned and checked (tasks.py): ifeval, gsm8k, or any "
                     "importable module defining a task's names (default: the task of a --model "
                     "saved by a run, else ifeval)")
    dataset: str | None = DATA("toy", "training rows: toy[:variant] (the task's toy world; ifeval's: "
                               "base, flawed, holdout, and shifted, shifted-nolength, unshifted whose "
                               "RL prompts ask for some instruction types only) | hub id[:config] | "
                               "local .jsonl/.json/.parquet (real default, None: the task's: "
                               "argilla/ifeval-like-data:filtered, openai/gsm8k:main)", real=None)
    eval_dataset: str | None = DATA("toy", "held-out rows for the task's evaluation (real default, None: "
                                    "the task's: google/IFEval, openai/gsm8k:main)", real=None)
    pool_split: str = DATA("shared", "shared: every row can be a demonstration and an RL prompt; "
                           "disjoint: first half demonstrations, second half RL prompts (ours)",
                           choices=["shared", "disjoint"])
    skip_invalid_rows: bool = DATA(False, "skip (and report) bad rows instead of stopping",
                                   action="store_true")
    teacher_accuracy: float = DATA(0.65, "toy world: how often the scripted teacher is right "
                                   "(below 1, so that RL has something to fix); another value "
                                   "re-answers the same prompts")
    toy_eval_size: int = DATA(100, "toy world: evaluation prompts (toy:validation: its prompts)")
    max_prompt_length: int = DATA(128, "prompts longer than this (tokens, after the chat "
                                  "template) are left out and counted", real=512)
    strict_prompt_length: bool = DATA(False, "stop on the first over-long prompt instead of "
                                      "leaving it out", action="store_true")

    # --- rollouts -------------------------------------------------------------------------------
    num_generations: int = ROLLOUTS(8, "G: rollouts per prompt (TRL's default is 8)")
    rl_batch_size: int = ROLLOUTS(4, "RL prompts per step (each rolled out G times)", real=8)
    sft_batch_size: int = ROLLOUTS(8, "demonstrations per step (the SFT half of the mixed batch)")
    temperature: float = ROLLOUTS(1.0, "sampling temperature; top-k/top-p are off so that we "
                                  "train on exactly the sampling distribution")
    max_completion_length: int = ROLLOUTS(64, "new tokens per rollout (and demonstration cut)",
                                          real=512)
    rollout_engine: str = ROLLOUTS("auto", "hf: HF generate (the reference); static: a bf16 copy "
                                   "of the policy, one static KV cache and CUDA graphs (the fast "
                                   "path without vLLM); vllm: in-process vLLM on the same GPU; auto: "
                                   "hf on the CPU, on CUDA vllm if installed (one process), else "
                                   "static", choices=["auto", "hf", "static", "vllm"])
    vllm_gpu_memory_utilization: float = ROLLOUTS(0.3, "vllm: the share of the GPU's memory vLLM "
                                                  "may take while awake (TRL's default)")
    reward: str | None = ROLLOUTS(None, "reward functions, summed with --reward-weights: the task's "
                                  "names or MODULE:FUNCTION in TRL's convention (tasks.py). ifeval: "
                                  "fraction, the share of the prompt's instructions a rollout "
                                  "satisfies (ours: partial credit), or all, 1 if it satisfies every "
                                  "one (the paper's binary reward); gsm8k: answer, steps (None: the "
                                  "task's first)", nargs="+")
    reward_weights: float | None = ROLLOUTS(None, "one weight per --reward function (None: 1 each)",
                                            nargs="+")
    mask_truncated: bool = ROLLOUTS(False, "leave rollouts that hit the length limit out of the "
                                    "loss (DAPO's overlong filtering)", action="store_true")

    # --- optimisation ---------------------------------------------------------------------------
    steps: int = OPTIM(300, "optimizer steps (the paper states none; ours)", real=500)
    learning_rate: float = OPTIM(1e-3, "AdamW learning rate (ours: a tiny random-init model needs "
                                 "a large one; 1e-6 is usual for RL on a 0.6B model)", real=1e-6)
    warmup_steps: int = OPTIM(10, "linear warm-up, then constant (ours); counts optimizer updates, "
                              "so with --num-iterations N each step counts N")
    weight_decay: float = OPTIM(0.0, "AdamW weight decay")
    max_grad_norm: float = OPTIM(1.0, "gradient-norm clip")
    micro_batch_size: int | None = OPTIM(None, "rollouts and demonstrations per forward/backward: "
                                         "gradients add up over the micro-batches, every mean "
                                         "divided by the whole step's count (default: all at once)")
    num_iterations: int = OPTIM(1, "optimizer updates per batch of rollouts (1: on-policy, the "
                                "ratio is 1 and the clip never binds)")
    beta: float = OPTIM(0.0, "weight of the KL to a frozen reference, a fourth term + beta * KL "
                        "beside the other three (0: no reference model is loaded; TRL's and "
                        "DAPO's default)")
    epsilon: float = OPTIM(0.2, "PPO clip: the ratio is kept within [1 - epsilon, 1 + epsilon_high]")
    epsilon_high: float | None = OPTIM(None, "upper clip (default: --epsilon; DAPO uses 0.28)")
    scale_rewards: str = OPTIM("group", "group: divide advantages by the group's std; none: only "
                               "centre them (Dr. GRPO)", choices=["group", "none"])
    loss_type: str = OPTIM("token", "token: mean over all completion tokens of the step (DAPO); "
                           "sequence: mean of per-sequence means (original GRPO)",
                           choices=["token", "sequence"])
    logprobs_backend: str = OPTIM("auto", "log-prob gathering: auto = triton on CUDA, else the "
                                  "chunked torch path", choices=["auto", "torch", "triton", "naive"])
    precision: str = OPTIM("auto", "auto: bf16 autocast on CUDA (fp32 master weights), fp32 on "
                           "the CPU; bf16 also autocasts on the CPU (rehearsing the GPU's numerics)",
                           choices=["auto", "bf16", "fp32"])
    gradient_checkpointing: bool = OPTIM(False, "recompute each layer's activations in backward "
                                         "(needed for 0.6B at 64 x 512 tokens)", real=True,
                                         action=argparse.BooleanOptionalAction)

    # --- evaluation, checkpoints, the run -------------------------------------------------------
    report_to: str = RUN("none", "trackers that also receive the metrics: none, tensorboard, wandb, "
                         "trackio (several allowed; trackers.py)", nargs="+")
    tracker_project: str = RUN("uniapl", "the wandb / trackio project")
    log_completions_every: int = RUN(0, "every N steps send trackers a table of sampled completions "
                                     "with their reward and discriminator score (0: never)")
    eval_every: int = RUN(0, "also evaluate every N steps (0: only before and after)", real=100)
    eval_start: bool = RUN(True, "evaluate before training too (tools/reproduce.py skips it for runs "
                           "that share a base model it has evaluated once)",
                           action=argparse.BooleanOptionalAction)
    eval_limit: int | None = RUN(None, "evaluate on the first N prompts only")
    eval_max_new_tokens: int = RUN(64, "evaluation answer length (lm-eval's IFEval uses 1,280; the "
                                   "toy's answers fit in the rollout length)", real=1280)
    save_every: int = RUN(100, "checkpoint every N steps and at the end (0: only when a signal "
                          "stops the run or --save-every-minutes says)")
    save_every_minutes: float = RUN(0.0, "also checkpoint when M minutes have passed since the last "
                                    "one (0: never), so a preemption without warning loses at most M "
                                    "minutes", real=30.0)
    save_total_limit: int = RUN(2, "checkpoints kept")
    resume: str | None = RUN(None, "a checkpoint directory, or 'auto': continue from the newest "
                             "whole checkpoint in --out if there is one, else start the run (one "
                             "command for every start of a preemptible job)")
    out: str | None = RUN(None, "run directory (default runs/<method>-<timestamp>)")
    device: str = RUN("auto", "auto | cpu | cuda | cuda:N (under torchrun: each rank's own GPU)")
    fsdp: bool = RUN(False, "under torchrun: shard parameters, gradients and optimizer state "
                     "with FSDP2 (for models whose training state does not fit one GPU)",
                     action="store_true")
    seed: int = RUN(0, "seeds the model init (toy), data order, sampling and the toy world")
    no_progress: bool = RUN(False, "no progress bar", action="store_true")

    # Derived once from the above by `finish()`; not command-line flags.
    world: str = dataclasses.field(default="toy", metadata={"derived": True})

    @classmethod
    def for_world(cls, world: str, **overrides) -> Settings:
        """The defaults of `world` ('toy' or 'real'), with `overrides` applied and checked."""
        values = {f.name: f.metadata["real"] for f in dataclasses.fields(cls)
                  if world == "real" and "real" in f.metadata}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"Settings has no field(s) {sorted(unknown)}")
        return cls(**(values | overrides | {"world": world})).finish()

    def finish(self) -> Settings:
        """Fill the derived values and check what argparse cannot."""
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.steps < 1 or self.save_total_limit < 1 or (self.micro_batch_size or 1) < 1 \
                or (self.eval_limit is not None and self.eval_limit < 1):
            raise SystemExit("--steps, --save-total-limit, --micro-batch-size and --eval-limit must be "
                             "at least 1")
        for options, ignores, why in IGNORED:
            for name in options:
                f = next(f for f in dataclasses.fields(self) if f.name == name)
                default = f.metadata["real"] if self.world == "real" else f.default
                if ignores(self.method) and getattr(self, name) != default:
                    raise SystemExit(f"--{name.replace('_', '-')} {getattr(self, name)} has no effect "
                                     f"with --method {self.method}: {why}")
        if self.dataset is None or self.eval_dataset is None:      # the real run: the task's
            import tasks
            datasets = tasks.load(self.task).DATASETS
            self.dataset, self.eval_dataset = self.dataset or datasets["train"], \
                self.eval_dataset or datasets["eval"]
        if self.out is None:
            if self.resume == "auto":
                raise SystemExit("--resume auto needs --out (the run directory to resume)")
            self.out = os.path.join("runs", f"{self.method}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        return self


def world_of(model: str) -> str:
    """'toy' for --model toy and for directories saved by toy runs, else 'real'."""
    return "toy" if model == "toy" else _marker(model).get("world", "real")


def task_of(model: str) -> str:
    """The task a directory saved by a run was trained on (its marker), else ifeval."""
    return _marker(model).get("task", "ifeval")


def _marker(model: str) -> dict:
    """uniapl.json of a directory saved by a run (world, task, method, steps), or {}."""
    marker = os.path.join(model, "uniapl.json")
    if os.path.isdir(model) and os.path.exists(marker):
        with open(marker) as f:
            return json.load(f)
    return {}


def _flag_help(f: dataclasses.Field) -> str:
    """The field's why, then its value in each world: [default: X] or [toy: X, real: Y]."""
    toy, real = f.default, f.metadata["real"]
    shown = f"default: {toy}" if toy == real else f"toy: {toy}, real: {real}"
    return f"{f.metadata['help']} [{shown}]".replace("%", "%%")


def parser(world: str = "toy") -> argparse.ArgumentParser:
    """argparse, built from the fields above; defaults are `world`'s, --help shows both worlds."""
    p = argparse.ArgumentParser(
        prog="train.py", description="Train with UniAPL: alpha * L_SFT + (1 - alpha) * L_GRPO + "
        "lambda_adv * L_ADV in every step. Defaults depend on the world of --model.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(Settings):
        if f.metadata.get("derived"):
            continue
        section = f.metadata["section"]
        if section not in groups:
            groups[section] = p.add_argument_group(section)
        kwargs = dict(f.metadata["argparse"])
        if "action" not in kwargs:   # the annotation says the type: "int | None" -> int
            kwargs["type"] = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
        default = f.metadata["real"] if world == "real" else f.default
        groups[section].add_argument("--" + f.name.replace("_", "-"), default=default,
                                     help=_flag_help(f), **kwargs)
    return p


def parse(argv=None) -> Settings:
    """Settings from a command line: --model decides the world, the world the defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="toy")
    pre.add_argument("--task", default=None)
    known, _ = pre.parse_known_args(argv)
    world = world_of(known.model)
    args = parser(world).parse_args(argv)
    args.task = known.task or task_of(known.model)
    return Settings(**vars(args), world=world).finish()
