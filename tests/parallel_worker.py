"""Run by torchrun from tests/test_parallel.py: one unified step on N ranks against one process.

    torchrun --standalone --nproc_per_node 2 tests/parallel_worker.py OUT.json

For sft, grpo and uniapl, with and without FSDP2: the same global batch and the same rollouts
(replayed, since ranks would otherwise sample their own), plain SGD (so the update is the
gradient itself) and gradient clipping on. Rank 0 writes, per case, the relative difference of
the N-rank update from the one-process update, and the two losses.
"""

import copy
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import data  # noqa: E402
import parallel  # noqa: E402
import settings  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402
import uniapl  # noqa: E402
from discriminator import Lexical  # noqa: E402
from tests.worlds import Replay, replay_texts  # noqa: E402


def flat(model) -> torch.Tensor:
    return torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1)
                      for p in model.parameters()])


def main(out_path: str) -> None:
    ctx = parallel.setup("cpu")
    tok = toy.build_tokenizer()
    rows, _ = toy.train_eval_rows(0, n_train=40, n_eval=1)
    batch = data.MixedBatch(demos=rows[:4], prompts=rows[4:8])
    G = 4
    base = toy.build_model(tok, seed=0)
    replay = Replay(replay_texts(rows))
    step = settings.Settings.for_world("toy", num_generations=G, temperature=1.0,
                                       max_completion_length=40, logprobs_backend="torch",
                                       precision="fp32", max_grad_norm=1e9)
    # (method, aggregation, max grad norm, activation checkpointing, micro-batch size of the
    # N-rank run): the real run uses FSDP2 and checkpointing together, so they are tested together
    cases = [(m, lt, 1e9, False, None, "group") for m in ("sft", "grpo", "uniapl")
             for lt in ("token", "sequence") if not (m == "sft" and lt == "sequence")]
    cases += [("uniapl", "token", 0.5, False, None, "group"),       # the clip binds
              ("uniapl", "token", 1e9, True, None, "group"),        # activation checkpointing
              ("uniapl", "sequence", 1e9, False, 3, "group"),       # 3 rollouts / demos per backward
              ("uniapl", "token", 1e9, False, None, "batch")]       # c over every rank's rollouts
    results = {}
    for fsdp in (False, True):
        for method, loss_type, max_norm, checkpointing, micro, norm in cases:
            s = dataclasses.replace(step, method=method, loss_type=loss_type, max_grad_norm=max_norm,
                                    adv_coef_norm=norm)
            objective = uniapl.objective(s)
            single, multi = copy.deepcopy(base), copy.deepcopy(base)
            if checkpointing:
                for m in (single, multi):
                    m.train()
                    parallel.enable_activation_checkpointing(m)
            ctx.fsdp = fsdp
            if fsdp:
                parallel.shard(multi, ctx)
            out = {}
            for name, model, c, b, mb in ((("one", single, None, batch, None)),
                                          ("many", multi, ctx, batch.shard(ctx.rank, ctx.world_size), micro)):
                before = flat(model)
                opt = torch.optim.SGD(model.parameters(), lr=1.0)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
                run = train.Run(tok, objective, opt, sched, replay, Lexical(), ctx=c or parallel.Context())
                m, _ = train.unified_step(model, b, dataclasses.replace(s, micro_batch_size=mb), run)
                out[name] = (flat(model) - before, m)
            d1, m1 = out["one"]
            dn, mn = out["many"]
            tag = ("-clipped" if max_norm < 1e9 else "") + ("-checkpointed" if checkpointing else "") \
                + (f"-micro{micro}" if micro else "") + ("-batchnorm" if norm == "batch" else "")
            results[f"{method}-{loss_type}{tag}-{'fsdp' if fsdp else 'dp'}"] = {
                "rel_update_diff": float((dn - d1).norm() / d1.norm()),
                "update_norm": float(d1.norm()),
                "loss_one": m1["loss"], "loss_many": mn["loss"],
                "grad_norm_one": m1["grad_norm"], "grad_norm_many": mn["grad_norm"]}
    if ctx.is_main:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    parallel.shutdown()
