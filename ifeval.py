"""Verifiable instructions: IFEval's 25 checkers, the GRPO reward, and IFEval's four metrics.

The idea
--------
IFEval (Zhou et al., 2023, "Instruction-Following Evaluation for Large Language Models") attaches
to each prompt a list of *verifiable* instructions ("answer in fewer than 50 words", "do not use
commas", ...), each checked by a small deterministic function of the response text. UniAPL's GRPO
term is rewarded by the same checks (PAPER.md: "a binary reward from a verification function"),
so one file serves both training and evaluation and a reward of 1.0 during training means exactly
"IFEval-strict would pass every instruction of this prompt".

    reward(y) = (1 / K) * sum_k check_k(y)          over the K instructions of the prompt
              = 0                                   if y is empty or whitespace only

Metrics (IFEval's four numbers):

    prompt_strict = mean over prompts of  all_k check_k(y)
    inst_strict   = (sum over prompts of sum_k check_k(y)) / (total number of instructions)
    *_loose       = the same, where an instruction passes if it passes on ANY of 8 variants of y:
                    y; y without '*'; y without its first line; without its last line; without
                    both; and the '*'-free forms of the last three.

Instruction-level accuracy is pooled over all instructions (not averaged per prompt), as in the
reference implementation.

Where this comes from, and what differs
---------------------------------------
The semantics follow google-research `instruction_following_eval` (Apache-2.0), as maintained in
EleutherAI/lm-evaluation-harness `lm_eval/tasks/ifeval/`; this is an independent re-implementation
(we cannot depend on those packages offline: they download NLTK data when imported). Differences,
all deliberate:

* Sentence counting (`length_constraints:number_sentences`): the reference uses NLTK's punkt
  model, which cannot be fetched offline. We split at runs of '.', '!' or '?' (plus closing quotes
  or brackets) followed by whitespace or the end of the text, and do not split after common
  abbreviations (Mr., Dr., e.g., ...), single-letter initials or inside decimal numbers. This
  agrees with punkt on ordinary prose; punkt's learned abbreviation list is longer.
* Word tokens for `change_case:capital_word_frequency`: the reference uses NLTK's
  `word_tokenize`; we use runs of word characters joined by '-' or "'" ("WELL-KNOWN" and "DON'T"
  are one word each; NLTK splits "DON'T" into "DO" + "N'T").
* Keywords are matched literally (`re.escape`); the reference passes them to `re` as patterns,
  which only differs for keywords containing regex metacharacters.
* `keywords:frequency` counts case-insensitive *substring* occurrences, exactly as the reference
  does (IFEval's description reads like "whole word", but the reference code uses no word
  boundaries, and we match the code so that scores are comparable with published IFEval numbers).
  `keywords:forbidden_words` does use whole-word matching, as the reference does.
* `combination:repeat_prompt` reads `prompt_to_repeat` from kwargs (as google/IFEval rows carry
  it); when absent it falls back to the row's own prompt.
* Language detection (`language:response_language`, `change_case:english_*`) uses langdetect
  with `DetectorFactory.seed = 0`, so it is deterministic; a text langdetect cannot classify
  counts as passing, as in the reference.

The task: this file is the first task module (tasks.py): its rows' fields and their validation,
its rewards (`fraction`, the default, and the paper's binary `all`) in TRL's reward-function
convention `(prompts, completions, instruction_id_list, kwargs, **_) -> list[float]`, so that they
pass unchanged as `reward_funcs=[ifeval.fraction]` to `trl.GRPOTrainer` on a dataset with IFEval
columns, its metrics, its real datasets and its toy world (toy.py).
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

RELATIONS = ("less than", "at least")


# ----------------------------------------------------------------------------------------------
# Text helpers shared by several checkers
# ----------------------------------------------------------------------------------------------

def _compare(count: int, relation: str, n: int) -> bool:
    """IFEval's two relations: 'less than' is count < n, 'at least' is count >= n."""
    return count < n if relation == "less than" else count >= n


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e",
                  "inc", "ltd", "co", "no", "fig", "approx", "dept", "est", "mt", "u.s", "a.m",
                  "p.m"}
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


