"""GSM8K: grade-school math word problems, their grader, a process reward, and a world in miniature.

    python train.py --task gsm8k                                    # the toy world, on any CPU
    python train.py --task gsm8k --reward answer steps --reward-weights 1 0.5
    python train.py --task gsm8k --model Qwen/Qwen3-0.6B            # openai/gsm8k, config main

The idea
--------
GSM8K (Cobbe et al. 2021, arXiv 2110.14168; hub `openai/gsm8k`, config `main`) pairs each
question with a worked solution: its calculations annotated the way the dataset's calculator
writes them, `<<48/2=24>>`, and its last line the final answer, `#### 72`. It is this project's
second task (tasks.py): the same method, another verifier.

* **Rows.** `{"prompt": question, "response": the gold solution (the demonstration), "answer":
  "72", "key"}`. A hub row `{"question", "answer": solution}` is normalised at load; one whose
  solution has no `#### N` line, or no number after `####`, is refused in one line naming the row
  and the field. `answer` is kept apart from `response`, so that demonstrations written by a
  teacher model (`eval.py --write-demos`, which replaces `response`) keep the gold answer.
* **answer** (the default reward): GSM8K's own grader -- the number after the first `####` of the
  completion, commas removed -- compared with the gold one. Ours: a `$` before the number is
  ignored, a leading minus is kept, and numbers are compared by value (`72.0` is `72`; the
  original compares the strings). A completion with no final answer scores 0, not None.
* **steps** (the process reward, the paper's open question of "process-based rewards for
  reasoning"): the share of the completion's `<<expr=result>>` calculations that are right. Each
  expression is parsed with `ast` and computed over exact fractions -- numbers, + - * /, unary
  minus and brackets only, never `eval` -- and is right when the written result is its value
  rounded to the result's own decimals. A calculation that does not parse is wrong; a completion
  with no calculation is not this reward's (None), so `answer` alone scores it.
* **Metrics**: accuracy (the headline), steps_right (right calculations among all written),
  clean (a right answer and no wrong calculation), and flaw_rate where rows know the answer a
  systematic error would give (the toy's `flawed` teacher): how often the student gives that one.

The world in miniature (`python train.py --task gsm8k`)
------------------------------------------------------
Two-step word problems in GSM8K's own format (so this file scores them unchanged): add then take
away, buy in boxes then use some, lose some then find more; numbers below 100, with as many
subtractions that need a borrow as not. A scripted teacher writes its working, right with
probability `teacher_accuracy` (0.65, as the instruction world's); otherwise it makes one of two
mistakes, equally often: a **slip carried forward** (a step's result off by one to ten, written
and used: a wrong answer) or a **miswritten step** (the annotation's result wrong, the number
carried on right: a right answer only the process reward catches). The `flawed` teacher also
never borrows: 52 - 17 becomes 45 (tens 5 - 1, units 7 - 2), carried forward, whenever a
subtraction needs a borrow. The toy tokenizer splits numbers into single digits (the model then
learns arithmetic digit by digit, not a table of every pair), and evaluation and validation
prompts never appear in training (held back by seed, as in the instruction world).
"""

from __future__ import annotations

import ast
import functools
import random
import re
from fractions import Fraction

# ----------------------------------------------------------------------------------------------
# GSM8K's format: the final answer, and the calculations
# ----------------------------------------------------------------------------------------------

FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")   # "#### 1,234" -> "1,234"
CALCULATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")     # "<<48/2=24>>" -> ("48/2", "24")
NUMBER = re.compile(r"-?\d+(\.\d+)?")


def final_answer(text: str) -> Fraction | None:
    """The number after the first '####' (commas and a '$' dropped), or None when there is none."""
    m = FINAL.search(text)
    return Fraction(m.group(1).replace(",", "")) if m else None


def gold_answer(solution: str) -> str:
    """The final answer of a gold solution, as text; ValueError when its last '####' line holds
    no number (GSM8K's every solution ends with one)."""
    if "####" not in solution:
        raise ValueError("field 'answer': the solution has no final '#### N' line")
    rest = solution.rsplit("####", 1)[1].strip().replace(",", "").lstrip("$").strip()
    if not NUMBER.fullmatch(rest):
        raise ValueError(f"field 'answer': '#### {rest[:20]}' is not a number")
    return rest


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def arithmetic(expression: str) -> Fraction:
    """The exact value of an arithmetic expression: numbers, + - * /, unary minus, brackets.
    Anything else (names, calls, powers, attributes) raises ValueError: model text never runs."""
    def value(node) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        raise ValueError(f"not arithmetic: {type(node).__name__}")
    try:
        return value(ast.parse(expression.replace(",", "").strip(), mode="eval").body)
    except SyntaxError:
        raise ValueError(f"does not parse: {expression!r}") from None


def calculation_right(expression: str, result: str) -> bool:
    """Is `result` the expression's value, rounded to the result's own decimals?"""
    result = result.replace(",", "").strip()
    if not NUMBER.fullmatch(result):
        return False
    try:
        exact = arithmetic(expression)
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    decimals = len(result.split(".")[1]) if "." in result else 0
    return abs(exact - Fraction(result)) * 2 * 10 ** decimals <= 1


