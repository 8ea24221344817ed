"""Tasks: what a run learns and how it is checked. A task is a plain module; this file finds one.

    python train.py                                            # --task ifeval, the default
    python train.py --task gsm8k                               # GSM8K's toy world, on any CPU
    python train.py --task gsm8k --reward answer steps --reward-weights 1 0.5
    python train.py --task mytask --reward mytask:my_reward    # any importable module, any function

A task module defines these names (ifeval.py is the first such module, gsm8k.py the second):

    FIELDS       the row's own fields besides prompt, response and key (ifeval: instruction_id_list,
                 kwargs; gsm8k: answer)
    normalise    normalise(row) -> those fields of one raw row in any of the task's formats,
                 checked; a ValueError says which field and why ("field 'answer': ...")
    REWARDS      {name: function}, the first the default; each function in TRL's convention
                 f(prompts, completions, **fields) -> [float | None], one value per completion,
                 every field of the rows passed by name (a list, one entry per completion), None
                 for "not mine"; 1.0 means verified (eval.py --write-verified keeps those)
    METRICS      the evaluation's names, the headline first
    evaluate     evaluate(rows, texts) -> {metric: value, ..., "n_prompts": n}
    DATASETS     the real run's {"train": source, "eval": source} (and EVAL_SPLIT, default "train")
    toy_rows     toy_rows(variant, split, seed, n, n_eval, teacher_accuracy) -> the toy world's raw
                 rows; toy_tokenizer() -> its tokenizer (toy.build_tokenizer on its own texts)

`--reward` takes the task's names or MODULE:FUNCTION; several are summed with `--reward-weights`
(grpo.rewards: a function's None leaves the completion to the others, and a completion no
function scores stops the run). TRL's GRPOTrainer takes the same functions unchanged as
`reward_funcs=` with `reward_weights=` (tools/trl_uniapl.py). The losses and the discriminator
never read the task; nothing here is a class or a registry.
"""

from __future__ import annotations

import importlib

NAMES = ("FIELDS", "normalise", "REWARDS", "METRICS", "evaluate", "DATASETS", "toy_rows", "toy_tokenizer")


def load(name: str):
    """The task module `name`: ifeval, gsm8k, or any importable module with the names above."""
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise SystemExit(f"--task {name}: cannot import it ({e}); a task is a module on the "
                         "path (ifeval, gsm8k, or your own: tasks.py lists what it defines)") from None
    missing = [n for n in NAMES if not hasattr(module, n)]
    if missing:
        raise SystemExit(f"--task {name}: the module defines no {', '.join(missing)} (tasks.py lists "
                         "what a task defines)")
    return module


def reward_functions(task, names=None, weights=None) -> list[tuple[str, object, float]]:
    """--reward and --reward-weights resolved: (name, function, weight) per function; the task's
    names, or MODULE:FUNCTION for any importable function; None: the task's first, weight 1."""
    names = [names] if isinstance(names, str) else list(names or [next(iter(task.REWARDS))])
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    if len(weights) != len(names):
        raise SystemExit(f"--reward-weights gives {len(weights)} weights for {len(names)} reward "
                         "functions")
    out = []
    for name in names:
        if name in task.REWARDS:
            out.append((name, task.REWARDS[name]))
            continue
        module, _, function = name.partition(":")
        if not function:
            raise SystemExit(f"--reward {name}: the task {task.__name__} has {', '.join(task.REWARDS)}; "
                             "anything else is MODULE:FUNCTION")
        try:
            out.append((name, getattr(importlib.import_module(module), function)))
        except (ImportError, AttributeError) as e:
            raise SystemExit(f"--reward {name}: {e}") from None
    return [(n, f, w) for (n, f), w in zip(out, weights)]


def prompt_text(prompt) -> str:
    """A prompt as text: TRL passes a chat-message list for conversational data (its user turns)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m.get("role") == "user")


def completion_text(completion) -> str:
    """A completion as text: TRL passes a chat-message list for conversational data (its last)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]
