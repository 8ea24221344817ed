"""Data: the one normalised row, its sources and validation, chat templating, batches, mixed batches.

The idea
--------
UniAPL learns from *mixed batches* (PAPER.md): in every optimizer step some rows are used as
demonstrations (prompt + teacher response -> L_SFT) and some as RL prompts (prompt + verifiable
instructions -> rollouts -> L_GRPO, and the teacher response as the discriminator's reference ->
L_ADV). One normalised row serves all three:

    {"prompt": str, "response": str | None, "instruction_id_list": [str, ...],
     "kwargs": [dict, ...], "key": str | int}

Every source is converted into it at load time and validated; a bad row stops the run with an
error naming the source, the row (index and key) and the field. Nothing is dropped silently: with
`skip_invalid=True` bad rows are skipped *and counted*, and the count and reasons are printed.

Sources: `toy` and its variants `toy:base|flawed|holdout|validation` and the shifted
worlds `toy:shifted|shifted-nolength|unshifted` (toy.py), `google/IFEval`
(evaluation; no responses), `argilla/ifeval-like-data`
(config `filtered`: Qwen2.5-72B-Instruct responses that pass the checks; `kwargs` is a JSON string
in the current revision, a list of structs in older ones -- both accepted), any other hub dataset
with these columns, and local `.jsonl` / `.json` / `.parquet` files in the normalised schema.

Batches
-------
* Prompts are rendered with the tokenizer's chat template (`enable_thinking=False`, so Qwen3
  starts its answer with an empty think block instead of reasoning), then left-padded for
  generation. Position ids are derived from the attention mask wherever the model is called, so
  left padding does not shift positions (see logprobs.sequence_logprobs).
* Demonstrations are teacher-forced: [prompt | response | EOS], right-padded, with a mask that
  selects response and EOS tokens only: prompt tokens never reach the LM head.
* `MixedSampler` draws, per step, `sft_batch_size` demonstrations and `rl_batch_size` RL prompts
  from two independently shuffled streams (epoch-wise permutations of a seeded generator); its
  position is part of every checkpoint, so a resumed run sees exactly the batches it would have.
  Under torchrun every rank draws the same global batch and keeps its share (`MixedBatch.shard`).
* Over-long prompts are left out, counted and printed (never truncated: that could cut the
  instructions off); `--strict-prompt-length` makes the first one an error instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass

import torch

import ifeval


class DataError(ValueError):
    """A row or a dataset that cannot be used; the message names source, row, key and field."""


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _where(source: str, index: int, row) -> str:
    key = row.get("key", "?") if isinstance(row, dict) else "?"
    return f"{source}: row {index} (key {key!r})"


def normalise_row(row: dict, source: str, index: int, task=ifeval) -> dict:
    """Convert one raw row of any supported source into the normalised row, or raise DataError:
    prompt, response and key here, the task's own fields by the task (tasks.py)."""
    where = _where(source, index, row)
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    row = dict(row)
    if "prompt" not in row and "question" in row:   # GSM8K's hub format names its prompt so
        row["prompt"] = row["question"]
    if row.get("prompt") is None:
        raise DataError(f"{where}: missing field 'prompt'")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise DataError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise DataError(f"{where}: field 'prompt' is empty")
    try:
        fields = task.normalise(row)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    response = fields.pop("response", row.get("response"))
    if response is not None and not isinstance(response, str):
        raise DataError(f"{where}: field 'response' must be a string or null, "
                        f"got {type(response).__name__}")
    key = row.get("key", f"{source}-{index}")
    if hasattr(key, "item"):   # numpy integers from parquet
        key = key.item()
    return {"prompt": prompt, "response": response, **fields, "key": key}


def validate_rows(raw: list, source: str, *, skip_invalid: bool = False, task=ifeval) -> list[dict]:
    """Normalise every row. By default the first bad row raises; skip_invalid counts and reports."""
    if len(raw) == 0:
        raise DataError(f"{source}: the dataset is empty")
    rows, skipped = [], []
    for i, r in enumerate(raw):
        try:
            rows.append(normalise_row(r, source, i, task))
        except DataError as e:
            if not skip_invalid:
                raise
            skipped.append(str(e))
    if skipped:
        print(f"[data] {source}: skipped {len(skipped)} of {len(raw)} invalid rows "
              f"(--skip-invalid-rows). First reasons:", file=sys.stderr)
        for msg in skipped[:5]:
            print(f"    {msg}", file=sys.stderr)
    if not rows:
        raise DataError(f"{source}: no valid rows left ({len(skipped)} invalid)")
    return rows


