"""The embedded toy world: a tiny Qwen3, a tokenizer built in code, and an IFEval-style task.

The idea
--------
`python train.py` must show UniAPL working on any CPU, offline, in minutes, through exactly the
code paths of the real run (chat template, rollouts, IFEval reward, discriminator, mixed batches).
So this file builds, deterministically from a seed:

* **a task**: prompts such as "Describe the river. Do not use any commas. Finish your response with
  this exact phrase: That is all." Each carries real IFEval instruction ids and kwargs (only types
  that need no language detection), in the normalised row schema of data.py:
  {"prompt", "response", "instruction_id_list", "kwargs", "key"}.
* **a scripted teacher** that writes the `response` of each row. With probability
  `teacher_accuracy` (default 0.65) it satisfies every instruction; otherwise it violates one of
  them, as a real teacher sometimes does. This is what makes the paper's "student beats its
  teacher" observable: imitation alone inherits the teacher's 35% failures, the verifier reward
  does not. Another accuracy re-answers the world's prompts (`reanswer`): only the teacher changes.
* **a tokenizer**: byte-level BPE trained on the toy corpus (so toy words are single tokens and any
  text still round-trips losslessly), wrapped as a `PreTrainedTokenizerFast` with a Qwen-style
  chat template and `<|im_end|>` as EOS. Why not bytes: measured while designing this, a 0.8M
  model on byte tokens learned nothing of a word-count task in 400 steps; on word tokens it
  reached 60-70% in 100 steps.
* **a model**: `Qwen3ForCausalLM` with a tiny `Qwen3Config` (about 0.88 M parameters, tied
  embeddings like Qwen3-0.6B), random init.

Training, evaluation and validation prompts come from different seeds, and every training set
of every variant leaves out each prompt that an evaluation or validation set of its seed can hold
(`held_back`), so held-out accuracy is held out.
"""

from __future__ import annotations

import functools
import random

import ifeval

TOPICS = ["cat", "dog", "river", "garden", "city", "forest", "train", "ocean", "mountain",
          "school", "market", "bird", "storm", "library", "kitchen", "bridge", "island", "farm",
          "castle", "moon"]
ASKS = ["Write about the {t}.", "Tell me about the {t}.", "Describe the {t}."]
KEYWORDS = ["sunny", "music", "bread", "paper", "green", "silver", "honey", "winter", "coffee",
            "window"]
END_PHRASES = ["That is all.", "Any other questions?", "Is there anything else I can help with?"]
# Body sentences: {t} is the topic. Some carry commas, so "no commas" is a real constraint, and
# each uses one of a few adjectives, so "do not say <adjective>" is one too.
ADJECTIVES = ["quiet", "calm", "bright", "warm", "old"]
SENTENCES = ["The {t} is {a} today.", "I like the {t} because it feels {a}.",
             "We walked to the {t} in the morning.", "Many people visit the {t} every week.",
             "The {t} looks {a}, big and friendly.", "Near the {t}, the air was fresh.",
             "In the evening, the {t} is {a}.", "My friend says the {t} is {a}."]

# instruction id -> (prompt text, kwargs sampler). Exactly the IFEval ids and kwarg names.
INSTRUCTIONS = {
    "keywords:existence": lambda r: ("Include the keyword {k}.", {"keywords": [r.choice(KEYWORDS)]}),
    "keywords:frequency": lambda r: (
        "Use the word {k} at least {n} times.",
        {"keyword": r.choice(KEYWORDS), "frequency": r.choice([2, 3]), "relation": "at least"}),
    "keywords:forbidden_words": lambda r: (
        "Do not include the word {w}.", {"forbidden_words": [r.choice(ADJECTIVES)]}),
    "length_constraints:number_words": lambda r: r.choice([
        ("Answer with less than {n} words.", {"num_words": r.choice([16, 20]), "relation": "less than"}),
        ("Answer with at least {n} words.", {"num_words": r.choice([25, 30]), "relation": "at least"})]),
    "startend:end_checker": lambda r: (
        "Finish your response with this exact phrase: {p}", {"end_phrase": r.choice(END_PHRASES)}),
    "punctuation:no_comma": lambda r: ("Do not use any commas in your response.", {}),
    "detectable_format:title": lambda r: (
        "Give your answer a title wrapped in double angular brackets, such as <<title>>.", {}),
    "startend:quotation": lambda r: ("Wrap your entire response with double quotation marks.", {}),
    "detectable_content:postscript": lambda r: (
        "At the end of your response, add a postscript starting with P.S.",
        {"postscript_marker": "P.S."}),
    "change_case:capital_word_frequency": lambda r: (
        "Use at least {n} words in all capital letters.",
        {"capital_frequency": r.choice([2, 3]), "capital_relation": "at least"}),
}
# Pairs a correct answer cannot satisfy together in a short response: never drawn together.
CONFLICTS = {frozenset({"length_constraints:number_words", "keywords:frequency"}),
             frozenset({"length_constraints:number_words", "detectable_content:postscript"})}