def count_sentences(text: str) -> int:
    """Number of sentences; a documented approximation of NLTK punkt (see the module docstring)."""
    count, start = 0, 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start:m.start()]
        last_word = before.split()[-1].lower() if before.split() else ""
        if m.group().startswith(".") and len(m.group()) == 1:
            # "Dr. Smith", "e.g. this", "J. Doe": a single period after an abbreviation or an
            # initial does not end a sentence.
            if last_word.rstrip(".") in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word):
                continue
        if before.strip():
            count += 1
        start = m.end()
    if text[start:].strip():  # a trailing sentence without final punctuation still counts
        count += 1
    return count


def count_words(text: str) -> int:
    """IFEval counts `\\w+` tokens (NLTK's RegexpTokenizer(r'\\w+'))."""
    return len(re.findall(r"\w+", text))


def _detect_language(text: str) -> str | None:
    """ISO 639-1 code from langdetect (seeded: deterministic), or None if it cannot tell."""
    try:
        import langdetect
    except ImportError as e:  # pragma: no cover - langdetect is in requirements.txt
        raise ImportError("ifeval: language checks need langdetect: pip install langdetect") from e
    langdetect.DetectorFactory.seed = 0
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


# ----------------------------------------------------------------------------------------------
# The 25 checkers. Each takes (response, **kwargs) and returns bool. Kwargs arrive validated.
# ----------------------------------------------------------------------------------------------

def _keywords_existence(r, *, keywords):
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords)


def _keywords_frequency(r, *, keyword, frequency, relation):
    found = len(re.findall(re.escape(keyword.strip()), r, flags=re.IGNORECASE))
    return _compare(found, relation, frequency)


def _forbidden_words(r, *, forbidden_words):
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE)
                   for w in forbidden_words)


def _letter_frequency(r, *, letter, let_frequency, let_relation):
    return _compare(collections.Counter(r.lower())[letter.strip().lower()], let_relation,
                    let_frequency)


def _response_language(r, *, language):
    detected = _detect_language(r)
    return detected is None or detected == language


def _number_sentences(r, *, num_sentences, relation):
    return _compare(count_sentences(r), relation, num_sentences)


def _number_paragraphs(r, *, num_paragraphs):
    parts = re.split(r"\s?\*\*\*\s?", r)
    n = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                n -= 1  # a divider at the very start or end does not open a paragraph
            else:
                return False  # an empty paragraph between two dividers fails
    return n == num_paragraphs


def _number_words(r, *, num_words, relation):
    return _compare(count_words(r), relation, num_words)


def _nth_paragraph_first_word(r, *, num_paragraphs, nth_paragraph, first_word):
    paragraphs = re.split(r"\n\n", r)
    n = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > n:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    got = ""
    for ch in word:  # the first word ends at the first punctuation mark
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        got += ch.lower()
    return n == num_paragraphs and got == first_word.lower()


def _number_placeholders(r, *, num_placeholders):
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def _postscript(r, *, postscript_marker):
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


def _number_bullet_lists(r, *, num_bullets):
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def _constrained_response(r):
    r = r.strip()
    return any(o in r for o in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _number_highlighted_sections(r, *, num_highlights):
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def _multiple_sections(r, *, section_spliter, num_sections):
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, r)) - 1 >= num_sections


def _json_format(r):
    r = r.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if r.startswith(fence):
            r = r[len(fence):]
            break
    r = r.removesuffix("```").strip()
    try:
        json.loads(r)
    except ValueError:
        return False
    return True


def _title(r):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _two_responses(r):
    valid = []
    parts = r.split("******")
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(r, *, prompt_to_repeat):
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(r, *, end_phrase):
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(r):
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


def _capital_word_frequency(r, *, capital_frequency, capital_relation):
    words = re.findall(r"\w+(?:['-]\w+)*", r)
    return _compare(sum(1 for w in words if w.isupper()), capital_relation, capital_frequency)


def _english_capital(r):
    detected = _detect_language(r)
    return r.isupper() and (detected is None or detected == "en")


def _english_lowercase(r):
    detected = _detect_language(r)
    return r.islower() and (detected is None or detected == "en")


def _no_comma(r):
    return "," not in r


# ----------------------------------------------------------------------------------------------
# Registry: id -> checker and its kwargs (name -> type). Kwarg names are IFEval's (sic "spliter").
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    check: Callable[..., bool]
    kwargs: dict  # required kwarg name -> "int" | "str" | "relation" | "list"
    optional: tuple = ()


