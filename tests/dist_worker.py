"""Run by torchrun from tests/test_dist.py: one unified step on N ranks against one process.

    torchrun --standalone --nproc_per_node 2 tests/dist_worker.py OUT.json

For sft, grpo and uniapl, with and without FSDP2: the same global batch and the same rollouts
(replayed, since ranks would otherwise sample their own), plain SGD (so the update is the
gradient itself) and gradient clipping on. Rank 0 writes, per case, the relative difference of
the N-rank update from the one-process update, and the two losses.
"""

import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import data  # noqa: E402
import dist  # noqa: E402
import rollouts  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402
import uniapl  # noqa: E402
from discriminator import Lexical  # noqa: E402


class Replay:
    """An engine that 'samples' fixed completions: for each prompt, G texts whose rewards and
    discriminator scores differ (the teacher's answer, shortened, another prompt's answer, and
    a few words), so that every loss term has a gradient."""
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
        return rollouts._rollouts(tokenizer, rows, num_generations,
                                  prompt_ids.repeat_interleave(num_generations, 0),
                                  prompt_mask.repeat_interleave(num_generations, 0), completion,
                                  [tokenizer.eos_token_id], torch.zeros(completion.shape))


def flat(model) -> torch.Tensor:
    return torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1)
                      for p in model.parameters()])


def main(out_path: str) -> None:
    ctx = dist.setup("cpu")
    tok = toy.build_tokenizer()
    rows, _ = toy.train_eval_rows(0, n_train=40, n_eval=1)
    batch = data.MixedBatch(demos=rows[:4], prompts=rows[4:8])
    G = 4
    base = toy.build_model(tok, seed=0)
    replay = Replay({r["key"]: [r["response"], r["response"][: len(r["response"]) // 2],
                                rows[(i + 1) % len(rows)]["response"], "The cat is calm."]
                     for i, r in enumerate(rows)})
    step = train.StepSettings(num_generations=G, temperature=1.0, max_completion_length=40,
                              epsilon=0.2, epsilon_high=0.2, beta=0.0, loss_type="token",
                              scale_rewards="group", mask_truncated=False, num_iterations=1,
                              max_grad_norm=1e9, logprobs_backend="torch", precision="fp32")
    cases = [(m, lt, 1e9) for m in ("sft", "grpo", "uniapl") for lt in ("token", "sequence")
             if not (m == "sft" and lt == "sequence")] + [("uniapl", "token", 0.5)]   # clipped
    results = {}
    for fsdp in (False, True):
        for method, loss_type, max_norm in cases:
                objective = uniapl.resolve(method)
                s = copy.copy(step)
                s.loss_type, s.max_grad_norm = loss_type, max_norm
                single, multi = copy.deepcopy(base), copy.deepcopy(base)
                ctx.fsdp = fsdp
                if fsdp:
                    dist.shard(multi, ctx)
                out = {}
                for name, model, c, b in ((("one", single, None, batch)),
                                          ("many", multi, ctx, batch.shard(ctx.rank, ctx.world_size))):
                    before = flat(model)
                    opt = torch.optim.SGD(model.parameters(), lr=1.0)
                    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
                    m = train.unified_step(model, tok, b, objective, s, opt, sched, Lexical(),
                                           None, step=0, engine=replay, ctx=c)
                    out[name] = (flat(model) - before, m)
                d1, m1 = out["one"]
                dn, mn = out["many"]
                clipped = "-clipped" if max_norm < 1e9 else ""
                results[f"{method}-{loss_type}{clipped}-{'fsdp' if fsdp else 'dp'}"] = {
                    "rel_update_diff": float((dn - d1).norm() / d1.norm()),
                    "update_norm": float(d1.norm()),
                    "loss_one": m1["loss"], "loss_many": mn["loss"],
                    "grad_norm_one": m1["grad_norm"], "grad_norm_many": mn["grad_norm"]}
    if ctx.is_main:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    dist.shutdown()