def _prompt(rng: random.Random, types: tuple = tuple(INSTRUCTIONS)) -> tuple[str, list[str], list[dict]]:
    """A prompt of 1-3 instructions drawn from `types` (all ten by default)."""
    topic = rng.choice(TOPICS)
    k = rng.choice([1, 2, 2, 3])
    ids: list[str] = []
    for iid in rng.sample(list(types), len(types)):
        if len(ids) == k:
            break
        if not any(frozenset({iid, j}) in CONFLICTS for j in ids):
            ids.append(iid)
    texts, kwargs = [], []
    for iid in ids:
        text, kw = INSTRUCTIONS[iid](rng)
        n = kw.get("num_words") or kw.get("frequency") or kw.get("capital_frequency")
        texts.append(text.format(k=(kw.get("keywords") or [kw.get("keyword")])[0], n=n,
                                 w=(kw.get("forbidden_words") or [""])[0],
                                 p=kw.get("end_phrase")))
        kwargs.append(kw)
    prompt = " ".join([rng.choice(ASKS).format(t=topic)] + texts)
    return prompt, ids, kwargs


def teacher_response(rng: random.Random, prompt: str, ids: list[str], kwargs: list[dict],
                     violate: str | None = None) -> str:
    """The scripted teacher: satisfies every instruction, except `violate` if one is named."""
    topic = next(t for t in TOPICS if f" the {t}." in prompt)
    kw = {i: k for i, k in zip(ids, kwargs)}
    ok = lambda iid: iid in kw and iid != violate  # noqa: E731  follow this one?
    forbidden = set(kw.get("keywords:forbidden_words", {}).get("forbidden_words", []))
    adjectives = [a for a in ADJECTIVES if a not in forbidden] if ok("keywords:forbidden_words") \
        else ADJECTIVES
    pool = [s for s in SENTENCES if "," not in s] if ok("punctuation:no_comma") else SENTENCES
    if violate == "punctuation:no_comma":
        pool = [s for s in SENTENCES if "," in s]
    body = [s.format(t=topic, a=rng.choice(adjectives)) for s in rng.sample(pool, 2)]
    if violate == "keywords:forbidden_words":
        body[0] = f"The {topic} is {next(iter(forbidden))}."
    if ok("keywords:existence"):
        body.insert(rng.randrange(len(body) + 1),
                    f"Think of {kw['keywords:existence']['keywords'][0]}.")
    if "keywords:frequency" in kw:
        f = kw["keywords:frequency"]
        times = f["frequency"] if ok("keywords:frequency") else f["frequency"] - 1
        body.append(" ".join(["I say"] + [f["keyword"]] * times) + ".")
    if "change_case:capital_word_frequency" in kw:
        n = kw["change_case:capital_word_frequency"]["capital_frequency"]
        n = n if ok("change_case:capital_word_frequency") else n - 1
        body.insert(0, " ".join(["VERY"] * (n - 1) + ["NICE"]) + ".")
    tail = []
    if ok("detectable_content:postscript"):
        tail.append(f"P.S. I hope you like the {topic}.")
    if ok("startend:end_checker"):
        tail.append(kw["startend:end_checker"]["end_phrase"])
    title = [f"<<The {topic.capitalize()}>>"] if ok("detectable_format:title") else []

    def render(body):
        text = "\n".join(title + [" ".join(body)] + tail)
        return f'"{text}"' if ok("startend:quotation") else text

    if "length_constraints:number_words" in kw:
        n, rel = kw["length_constraints:number_words"]["num_words"], \
            kw["length_constraints:number_words"]["relation"]
        want_long = (rel == "at least") == ok("length_constraints:number_words")
        if want_long:   # add sentences until the count reaches n
            while ifeval.count_words(render(body)) < n:
                body.append(rng.choice(pool).format(t=topic, a=rng.choice(adjectives)))
        else:           # keep only what must stay, then one short sentence
            keep = [s for s in body if s.startswith(("Think of", "I say", "VERY", "NICE"))]
            body = keep + [f"The {topic} is {rng.choice(adjectives)}."]
            while rel == "less than" and violate == "length_constraints:number_words" \
                    and ifeval.count_words(render(body)) < n:
                body.append(rng.choice(pool).format(t=topic, a=rng.choice(adjectives)))
    return render(body)