REGISTRY: dict[str, Instruction] = {
    "keywords:existence": Instruction(_keywords_existence, {"keywords": "list"}),
    "keywords:frequency": Instruction(
        _keywords_frequency, {"keyword": "str", "frequency": "int", "relation": "relation"}),
    "keywords:forbidden_words": Instruction(_forbidden_words, {"forbidden_words": "list"}),
    "keywords:letter_frequency": Instruction(
        _letter_frequency, {"letter": "str", "let_frequency": "int", "let_relation": "relation"}),
    "language:response_language": Instruction(_response_language, {"language": "str"}),
    "length_constraints:number_sentences": Instruction(
        _number_sentences, {"num_sentences": "int", "relation": "relation"}),
    "length_constraints:number_paragraphs": Instruction(
        _number_paragraphs, {"num_paragraphs": "int"}),
    "length_constraints:number_words": Instruction(
        _number_words, {"num_words": "int", "relation": "relation"}),
    "length_constraints:nth_paragraph_first_word": Instruction(
        _nth_paragraph_first_word,
        {"num_paragraphs": "int", "nth_paragraph": "int", "first_word": "str"}),
    "detectable_content:number_placeholders": Instruction(
        _number_placeholders, {"num_placeholders": "int"}),
    "detectable_content:postscript": Instruction(_postscript, {"postscript_marker": "str"}),
    "detectable_format:number_bullet_lists": Instruction(
        _number_bullet_lists, {"num_bullets": "int"}),
    "detectable_format:constrained_response": Instruction(_constrained_response, {}),
    "detectable_format:number_highlighted_sections": Instruction(
        _number_highlighted_sections, {"num_highlights": "int"}),
    "detectable_format:multiple_sections": Instruction(
        _multiple_sections, {"section_spliter": "str", "num_sections": "int"}),
    "detectable_format:json_format": Instruction(_json_format, {}),
    "detectable_format:title": Instruction(_title, {}),
    "combination:two_responses": Instruction(_two_responses, {}),
    "combination:repeat_prompt": Instruction(
        _repeat_prompt, {}, optional=(("prompt_to_repeat", "str"),)),
    "startend:end_checker": Instruction(_end_checker, {"end_phrase": "str"}),
    "startend:quotation": Instruction(_quotation, {}),
    "change_case:capital_word_frequency": Instruction(
        _capital_word_frequency, {"capital_frequency": "int", "capital_relation": "relation"}),
    "change_case:english_capital": Instruction(_english_capital, {}),
    "change_case:english_lowercase": Instruction(_english_lowercase, {}),
    "punctuation:no_comma": Instruction(_no_comma, {}),
}


def _coerce(instruction_id: str, name: str, kind: str, value):
    """Check one kwarg's type; return it normalised (integral floats from parquet become int)."""
    def bad(expected):
        return ValueError(f"instruction {instruction_id!r}: kwarg {name!r} must be {expected}, "
                          f"got {type(value).__name__} {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("an integer")
        if isinstance(value, float) and not value.is_integer():
            raise bad("an integer")
        if value < 0:
            raise bad("a non-negative integer")
        return int(value)
    if kind in ("str", "relation"):
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string")
        if kind == "relation" and value not in RELATIONS:
            raise ValueError(f"instruction {instruction_id!r}: kwarg {name!r} must be one of "
                             f"{list(RELATIONS)}, got {value!r}")
        return value
    # list of strings (keywords, forbidden words); tuples/arrays from parquet are fine
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise bad("a list of strings")
    value = list(value)
    if not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad("a non-empty list of non-empty strings")
    return value


def validate(instruction_id: str, kwargs: dict | None, prompt: str = "") -> dict:
    """Return the kwargs that `instruction_id`'s checker takes, or raise ValueError saying why.

    `None` values are dropped first (google/IFEval rows carry every key, unused ones null).
    """
    if instruction_id not in REGISTRY:
        raise ValueError(f"unknown instruction id {instruction_id!r}; known ids: "
                         f"{', '.join(sorted(REGISTRY))}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"instruction {instruction_id!r}: kwargs must be a dict, got "
                         f"{type(kwargs).__name__}")
    spec = REGISTRY[instruction_id]
    given = {k: v for k, v in (kwargs or {}).items() if v is not None}
    allowed = dict(spec.kwargs) | dict(spec.optional)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"instruction {instruction_id!r}: unexpected kwarg(s) {unknown}; it "
                         f"takes {sorted(allowed) or 'none'}")
    out = {}
    for name, kind in allowed.items():
        if name in given:
            out[name] = _coerce(instruction_id, name, kind, given[name])
        elif name in spec.kwargs:
            raise ValueError(f"instruction {instruction_id!r}: missing required kwarg {name!r}")
    if instruction_id == "combination:repeat_prompt" and "prompt_to_repeat" not in out:
        if not prompt.strip():
            raise ValueError(f"instruction {instruction_id!r}: needs kwarg 'prompt_to_repeat' "
                             "or a non-empty prompt")
        out["prompt_to_repeat"] = prompt
    return out