def steps(text: str) -> list[bool]:
    """Each <<expr=result>> calculation of a text: right or not."""
    return [calculation_right(e, r) for e, r in CALCULATION.findall(text)]


# ----------------------------------------------------------------------------------------------
# The task (tasks.py): rows, rewards in TRL's convention, metrics, datasets
# ----------------------------------------------------------------------------------------------

FIELDS = ("answer",)
DATASETS = {"train": "openai/gsm8k:main", "eval": "openai/gsm8k:main"}
EVAL_SPLIT = "test"


def normalise(row: dict) -> dict:
    """answer (and the gold solution as response) of a hub row {"question", "answer": solution}
    or of a normalised row {"prompt", "response", "answer": "72"}; the toy's rows also keep
    flawed_answer (the answer its flawed teacher's systematic error gives, or None)."""
    answer = row.get("answer")
    if answer is None:
        raise ValueError("missing field 'answer'")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise ValueError(f"field 'answer' must be a string or a number, got {type(answer).__name__}")
    out = {}
    if "question" in row:                       # the hub's format: the answer is the solution
        out["response"] = answer
        answer = gold_answer(answer)
    elif not NUMBER.fullmatch(answer.replace(",", "").strip()):
        raise ValueError(f"field 'answer': {answer[:20]!r} is not a number")
    out["answer"] = answer.replace(",", "").strip()
    if row.get("flawed_answer") is not None:
        out["flawed_answer"] = str(row["flawed_answer"])
    return out


def answer_reward(prompts, completions, answer, **_) -> list[float]:
    """1.0 if the completion's final answer equals the gold one (GSM8K's grader), else 0.0."""
    from tasks import completion_text
    return [float(final_answer(completion_text(c)) == Fraction(a)) for c, a in zip(completions, answer)]


def step_reward(prompts, completions, **_) -> list[float | None]:
    """The process reward: the share of the completion's calculations that are right (None: it
    wrote none, so the answer reward alone scores it)."""
    from tasks import completion_text
    out = []
    for c in completions:
        marks = steps(completion_text(c))
        out.append(sum(marks) / len(marks) if marks else None)
    return out


REWARDS = {"answer": answer_reward, "steps": step_reward}
METRICS = ("accuracy", "steps_right", "clean", "flaw_rate")


def evaluate(rows: list[dict], texts: list[str]) -> dict:
    """accuracy, steps_right (pooled over every calculation written), clean, and flaw_rate over
    the rows whose flawed answer differs from the right one (None where no row has one)."""
    if len(rows) != len(texts) or not rows:
        raise ValueError(f"evaluate: {len(rows)} rows and {len(texts)} texts")
    right = [final_answer(t) == Fraction(r["answer"]) for r, t in zip(rows, texts)]
    marks = [steps(t) for t in texts]
    written = sum(len(m) for m in marks)
    flawed = [(r, t) for r, t in zip(rows, texts)
              if r.get("flawed_answer") is not None and r["flawed_answer"] != r["answer"]]
    return {"accuracy": sum(right) / len(rows),
            "steps_right": sum(sum(m) for m in marks) / written if written else 0.0,
            "clean": sum(ok and all(m) for ok, m in zip(right, marks)) / len(rows),
            "flaw_rate": sum(final_answer(t) == Fraction(r["flawed_answer"]) for r, t in flawed) / len(flawed)
            if flawed else None,
            "n_prompts": len(rows), "n_steps": written, "n_flawed": len(flawed)}


# ----------------------------------------------------------------------------------------------
# The world in miniature
# ----------------------------------------------------------------------------------------------

NAMES = [("Tom", "He"), ("Ana", "She"), ("Sam", "He"), ("Mia", "She"), ("Leo", "He"), ("Zoe", "She")]
ITEMS = ["apples", "books", "coins", "cards", "eggs", "pens", "shells", "stamps"]
TEACHER_ACCURACY = 0.65
EVAL_SEED, VALIDATION_SEED, HELD_BACK = 1_000_003, 2_000_006, 1000


