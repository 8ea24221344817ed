"""The real run, rehearsed on the CPU: `python train.py --model <a Qwen3 directory>` end to end.

Everything the real run reads is written in the hub's formats (tests/worlds.py): a Qwen3-format
policy directory (from_pretrained leaves it in eval mode; two stop ids; shipped sampling
defaults), google/IFEval rows with null kwargs, argilla rows with JSON-string kwargs, a POLAR-format
discriminator. The run uses the real world's defaults (gradient checkpointing, POLAR, evaluation
length, lr, ...) scaled down in batch and length, under bf16 autocast on the CPU (--precision bf16),
so that the GPU's numerics are exercised here.
"""

import json
import os

import pytest
import torch

import logprobs
import parallel
import toy
import train
from tests import worlds
from tests.test_logprobs import reference

SMALL = ["--steps", "2", "--rl-batch-size", "2", "--num-generations", "2", "--sft-batch-size", "2",
         "--max-completion-length", "16", "--eval-limit", "3", "--eval-max-new-tokens", "24",
         "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("real_world")
    worlds.write_qwen3_policy(d / "policy", hidden=64, layers=4)
    worlds.write_polar_checkpoint(d / "polar", fmt="bin")
    rows, evals = toy.train_eval_rows(0, n_train=40, n_eval=6)
    worlds.write_argilla_rows(d / "train.jsonl", rows)
    worlds.write_ifeval_rows(d / "eval.jsonl", evals)
    return d


def real_args(world, out, *extra):
    return ["--model", str(world / "policy"), "--dataset", str(world / "train.jsonl"),
            "--eval-dataset", str(world / "eval.jsonl"), "--discriminator-model",
            str(world / "polar"), "--out", str(out), *SMALL, *extra]


def saved_activation_bytes(policy, fn):
    """Bytes autograd saves for backward while fn() runs, parameters excluded."""
    params = {p.data_ptr() for p in policy.parameters()}
    total = [0]

    def pack(t):
        if t.data_ptr() not in params:
            total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_gradient_checkpointing_really_saves_activations(world, tmp_path, monkeypatch):
    """Checkpointing only acts on a module in train mode; from_pretrained returns eval mode."""
    saved, real_step = {}, train.unified_step

    def measuring(*a, **k):
        m, n = saved_activation_bytes(a[0], lambda: real_step(*a, **k))
        saved[flag] = n
        return m
    monkeypatch.setattr(train, "unified_step", measuring)
    for flag in ("--gradient-checkpointing", "--no-gradient-checkpointing"):
        train.main(real_args(world, tmp_path / flag, flag, "--discriminator", "lexical",
                             "--steps", "1", "--save-every", "0"))
    # measured: 0.68 MB vs 13.0 MB here (4 layers); equal when the policy stayed in eval mode
    assert saved["--gradient-checkpointing"] < 0.2 * saved["--no-gradient-checkpointing"]


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_rehearsal_of_the_real_configuration(world, tmp_path, monkeypatch, engine):
    seen, real_step, real_lp = {}, train.unified_step, logprobs.token_logprobs

    def spy_step(policy, batch, s, run, step):
        seen["train_mode"] = policy.training and parallel.is_activation_checkpointing(policy)
        disc = run.discriminator
        seen["polar"] = (next(disc.model.parameters()).dtype, disc.model.rotary_emb.inv_freq.dtype,
                         disc.v_head.weight.dtype)
        return real_step(policy, batch, s, run, step)

    def spy_logprobs(h, w, t, *a, **k):
        out = real_lp(h, w, t, *a, **k)
        if torch.is_autocast_enabled("cpu") and h.requires_grad:
            # bf16 operands, fp32 log-sum-exp: equal to float64 maths on the same operands
            seen["lp_error"] = float((out.detach().double() - reference(
                h.detach(), w.detach().to(h.dtype), t, *a[:1])).abs().max())
            seen["lp_dtype"] = h.dtype
        return out
    monkeypatch.setattr(train, "unified_step", spy_step)
    monkeypatch.setattr(logprobs, "token_logprobs", spy_logprobs)
    out = tmp_path / "run"
    summary = train.main(real_args(world, out, "--precision", "bf16", "--save-every", "1",
                                   "--rollout-engine", engine))

    cfg = json.load(open(out / "config.json"))
    assert cfg["world"] == "real" and cfg["discriminator"] == "polar" and cfg["gradient_checkpointing"]
    assert cfg["eval_max_new_tokens"] == 24 and cfg["learning_rate"] == 1e-6
    # defect 1: the policy trains in train mode with checkpointing active
    assert seen["train_mode"]
    # defect 2: POLAR in bf16 with fp32 rotary frequencies and an fp32 value head
    assert seen["polar"] == (torch.bfloat16, torch.float32, torch.float32)
    # defects 3 and 4: bf16 rows reach the head; the log-sum-exp is not demoted to bf16
    assert seen["lp_dtype"] == torch.bfloat16 and seen["lp_error"] < 1e-4
    ms = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [m["step"] for m in ms] == [1, 2]
    for m in ms:
        assert all(torch.isfinite(torch.tensor(float(v))) for k, v in m.items() if k != "step")
        assert {"sft/nll", "grpo/loss", "adv/loss", "adv/d_mean", "sampler_gap_mean"} <= set(m)
        assert m["sampler_gap_mean"] < 0.1      # bf16-rounded sampler logits vs the trainer's
    final = json.load(open(out / "eval_final.json"))
    assert final["n_prompts"] == 3 and 0 <= summary["after"] <= 1
    # resume from the last checkpoint and go one step further
    train.main(real_args(world, out, "--precision", "bf16", "--save-every", "1", "--steps", "3",
                         "--resume", "auto", "--rollout-engine", engine))
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1, 2, 3]
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "qwen3"
    assert os.path.exists(out / "checkpoints" / "step-0000003" / "trainer_state.pt")


def test_the_gsm8k_real_run_rehearsed(world, tmp_path):
    """`python train.py --task gsm8k --model <Qwen3 directory>` on openai/gsm8k's own columns (a
    local .parquet of the hub's format), POLAR as the discriminator with the gold solution as its
    reference, bf16 autocast: it trains, evaluates on answers, and writes the task in its marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import gsm8k
    rows = gsm8k.toy_rows("", "train", 0, 12, 1, 0.65)
    hub = [{"question": r["prompt"], "answer": r["response"].replace(f"#### {r['answer']}", "") +
            f"#### {r['answer']}"} for r in rows]
    pq.write_table(pa.Table.from_pylist(hub), str(tmp_path / "gsm8k.parquet"))
    out = tmp_path / "run"
    summary = train.main(["--task", "gsm8k", "--model", str(world / "policy"), "--dataset",
                          str(tmp_path / "gsm8k.parquet"), "--eval-dataset", str(tmp_path / "gsm8k.parquet"),
                          "--discriminator-model", str(world / "polar"), "--out", str(out), *SMALL,
                          "--precision", "bf16", "--reward", "answer", "steps"])
    final = json.load(open(out / "eval_final.json"))
    assert final["headline"] == "accuracy" and final["n_prompts"] == 3 and summary["after"] == final["accuracy"]
    assert json.load(open(out / "final" / "uniapl.json"))["task"] == "gsm8k"
    assert json.load(open(out / "config.json"))["world"] == "real"
