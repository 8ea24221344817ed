"""Worlds for tests: the hub-format files of tools/worlds.py, and replayed rollouts."""

import torch

import data
import rollouts
from tools.worlds import (  # noqa: F401
    CFG,
    write_argilla_rows,
    write_ifeval_rows,
    write_polar_checkpoint,
    write_polar_tokenizer,
    write_qwen3_policy,
)

# ----------------------------------------------------------------------------------------------
# Rollouts that do not depend on sampling: the same completions on every rank and in every run
# ----------------------------------------------------------------------------------------------

class Replay:
    """An engine that 'samples' fixed completions (`replay_texts`), so that every loss term has a
    gradient and every run of a test sees the same rollouts."""
    name = "replay"

    def __init__(self, texts_by_key: dict):
        self.texts_by_key = texts_by_key

    def generate(self, model, tokenizer, rows, num_generations, *, max_new_tokens=10, **_):
        texts = [t for r in rows for t in self.texts_by_key[r["key"]][:num_generations]]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_new_tokens - 1]
               + [tokenizer.eos_token_id] for t in texts]
        width = max(map(len, ids))
        completion = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        prompt_ids, prompt_mask = data.encode_prompts(tokenizer, [r["prompt"] for r in rows])
        return rollouts.make_rollouts(tokenizer, rows, num_generations,
                                      prompt_ids.repeat_interleave(num_generations, 0),
                                      prompt_mask.repeat_interleave(num_generations, 0), completion,
                                      [tokenizer.eos_token_id], torch.zeros(completion.shape))


def replay_texts(rows: list[dict]) -> dict:
    """For each row, completions whose rewards and discriminator scores differ: the teacher's
    answer, its first half, another prompt's answer, and a few words."""
    return {r["key"]: [r["response"], r["response"][: len(r["response"]) // 2],
                       rows[(i + 1) % len(rows)]["response"], "The cat is calm."]
            for i, r in enumerate(rows)}