def check_instruction(instruction_id: str, kwargs: dict | None, response: str,
                      prompt: str = "") -> bool:
    """IFEval-strict check of one instruction. An empty or whitespace-only response fails."""
    clean = validate(instruction_id, kwargs, prompt)
    return bool(response.strip()) and REGISTRY[instruction_id].check(response, **clean)


def _loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    no_first = "\n".join(lines[1:]).strip()
    no_last = "\n".join(lines[:-1]).strip()
    no_both = "\n".join(lines[1:-1]).strip()
    variants = [response, no_first, no_last, no_both]
    return variants + [v.replace("*", "") for v in variants]


def loose_check(instruction_id: str, kwargs: dict | None, response: str,
                prompt: str = "") -> bool:
    """IFEval-loose: passes if the strict check passes on any of the 8 variants of the response."""
    clean = validate(instruction_id, kwargs, prompt)
    check = REGISTRY[instruction_id].check
    return any(v.strip() and check(v, **clean) for v in _loose_variants(response))


def _as_kwargs_list(kwargs_list, n: int) -> list:
    if isinstance(kwargs_list, str):  # argilla/ifeval-like-data stores a JSON string
        kwargs_list = json.loads(kwargs_list)
    kwargs_list = list(kwargs_list) if kwargs_list is not None else [{}] * n
    if len(kwargs_list) != n:
        raise ValueError(f"{n} instruction ids but {len(kwargs_list)} kwargs dicts")
    return kwargs_list


def reward(response: str, instruction_id_list, kwargs_list, prompt: str = "") -> float:
    """GRPO reward: fraction of the prompt's instructions satisfied (strict); 0.0 if empty."""
    ids = list(instruction_id_list)
    kwargs_list = _as_kwargs_list(kwargs_list, len(ids))
    if not ids:
        raise ValueError("reward: a row needs at least one instruction id")
    if not response.strip():
        return 0.0
    return sum(check_instruction(i, k, response, prompt) for i, k in zip(ids, kwargs_list)) / len(ids)


# ----------------------------------------------------------------------------------------------
# The task (tasks.py): the names every task module defines
# ----------------------------------------------------------------------------------------------

FIELDS = ("instruction_id_list", "kwargs")
METRICS = ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")
DATASETS = {"train": "argilla/ifeval-like-data:filtered", "eval": "google/IFEval"}
EVAL_SPLIT = "train"                     # google/IFEval has that split only


def normalise(row: dict) -> dict:
    """instruction_id_list and kwargs of one row, checked: a normalised row, a google/IFEval row
    (every kwarg key present, unused ones null) or an argilla/ifeval-like-data row (kwargs a JSON
    string in its current revision, a list of structs in older ones)."""
    for field in FIELDS:
        if row.get(field) is None:
            raise ValueError(f"missing field {field!r}")
    ids = row["instruction_id_list"]
    if isinstance(ids, str) or not hasattr(ids, "__iter__"):
        raise ValueError("field 'instruction_id_list' must be a list of strings")
    ids = list(ids)
    if not ids:
        raise ValueError("field 'instruction_id_list' is empty")
    kwargs = row["kwargs"]
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"field 'kwargs' is not valid JSON ({e})") from None
    if isinstance(kwargs, dict) or not hasattr(kwargs, "__iter__"):
        raise ValueError("field 'kwargs' must be a list of dicts (one per instruction)")
    kwargs = list(kwargs)
    if len(kwargs) != len(ids):
        raise ValueError(f"field 'kwargs' has {len(kwargs)} entries for {len(ids)} instruction ids")
    clean = []
    for i, (iid, kw) in enumerate(zip(ids, kwargs)):
        try:
            clean.append(validate(iid, kw if kw is not None else {}, row["prompt"]))
        except ValueError as e:
            raise ValueError(f"field 'kwargs[{i}]' / 'instruction_id_list[{i}]': {e}") from None
    return {"instruction_id_list": ids, "kwargs": clean}