# ----------------------------------------------------------------------------------------------
# Variants of the world, for the reproduction (tools/reproduce.py)
# ----------------------------------------------------------------------------------------------

# "base": a teacher that ignores every instruction -- it only writes two sentences on the topic.
#   SFT on these rows makes the shared *base* student: it speaks the toy language and the chat
#   format but follows instructions about as poorly as chance, as a pretrained model does before
#   post-training.
# "flawed": the scripted teacher with one systematic flaw: asked for no commas, it always uses
#   commas (FLAW). Does a method inherit the teacher's flaw, or does the verifier undo it?
# "holdout": training rows never combine the instructions of a HELD_OUT pair; the evaluation
#   rows that do measure out-of-domain generalisation (composing what was learned apart).
FLAW = "punctuation:no_comma"
HELD_OUT = [frozenset({"detectable_format:title", "startend:quotation"}),
            frozenset({"punctuation:no_comma", "startend:end_checker"}),
            frozenset({"keywords:existence", "detectable_content:postscript"})]


def is_held_out(ids) -> bool:
    return any(pair <= set(ids) for pair in HELD_OUT)


EVAL_SEED, VALIDATION_SEED = 1_000_003, 2_000_006   # the held-out streams: seed + offset
HELD_BACK = 1000   # per seed: evaluation and validation prompts that no training set may contain
TEACHER_ACCURACY = 0.65   # the world's own teacher: its draws fix every split's prompts


def make_rows(n: int, seed: int, teacher_accuracy: float = TEACHER_ACCURACY,
              exclude: set | frozenset | None = None, split: str = "train",
              variant: str = "", types: tuple = tuple(INSTRUCTIONS)) -> list[dict]:
    """n normalised rows; deterministic in (n, seed, teacher_accuracy, variant, types). `exclude`:
    prompts to skip. `variant`: "" (the scripted teacher), "base", "flawed", "holdout" (above).
    `types`: the instructions prompts draw from (the shifted worlds' RL prompts: their family R).
    Prompts and the teacher draw from two random streams, so that a seed's prompts come in the
    same order whatever the teacher does (its held-out prompts are then known in advance)."""
    prompts, teacher = random.Random(seed), random.Random(f"teacher-{seed}")
    rows, seen = [], set(exclude or ())
    while len(rows) < n:
        prompt, ids, kwargs = _prompt(prompts, types)
        if prompt in seen or (variant == "holdout" and split == "train" and is_held_out(ids)):
            continue
        seen.add(prompt)
        correct = teacher.random() < teacher_accuracy
        violate = None if correct else teacher.choice(ids)
        if variant == "flawed" and FLAW in ids:
            violate = FLAW
        if variant == "base":   # the topic only: no instruction is followed on purpose
            rows.append({"prompt": prompt, "response": teacher_response(teacher, prompt, [], []),
                         "instruction_id_list": ids, "kwargs": kwargs,
                         "key": f"toy-base-{split}-{seed}-{len(rows)}"})
            continue
        response = teacher_response(teacher, prompt, ids, kwargs, violate)
        r = ifeval.reward(response, ids, kwargs, prompt)
        if violate is None and r != 1.0:  # a correct teacher answer must pass: else a bug
            raise AssertionError(f"toy teacher bug: reward {r} for {prompt!r} -> {response!r}")
        if violate is not None and r == 1.0:
            continue  # the violation happened to be undone (e.g. "I" counts as a capital word)
        rows.append({"prompt": prompt, "response": response, "instruction_id_list": ids,
                     "kwargs": kwargs, "key": f"toy-{split}-{seed}-{len(rows)}"})
    return rows