def require_responses(rows: list[dict], source: str, method: str) -> list[dict]:
    """Rows with a teacher response; an error if the method needs them and there are none."""
    demos = [r for r in rows if r["response"] and r["response"].strip()]
    if not demos:
        raise DataError(f"{source}: method {method!r} needs teacher responses (field 'response'), "
                        f"but none of its {len(rows)} rows has one. Generate them with "
                        f"`python eval.py --model TEACHER --dataset {source} --write-verified demos.jsonl`.")
    return demos


def check_prompt_lengths(rows: list[dict], tokenizer, max_prompt_length: int, source: str, *,
                         strict: bool = False) -> list[dict]:
    """Rows whose chat-templated prompt fits; over-long ones are left out and counted.

    A prompt is never truncated (that could cut its instructions off). By default an over-long
    prompt is left out and the count and the first few are printed -- one long prompt should not
    stop a 56,339-row run; `strict=True` (--strict-prompt-length) makes the first one an error.
    """
    kept, too_long = [], []
    for i, row in enumerate(rows):
        n = len(tokenizer(chat_prompt(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"])
        if n <= max_prompt_length:
            kept.append(row)
            continue
        msg = (f"{_where(source, i, row)}: field 'prompt' is {n} tokens after the chat template, "
               f"over --max-prompt-length {max_prompt_length}")
        if strict:
            raise DataError(msg)
        too_long.append(msg)
    if too_long:
        print(f"[data] {source}: left out {len(too_long)} of {len(rows)} rows whose prompt is over "
              f"--max-prompt-length {max_prompt_length} (--strict-prompt-length stops instead):",
              file=sys.stderr)
        for msg in too_long[:3]:
            print(f"    {msg}", file=sys.stderr)
    if not kept:
        raise DataError(f"{source}: every prompt is over --max-prompt-length {max_prompt_length}")
    return kept


def training_pools(rows: list[dict], source: str, method: str, pool_split: str, *,
                   needs_demos: bool, rl_needs_reference: bool,
                   rl_rows: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(demonstrations, RL prompts) for the mixed sampler; rows without what a pool needs are
    left out with a message (never silently). `rl_rows`: a source's own RL prompts (the shifted
    toy worlds); otherwise both pools come from `rows`."""
    demos, prompts = rows, rows if rl_rows is None else rl_rows    # pool_split "shared" (the default)
    if pool_split == "disjoint":
        if rl_rows is not None:
            raise DataError(f"{source}: its RL prompts are a stream of their own; --pool-split "
                            "disjoint has nothing to split")
        demos, prompts = rows[:len(rows) // 2], rows[len(rows) // 2:]
    demos = require_responses(demos, source, method) if needs_demos else []
    if rl_needs_reference:
        # L_ADV compares each rollout with the teacher's answer to its prompt: RL prompts need one.
        with_ref = require_responses(prompts, source, method)
        if len(with_ref) < len(prompts):
            print(f"[data] {len(prompts) - len(with_ref)} of {len(prompts)} RL prompts have no teacher "
                  "response (the discriminator's reference) and are not used as RL prompts")
        prompts = with_ref
    return demos, prompts


def training_data(s, objective, tokenizer, task=ifeval) -> tuple[MixedSampler, list[dict]]:
    """What a run reads, from its settings `s`: the mixed sampler over the training rows (the
    demonstrations and the RL prompts, each pool only where the objective `objective` uses it;
    a toy world's own RL prompts where it has them) and the evaluation rows."""
    load = dict(skip_invalid=s.skip_invalid_rows, toy_seed=s.seed, teacher_accuracy=s.teacher_accuracy,
                toy_eval_n=s.toy_eval_size, task=task)
    rows = check_prompt_lengths(load_rows(s.dataset, "train", **load), tokenizer, s.max_prompt_length,
                                s.dataset, strict=s.strict_prompt_length)
    eval_rows = load_rows(s.eval_dataset, evaluation_split(s.eval_dataset, task), **load)[:s.eval_limit]
    demos, prompts = training_pools(
        rows, s.dataset, s.method, s.pool_split, needs_demos=objective.needs_demos,
        rl_needs_reference=objective.uses_discriminator and objective.rollouts_on == "rl",
        rl_rows=load_rows(s.dataset, "rl", **load) if s.dataset.startswith("toy:") else None)
    sampler = MixedSampler(demos, prompts, s.sft_batch_size if objective.uses_sft else 0,
                           s.rl_batch_size if objective.rollouts_on == "rl" else 0, s.seed)
    return sampler, eval_rows


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

def _read_local(path: str) -> list:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {line_no} is not valid JSON ({e})") from None
        return rows
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json dataset must hold a list of rows")
        return data
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None
    raise DataError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")


def _load_hub(spec: str, split: str) -> list:
    name, _, config = spec.partition(":")
    try:
        import datasets
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown id, gated: all surface here
        raise DataError(
            f"could not load dataset {spec!r} (split {split!r}) from the Hugging Face hub: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Without network use "
            f"a local .jsonl/.parquet file, or --dataset toy.") from None
    return list(ds)


def load_rows(spec: str, split: str = "train", *, skip_invalid: bool = False,
              toy_seed: int = 0, toy_n: int = 2000, teacher_accuracy: float = 0.65,
              toy_eval_n: int = 100, task=ifeval) -> list[dict] | None:
    """Rows from `toy[:variant]` (the task's toy world), a local file, or a hub dataset `id` /
    `id:config`, normalised and validated. IFEval's toy variants (toy.py): base, flawed, holdout,
    validation (a third split), and the shifted worlds (shifted, shifted-nolength, unshifted),
    whose split "rl" is their stream of RL prompts (None for a world without one)."""
    if spec == "toy" or spec.startswith("toy:"):
        try:
            raw = task.toy_rows(spec.partition(":")[2], split, toy_seed, toy_n, toy_eval_n, teacher_accuracy)
        except ValueError as e:
            raise DataError(f"{spec}: {e}") from None
        if raw is None:
            return None
    elif os.path.splitext(spec)[1] in (".jsonl", ".json", ".parquet"):
        raw = _read_local(spec)
    else:
        if spec.startswith("argilla/ifeval-like-data") and ":" not in spec:
            spec += ":filtered"   # the verified subset is the one this project trains on
        raw = _load_hub(spec, split)
    return validate_rows(raw, spec, skip_invalid=skip_invalid, task=task)


def evaluation_split(spec: str, task=ifeval) -> str:
    """The split evaluation reads: the toy world's own evaluation rows; the task's EVAL_SPLIT of
    a hub dataset or file ("train" if it names none: google/IFEval has only that one)."""
    return "eval" if spec == "toy" or spec.startswith("toy:") else getattr(task, "EVAL_SPLIT", "train")


def write_jsonl(rows: list[dict], path: str) -> None:
    """Write rows atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Chat templating and batches
# ----------------------------------------------------------------------------------------------

def chat_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: one user turn, then the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; this project needs an instruct model's "
                        "tokenizer (e.g. Qwen/Qwen3-0.6B) or --model toy")
    # enable_thinking=False: Qwen3 opens its answer with an empty <think></think> block instead of
    # reasoning first; templates that do not use the variable ignore it.
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)


def encode_prompts(tokenizer, prompts: list[str], min_width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated, left-padded prompt batch: input_ids [B, P], attention_mask [B, P], with
    P = max(longest prompt, min_width) (a fixed width keeps a static KV cache one shape)."""
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(min_width, *(len(x) for x in ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])       # [B, P]
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])   # [B, P]
    return input_ids, mask


@dataclass
class DemoBatch:
    input_ids: torch.Tensor       # [B, T]  prompt | response | EOS | pad
    attention_mask: torch.Tensor  # [B, T]
    score_mask: torch.Tensor      # [B, T]  True on response and EOS tokens (the SFT targets)
    cut: torch.Tensor             # [B]     bool: the response was cut at max_response_length

    @property
    def truncated(self) -> int:
        return int(self.cut.sum())

    def select(self, rows: slice) -> DemoBatch:
        """Demonstrations `rows` (a micro-batch), without columns that are padding in all of them."""
        width = int(self.attention_mask[rows].sum(1).max())
        return DemoBatch(self.input_ids[rows, :width], self.attention_mask[rows, :width],
                         self.score_mask[rows, :width], self.cut[rows])


def demo_batch(tokenizer, rows: list[dict], max_response_length: int) -> DemoBatch:
    """Teacher-forced batch for L_SFT; only response tokens (and the closing EOS) are scored."""
    seqs, masks, cut = [], [], []
    for row in rows:
        p = tokenizer(chat_prompt(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
        r = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        cut.append(len(r) > max_response_length)
        r = r[:max_response_length]
        seqs.append(p + r)
        masks.append([False] * len(p) + [True] * len(r))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    return DemoBatch(
        input_ids=torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
        attention_mask=torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
        score_mask=torch.tensor([m + [False] * (width - len(m)) for m in masks]),
        cut=torch.tensor(cut, dtype=torch.bool))


@dataclass
class MixedBatch:
    demos: list[dict]     # rows used as demonstrations (L_SFT; a-sft also rolls them out)
    prompts: list[dict]   # RL prompts, each rolled out G times (L_GRPO, L_ADV)

    def shard(self, rank: int, world_size: int) -> MixedBatch:
        """This rank's contiguous share of each list (whole prompts: their G rollouts stay
        together). Every rank draws the same global batch from the same sampler state."""
        def part(rows):
            if len(rows) % world_size:
                raise DataError(f"a batch of {len(rows)} rows cannot be split over {world_size} "
                                "processes: make --sft-batch-size and --rl-batch-size multiples")
            n = len(rows) // world_size
            return rows[rank * n:(rank + 1) * n]
        return MixedBatch(part(self.demos), part(self.prompts))


class MixedSampler:
    """Per step: `sft_batch_size` demonstrations and `rl_batch_size` RL prompts.

    Each pool is read in epoch-wise seeded permutations; (epoch, position) of both streams is the
    whole state, saved in checkpoints so that resuming continues with the very next rows.
    """

    def __init__(self, demos: list[dict], prompts: list[dict], sft_batch_size: int,
                 rl_batch_size: int, seed: int):
        self.pools = {"sft": demos, "rl": prompts}
        self.sizes = {"sft": sft_batch_size, "rl": rl_batch_size}
        for name in self.pools:
            if self.sizes[name] and not self.pools[name]:
                raise DataError(f"mixed batches: the {name} pool is empty but its batch size is "
                                f"{self.sizes[name]}")
        self.seed = seed
        self.state = {name: {"epoch": 0, "pos": 0} for name in self.pools}
        self._orders: dict[str, tuple[int, list[int]]] = {}   # name -> (epoch, its permutation)

    def _order(self, name: str, epoch: int) -> list[int]:
        """The epoch's permutation; shuffled once per epoch, not once per row drawn."""
        if self._orders.get(name, (None,))[0] != epoch:
            order = list(range(len(self.pools[name])))
            random.Random(f"{self.seed}-{name}-{epoch}").shuffle(order)
            self._orders[name] = (epoch, order)
        return self._orders[name][1]

    def _take(self, name: str) -> list[dict]:
        out, st = [], self.state[name]
        while len(out) < self.sizes[name]:
            order = self._order(name, st["epoch"])
            out.append(self.pools[name][order[st["pos"]]])
            st["pos"] += 1
            if st["pos"] == len(order):
                st["epoch"], st["pos"] = st["epoch"] + 1, 0
        return out

    def next(self) -> MixedBatch:
        return MixedBatch(self._take("sft"), self._take("rl"))

    def state_dict(self) -> dict:
        return json.loads(json.dumps(self.state))

    def load_state_dict(self, state: dict) -> None:
        self.state = json.loads(json.dumps(state))


# ----------------------------------------------------------------------------------------------
# CLI: convert a source to JSONL (teacher demonstrations: `python eval.py --write-verified`)
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="Convert any supported source to normalised JSONL.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="any supported source -> normalised JSONL")
    c.add_argument("--dataset", required=True)
    c.add_argument("--split", default="train")
    c.add_argument("--out", required=True)
    c.add_argument("--skip-invalid-rows", action="store_true")
    args = p.parse_args(argv)
    rows = load_rows(args.dataset, args.split, skip_invalid=args.skip_invalid_rows)
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
