"""Several processes on the CPU: torchrun --standalone --nproc_per_node 2 with gloo.

N ranks must compute the one-process gradient of the same global batch (data parallel and
FSDP2), end a run without sampling with the one-process weights, resume, refuse a resume with
another number of processes, and stop together when one rank fails.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--steps", "3", "--sft-batch-size", "2", "--rl-batch-size", "2", "--num-generations", "2",
        "--max-completion-length", "12", "--eval-limit", "4", "--no-progress"]


def torchrun(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_two_ranks_compute_the_one_process_gradient(tmp_path):
    """sft, grpo, uniapl (token and sequence aggregation, clipped and not, with activation
    checkpointing, in micro-batches of 3, the coefficient normalised over every rank's rollouts),
    data parallel and FSDP2: the 2-rank update equals the
    one-process update of the same batch to fp32 rounding: measured 1.7e-7 to 4.1e-7, and 1.05e-6
    where FSDP2 reduces the clipping norm over shards (a wrong denominator would give ~1e-1)."""
    res = torchrun("tests/parallel_worker.py", str(tmp_path / "out.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.load(open(tmp_path / "out.json"))
    assert len(results) == 18 and {"uniapl-token-checkpointed-fsdp", "uniapl-sequence-micro3-dp",
                                   "uniapl-token-batchnorm-dp"} <= set(results)
    for case, r in results.items():
        assert r["update_norm"] > 1e-3, case                    # every case has a gradient
        assert r["rel_update_diff"] <= 2e-6, (case, r)
        assert abs(r["loss_many"] - r["loss_one"]) <= 1e-6 * max(1.0, abs(r["loss_one"])), case


def test_two_rank_sft_run_ends_with_the_one_process_weights(tmp_path):
    res = torchrun("train.py", *TINY, "--method", "sft", "--out", str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-3000:]
    train.main(TINY + ["--method", "sft", "--out", str(tmp_path / "one")])
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=5e-6) for k in a)
    one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    two = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    for m1, m2 in zip(one, two):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-6)
        assert m2["sft/truncated"] == m1["sft/truncated"]
    assert json.load(open(tmp_path / "two" / "config.json"))["world_size"] == 2
    assert json.load(open(tmp_path / "two" / "eval_final.json"))["n_prompts"] == 4


@pytest.mark.parametrize("fsdp", [[], ["--fsdp", "--rollout-engine", "static"]],
                         ids=["data-parallel", "fsdp2-static-engine"])
def test_two_rank_uniapl_run_and_resume(tmp_path, fsdp):
    """(torchrun on CUDA picks the static engine: under FSDP2 its copy is refreshed from the
    gathered shards.)"""
    out = str(tmp_path / "run")
    args = [*TINY, "--method", "uniapl", "--save-every", "2", "--out", out, *fsdp]
    res = torchrun("train.py", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout and ("FSDP2" in res.stdout) == bool(fsdp)
    assert ("rollouts and evaluation: static" in res.stdout) == bool(fsdp)
    res = torchrun("train.py", *args, "--steps", "4", "--resume", "auto")
    assert res.returncode == 0, res.stderr[-3000:]
    ms = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["step"] for m in ms] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in ms)
    from transformers import AutoModelForCausalLM
    final = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"))
    assert json.load(open(os.path.join(out, "final", "config.json")))["architectures"] == \
        ["Qwen3ForCausalLM"] and final.num_parameters() > 0
    with pytest.raises(SystemExit, match="written by 2 process.*torchrun --nproc_per_node 2"):
        train.main([*TINY, "--method", "uniapl", "--out", out, "--steps", "5", "--resume", "auto", *fsdp])


def test_a_failing_rank_stops_the_other(tmp_path):
    """Rank 1 raises in its second step; torchrun ends both instead of leaving rank 0 waiting."""
    script = tmp_path / "fail.py"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {ROOT!r})
import train
real = train.unified_step
def failing(policy, batch, s, run, step):
    if step == 1 and os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 fails here")
    return real(policy, batch, s, run, step)
train.unified_step = failing
train.main({TINY!r} + ["--out", {str(tmp_path / "run")!r}])
""")
    t0 = time.perf_counter()
    res = torchrun(str(script), timeout=240)
    assert res.returncode != 0 and "rank 1 fails here" in res.stderr
    assert time.perf_counter() - t0 < 120


def test_every_collective_gets_a_tensor_on_the_runs_device(tmp_path, monkeypatch):
    """NCCL takes CUDA tensors only; gloo takes CPU tensors too, so the 2-rank CPU runs above
    cannot see a collective handed a tensor on the wrong device. Here one process plays rank 0
    of 2 (collectives recorded, answered as if the other rank were identical), and every method
    of the run context runs with the default device set to meta: a tensor it makes without
    naming the run's device lands on meta and is caught -- over a step, an evaluation, a
    checkpoint and a resume."""
    import contextlib
    import functools

    import parallel
    seen = []

    def record(name, t, **_):
        seen.append((name, t.device))
    monkeypatch.setattr(parallel.td, "all_reduce", lambda t, op=None: record("all_reduce", t))
    monkeypatch.setattr(parallel.td, "all_gather_object", lambda out, obj: out.__setitem__(
        slice(None), [obj] * len(out)))
    monkeypatch.setattr(parallel.td, "broadcast_object_list", lambda box, src=0: None)
    monkeypatch.setattr(parallel.td, "barrier", lambda **kw: seen.append(("barrier", None)))
    for name in ("all_reduce_sum", "all_reduce_grads", "reduce_metrics", "gather_objects",
                 "broadcast_object", "barrier"):
        method = getattr(parallel.Context, name)

        @functools.wraps(method)
        def on_meta(*a, _method=method, **k):
            with torch.device("meta"):
                return _method(*a, **k)
        monkeypatch.setattr(parallel.Context, name, on_meta)
    monkeypatch.setattr(parallel, "setup", lambda *a, **k: parallel.Context(rank=0, world_size=2,
                                                                    device=torch.device("cpu")))
    monkeypatch.setattr(parallel, "shutdown", contextlib.nullcontext)
    out = str(tmp_path / "run")
    train.main([*TINY, "--method", "uniapl", "--steps", "2", "--save-every", "2", "--out", out])
    train.main([*TINY, "--method", "uniapl", "--steps", "3", "--save-every", "2", "--out", out,
                "--resume", "auto"])
    reduced = [device for name, device in seen if name == "all_reduce"]
    assert len(reduced) >= 3 * 4                  # per step: grads, token counts, metrics
    assert set(reduced) == {torch.device("cpu")}, set(reduced)