@functools.lru_cache(maxsize=16)
def _evaluation_prompts(seed: int) -> frozenset:
    """The first HELD_BACK evaluation prompts of the seed, for either evaluation teacher."""
    return frozenset(r["prompt"] for v in ("", "flawed")
                     for r in make_rows(HELD_BACK, seed + EVAL_SEED, TEACHER_ACCURACY, split="eval",
                                        variant=v))


@functools.lru_cache(maxsize=16)
def held_back(seed: int) -> frozenset:
    """Every prompt an evaluation or validation set of this seed can hold: no training set of
    any variant contains one (a prompt seen in training scores far higher when evaluated)."""
    validation = validation_rows(seed, HELD_BACK)
    return _evaluation_prompts(seed) | {r["prompt"] for r in validation}


def train_eval_rows(seed: int = 0, n_train: int = 2000, n_eval: int = 100,
                    teacher_accuracy: float = TEACHER_ACCURACY,
                    variant: str = "") -> tuple[list[dict], list[dict]]:
    """Training rows of the variant, and the seed's first n_eval evaluation rows (the flawed
    teacher's for "flawed"; evaluation rows never leave out held-out combinations: that is what
    they measure). No training prompt is a held-back one (`held_back`). Another teacher accuracy
    answers the same prompts (`reanswer`)."""
    if n_eval > HELD_BACK:
        raise ValueError(f"toy world: at most {HELD_BACK} evaluation prompts per seed")
    evals = make_rows(n_eval, seed + EVAL_SEED, TEACHER_ACCURACY, split="eval",
                      variant="flawed" if variant == "flawed" else "")
    train = make_rows(n_train, seed, TEACHER_ACCURACY, exclude=held_back(seed), split="train",
                      variant=variant)
    if teacher_accuracy != TEACHER_ACCURACY and variant != "base":
        evals = reanswer(evals, f"eval-{seed}", teacher_accuracy, variant)
        train = reanswer(train, f"train-{seed}", teacher_accuracy, variant)
    return train, evals


def validation_rows(seed: int = 0, n: int = 200, teacher_accuracy: float = TEACHER_ACCURACY) -> list[dict]:
    """A third split, disjoint from every training and evaluation prompt of the seed: for
    choosing settings (each method's learning rate) without looking at the evaluation prompts."""
    if n > HELD_BACK:
        raise ValueError(f"toy world: at most {HELD_BACK} validation prompts per seed")
    rows = make_rows(n, seed + VALIDATION_SEED, TEACHER_ACCURACY, split="validation",
                     exclude=_evaluation_prompts(seed))
    if teacher_accuracy != TEACHER_ACCURACY:
        rows = reanswer(rows, f"validation-{seed}", teacher_accuracy)
    return rows


def reanswer(rows: list[dict], stream: str, teacher_accuracy: float, variant: str = "") -> list[dict]:
    """The same rows answered by a teacher of another accuracy: only the teacher changes.

    Why not make_rows with that accuracy: make_rows skips a prompt whose violating answer the
    checker happens to pass, so its prompts depend on the teacher's draws, and a stronger teacher
    would also change what the student trains and is evaluated on (and the GRPO runs, which
    never read an answer, would differ). Here each prompt stays; a wrong answer violates the
    instructions in a random order until one violation sticks (if none does, the answer is right:
    the measured accuracy is then a little above the setting). The flawed teacher still always
    breaks FLAW."""
    rng, out = random.Random(f"reanswer-{stream}-{teacher_accuracy}"), []
    for row in rows:
        prompt, ids, kwargs = row["prompt"], row["instruction_id_list"], row["kwargs"]
        wrong = rng.random() >= teacher_accuracy
        tries = rng.sample(ids, len(ids)) if wrong else []
        if variant == "flawed" and FLAW in ids:
            tries = [FLAW] + [i for i in tries if i != FLAW]
        response = None
        for violate in tries:
            response = teacher_response(rng, prompt, ids, kwargs, violate)
            if ifeval.reward(response, ids, kwargs, prompt) < 1.0:
                break
            response = None
        if response is None:
            response = teacher_response(rng, prompt, ids, kwargs)
        out.append(dict(row, response=response))
    return out