def no_borrow(a: int, b: int) -> int:
    """a - b the way the flawed teacher does it: each digit's smaller from its larger, never a
    borrow (52 - 17 -> tens 5 - 1, units 7 - 2 -> 45); a - b where no borrow is needed."""
    return 10 * (a // 10 - b // 10) + abs(a % 10 - b % 10)


def _problem(rng: random.Random):
    """A question and its two steps [(a, op, b, sentence)], the second using the first's result
    as `{x}`; every result between 1 and 99, half the subtractions needing a borrow."""
    (name, he), item, kind = rng.choice(NAMES), rng.choice(ITEMS), rng.randrange(3)
    borrow = rng.random() < 0.5

    def minus(top: int) -> int:               # a subtrahend below top, borrowing or not
        options = [b for b in range(2, min(top, 20)) if (top % 10 < b % 10) == borrow] or \
            list(range(1, top))
        return rng.choice(options)

    if kind == 0:
        a, b = rng.randint(5, 25), rng.randint(2, 15)
        c = minus(a + b)
        q = (f"{name} has {a} {item}. {he} gets {b} more and then gives {c} away. "
             f"How many {item} does {name} have now?")
        return q, [(a, "+", b, f"{name} has {{e}} {item}."),
                   ("{x}", "-", c, f"{he} gives {c} away: {{e}} {item}.")]
    if kind == 1:
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        c = minus(a * b)
        q = (f"{name} buys {a} boxes of {item} with {b} in each box and uses {c} of them. "
             f"How many {item} are left?")
        return q, [(a, "*", b, f"{name} buys {{e}} {item}."),
                   ("{x}", "-", c, f"{he} uses {c}: {{e}} {item} left.")]
    a = rng.randint(12, 35)
    b = minus(a)
    c = rng.randint(2, 15)
    q = (f"{name} has {a} {item} and loses {b} of them. Then {he.lower()} finds {c} more. "
         f"How many {item} does {name} have?")
    return q, [(a, "-", b, f"{name} has {{e}} {item} left."),
               ("{x}", "+", c, f"{he} finds {c}: {{e}} {item}.")]


def _solve(plan, slip=None, miswrite=None, flawed=False, rng=None) -> tuple[str, int]:
    """The teacher's working and final answer: `slip` / `miswrite` name the step (0 or 1) it
    gets wrong; `flawed`: every subtraction that needs a borrow is done without one."""
    lines, x = [], None
    for k, (a, op, b, sentence) in enumerate(plan):
        a = x if a == "{x}" else a
        value = a + b if op == "+" else a * b if op == "*" else \
            (no_borrow(a, b) if flawed else a - b)
        if k == slip:
            value += rng.choice([-10, -2, -1, 1, 2, 10])
            value = value if value > 0 else value + 20
        written = value + rng.choice([-2, -1, 1, 2]) if k == miswrite else value
        lines.append(sentence.format(e=f"{a} {op} {b} = <<{a}{op}{b}={written}>>{value}"))
        x = value
    return "\n".join(lines + [f"#### {x}"]), x


def make_rows(n: int, seed: int, teacher_accuracy: float = TEACHER_ACCURACY, variant: str = "",
              exclude: frozenset = frozenset(), split: str = "train") -> list[dict]:
    """n rows of the toy world, deterministic in (n, seed, teacher_accuracy, variant): prompts and
    the teacher draw from two random streams, so the prompts are the same whatever the teacher."""
    prompts, teacher = random.Random(seed), random.Random(f"teacher-{seed}")
    rows, seen = [], set(exclude)
    while len(rows) < n:
        question, plan = _problem(prompts)
        if question in seen:
            continue
        seen.add(question)
        right_text, right = _solve(plan)
        flawed_text, flawed = _solve(plan, flawed=True)
        error = None if teacher.random() < teacher_accuracy else teacher.choice(["slip", "miswrite"])
        step = teacher.randrange(2)
        text, _ = _solve(plan, slip=step if error == "slip" else None,
                         miswrite=step if error == "miswrite" else None,
                         flawed=variant == "flawed", rng=teacher)
        rows.append({"prompt": question, "response": text, "answer": str(right),
                     "flawed_answer": str(flawed), "key": f"toy-gsm8k-{split}-{seed}-{len(rows)}"})
    return rows


@functools.lru_cache(maxsize=16)
def held_back(seed: int) -> frozenset:
    """Every prompt an evaluation or validation set of this seed can hold: never trained on."""
    return frozenset(r["prompt"] for s in (EVAL_SEED, VALIDATION_SEED)
                     for r in make_rows(HELD_BACK, seed + s, split="held"))


def toy_rows(variant: str, split: str, seed: int, n: int, n_eval: int,
             teacher_accuracy: float) -> list[dict] | None:
    """The toy world: variants "" (the scripted teacher) and "flawed" (it never borrows), and
    "validation" (a third split, for tuning); split "rl" has no stream of its own (None)."""
    if variant not in ("", "flawed", "validation"):
        raise ValueError(f"unknown toy variant {variant!r} of gsm8k ('', flawed, validation)")
    if split == "rl":
        return None
    if n_eval > HELD_BACK:
        raise ValueError(f"at most {HELD_BACK} evaluation prompts per seed")
    if variant == "validation":
        return make_rows(n_eval, seed + VALIDATION_SEED, teacher_accuracy, split="validation")
    if split != "train":                     # evaluation: the flawed world's teacher flaws too
        return make_rows(n_eval, seed + EVAL_SEED, teacher_accuracy, variant, split="eval")
    return make_rows(n, seed, teacher_accuracy, variant, exclude=held_back(seed))


def toy_tokenizer():
    """The toy tokenizer (toy.build_tokenizer): trained on a world of its own (seed 12345), with
    numbers split into single digits."""
    import toy
    rows = make_rows(3000, seed=12345, teacher_accuracy=0.5, split="tokenizer")
    return toy.build_tokenizer(texts=tuple([r["prompt"] for r in rows] + [r["response"] for r in rows]),
                               digits=True)