def fraction(prompts, completions, instruction_id_list, kwargs, **_) -> list[float]:
    """The default reward, in TRL's convention: the share of each prompt's instructions its
    completion satisfies (`reward`); prompts and completions may be chat-message lists."""
    from tasks import completion_text, prompt_text
    return [reward(completion_text(c), ids, kw, prompt_text(p))
            for p, c, ids, kw in zip(prompts, completions, instruction_id_list, kwargs)]


def every_instruction(prompts, completions, instruction_id_list, kwargs, **_) -> list[float]:
    """The paper's binary reward (--reward all): 1 if the completion satisfies every instruction."""
    return [float(r == 1) for r in fraction(prompts, completions, instruction_id_list, kwargs)]


REWARDS = {"fraction": fraction, "all": every_instruction}


def toy_rows(variant: str, split: str, seed: int, n: int, n_eval: int,
             teacher_accuracy: float) -> list[dict] | None:
    """The toy world's rows (toy.py): its variants base, flawed, holdout, validation (a third
    split), and the shifted worlds, whose split "rl" is their stream of RL prompts (None: a
    variant without one)."""
    import toy
    if variant not in ("", "base", "flawed", "holdout", "validation", *toy.SHIFTS):
        raise ValueError(f"unknown toy variant {variant!r} (base, flawed, holdout, validation, "
                         f"{', '.join(toy.SHIFTS)})")
    if split == "rl":                       # RL prompts of their own: the shifted worlds only
        return toy.rl_rows(seed, n, variant) if variant in toy.SHIFTS else None
    if variant == "validation":
        return toy.validation_rows(seed, n_eval, teacher_accuracy)
    if variant in toy.SHIFTS:               # demonstrations and evaluation: the ordinary world's
        variant, teacher_accuracy = "", toy.TEACHER_ACCURACY
    train, evals = toy.train_eval_rows(seed, n_train=n, n_eval=n_eval, teacher_accuracy=teacher_accuracy,
                                       variant=variant)
    return train if split == "train" else evals


def toy_tokenizer():
    """The toy world's tokenizer (toy.py)."""
    import toy
    return toy.build_tokenizer()


def evaluate(rows: list[dict], responses: list[str]) -> dict:
    """IFEval's four metrics, pooled as the reference does, plus a per-instruction breakdown.

    rows: normalised rows (prompt, instruction_id_list, kwargs); responses: one string per row.
    """
    if len(rows) != len(responses):
        raise ValueError(f"evaluate: {len(rows)} rows but {len(responses)} responses")
    if not rows:
        raise ValueError("evaluate: no rows")
    prompt_s = prompt_l = inst_s = inst_l = n_inst = 0
    per_id: dict[str, dict] = {}
    for row, resp in zip(rows, responses):
        ids = list(row["instruction_id_list"])
        kws = _as_kwargs_list(row["kwargs"], len(ids))
        strict = [check_instruction(i, k, resp, row["prompt"]) for i, k in zip(ids, kws)]
        loose = [loose_check(i, k, resp, row["prompt"]) for i, k in zip(ids, kws)]
        prompt_s += all(strict)
        prompt_l += all(loose)
        inst_s += sum(strict)
        inst_l += sum(loose)
        n_inst += len(ids)
        for i, s, lo in zip(ids, strict, loose):
            d = per_id.setdefault(i, {"count": 0, "strict": 0.0, "loose": 0.0})
            d["count"] += 1
            d["strict"] += s
            d["loose"] += lo
    for d in per_id.values():
        d["strict"] /= d["count"]
        d["loose"] /= d["count"]
    n = len(rows)
    return {"prompt_strict": prompt_s / n, "inst_strict": inst_s / n_inst,
            "prompt_loose": prompt_l / n, "inst_loose": inst_l / n_inst,
            "n_prompts": n, "n_instructions": n_inst,
            "per_instruction": dict(sorted(per_id.items()))}