# ----------------------------------------------------------------------------------------------
# The shifted worlds: demonstrations teach every instruction, RL prompts ask for some of them
# ----------------------------------------------------------------------------------------------

# Real pipelines' SFT sets teach skills their RL prompts never ask for; the paper's argument is
# that SFT-then-RL lets the policy drift away from them, and one objective per step keeps it near
# the demonstrations. In these worlds the demonstrations are the ordinary training rows (every
# type, the 0.65 teacher) and the RL prompts are a second stream of their own (RL_SEED) whose
# instructions all lie in the family R; D, the other types, only the demonstrations teach.
#   "shifted":           R = the five below; number_words in R pushes every answer's length
#   "shifted-nolength":  number_words moved to D, so that no RL instruction pushes length
#   "unshifted":         R = every type (the control: the same stream, no shift)
R_FAMILY = ("punctuation:no_comma", "startend:quotation", "length_constraints:number_words",
            "detectable_format:title", "keywords:forbidden_words")
SHIFTS = {"shifted": R_FAMILY,
          "shifted-nolength": tuple(t for t in R_FAMILY if t != "length_constraints:number_words"),
          "unshifted": tuple(INSTRUCTIONS)}
RL_SEED = 3_000_009   # the RL prompts' stream: seed + offset


def rl_rows(seed: int, n: int, shift: str) -> list[dict]:
    """The RL prompts of a shifted world (with the teacher's answers: L_ADV's references), none
    of them a held-back prompt of the seed."""
    return make_rows(n, seed + RL_SEED, TEACHER_ACCURACY, exclude=held_back(seed), split="rl",
                     types=SHIFTS[shift])


def family(ids, shift: str) -> str:
    """'R-only', 'D-only' or 'mixed': which families a prompt's instructions come from."""
    in_r = [i in SHIFTS[shift] for i in ids]
    return "R-only" if all(in_r) else "D-only" if not any(in_r) else "mixed"


# ----------------------------------------------------------------------------------------------
# Tokenizer and model
# ----------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen's chat format, without Qwen3's <think> block (the toy model never thinks). Extra template
# variables such as enable_thinking=False are accepted and ignored.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def corpus() -> tuple[str, ...]:
    """The texts the toy tokenizer learns its pieces from: prompts and answers of a world of its
    own (seed 12345, no split of any experiment)."""
    rows = make_rows(3000, seed=12345, teacher_accuracy=0.5, split="tokenizer")
    return tuple([r["prompt"] for r in rows] + [r["response"] for r in rows])


@functools.lru_cache(maxsize=4)
def _bpe_json(vocab_size: int, texts: tuple[str, ...] | None = None, digits: bool = False) -> str:
    """Train the BPE once per process and corpus (about 2 s); callers get fresh tokenizer objects."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if digits:           # every digit its own piece: arithmetic digit by digit, not by lookup
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     tok.pre_tokenizer])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts or corpus()) + ["<|im_start|>user\n", "<|im_start|>assistant\n"],
                            trainer)
    return tok.to_str()


def build_tokenizer(vocab_size: int = 768, texts: tuple[str, ...] | None = None, digits: bool = False):
    """Byte-level BPE trained on a task's toy texts (default: this world's, `corpus`), numbers
    split into digits if asked: deterministic, lossless on any text."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe_json(vocab_size, texts, digits))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0, hidden_size: int = 128, layers: int = 4):
    """A tiny Qwen3ForCausalLM (about 0.88 M parameters) with tied embeddings, random init."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=3 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=hidden_size // 4, max_position_embeddings=512, tie_word_embeddings=True,
        rope_theta=10000.0, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
