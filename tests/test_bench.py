"""tools/bench.py and tools/gpu_suite.py: every benchmark runs end to end (on the CPU, small)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tools import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_suite_rehearsed_on_the_cpu_with_one_part_failing(tmp_path):
    """The suite a lent GPU runs, at the toy shape on the CPU, every part in its own process --
    with TRL made unimportable: its part records the error, every other part its figures."""
    broken = tmp_path / "broken" / "trl"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("trl made unimportable for this test")')
    # an inherited inductor cache directory (inductor sets one in os.environ once it has compiled
    # in this pytest process) must not override --compile-cache
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "broken"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "other"))
    cache = tmp_path / "inductor"
    res = subprocess.run([sys.executable, "-m", "tools.gpu_suite", "--device", "cpu", "--model-shape",
                          "toy", "--out", str(tmp_path), "--budget-s", "900", "--compile-cache", str(cache),
                          "--set", "rl_batch_size=2", "num_generations=2", "sft_batch_size=2",
                          "max_completion_length=8", "eval_max_new_tokens=8", "rollout_engine=static"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.load(open(tmp_path / "gpu_suite_cpu.json"))
    # the graphs proven and the default engine's figures first, train_cli (another compile) last
    assert list(r)[2:10] == ["environment", "graphs", "steps", "eval", "logprobs_correctness",
                             "logprobs_speed", "reference", "train_cli"]
    calls = r["graphs"]["calls"]
    assert [c["call"] for c in calls] == ["training", "evaluation", "training again", "sampled, rows ending early"]
    assert all(c["equal_rows"] == c["rows"] for c in calls) and calls[1]["cache"] != calls[0]["cache"]
    assert [c["compiles"] for c in calls] == [1, 1, 1, 1]        # inductor: one compile for all four
    assert [c["compactions"] for c in calls] == [0, 0, 0, 1]     # the last call's live rows: 16 -> 8
    assert "the first decode step (the compile) took" in res.stdout
    assert r["environment"]["versions"]["torch"].startswith("2.") and r["compile_cache"] == str(cache)
    rows = r["logprobs_correctness"]["rows"]
    assert {(x["backend"], x["dtype"], x["temperature"]) for x in rows} >= {("torch", "bfloat16", 0.7)}
    assert all(x["logp_max_abs_error"] < 1e-5 for x in rows if x["backend"] == "torch")
    for step in (r["steps"]["static"], r["reference"]["hf"]):
        assert len(step["warmup"]) == 1 and step["steps"] and step["median_step_s"] > 0
        assert {"generate", "forward", "backward", "optimizer"} <= set(step["phase_s"])
    assert r["steps"]["static"]["first_decode_step_s"] > 0     # the compile, a figure of its own
    assert r["reference"]["grpo"]["method"] == "grpo" and r["reference"]["grpo"]["median_step_s"] > 0
    assert "trl made unimportable" in r["reference"]["trl_hf"]["error"]
    assert [x["returncode"] for x in r["train_cli"]["runs"]] == [0, 0]
    assert [m["step"] for m in r["train_cli"]["metrics"]] == [1, 2, 3]
    ev = r["eval"]        # on the CPU: one call of all 541 planned, four prompts measured
    assert ev["tokens_per_s"] > 0 and ev["max_new_tokens"] == 8 and ev["engine"] == "static"
    assert (ev["calls"], ev["prompts_per_call"], ev["measured_prompts"]) == (1, 541, 4)
    assert ev["ifeval_estimate_s"] == pytest.approx(ev["wall_s"] * 541 / 4)
    assert ev["compiles"] == 0 and ev["first_decode_step_s"] > 0      # on the CPU: eager
    assert {x["variant"] for x in r["logprobs_speed"]["rows"]} == {"naive", "torch"}
    md = (tmp_path / "gpu_suite_cpu.md").read_text()
    assert "| generate |" in md and "trl made unimportable" in md


def test_a_part_over_its_time_keeps_what_it_reported():
    """A job that hangs is killed at its limit (with its whole process group); the figures it
    reported before stay, the error beside them."""
    import argparse

    from tools import gpu_suite
    args = argparse.Namespace(device="cpu", model_shape="toy", set=[], n=None)
    record = gpu_suite.run_job("_hang", "_hang", 20.0, args)
    assert record["figure"] == 1.0 and record["error"] == "timed out after 20 s"
    assert 20 <= record["time_s"] < 35


def test_step_writes_the_file_readme_cites(tmp_path):
    bench.main(["step", "--repeats", "1", "--out", str(tmp_path), "--set", "rl_batch_size=2",
                "num_generations=2", "max_completion_length=8"])
    r = json.load(open(tmp_path / "bench_step_toy_cpu.json"))
    assert r["rollouts"] == 4 and r["median_step_s"] > 0
    with pytest.raises(SystemExit, match="no setting"):
        bench.shape_settings("toy", ["nope=1"])


def test_word_tokenizer_round_trips_every_id():
    from tools import shapes
    tok = shapes.word_tokenizer(5000)
    assert len(tok) == 5000
    ids = [7, 4321, 4999, 123]
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids


@pytest.mark.slow
def test_real_shape_step_on_the_cpu(tmp_path):
    """Qwen3-0.6B's shape with a POLAR-1.8B-shaped discriminator, one tiny step (~90 s, ~18 GB)."""
    r = bench.main(["step", "--model-shape", "qwen3-0.6b", "--device", "cpu", "--repeats", "1",
                    "--out", str(tmp_path), "--set", "rl_batch_size=1", "num_generations=2",
                    "sft_batch_size=1", "max_completion_length=8"])
    assert 590 < r["params_M"] < 600 and r["discriminator"] == "polar"
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in r["steps"])


def test_memory_plan_is_labelled_and_shrinks_with_fsdp():
    from tools import memory
    table = memory.plan()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    row = {(c[0], c[1]): c for c in cells}
    one, four = row[("Qwen3-4B", "1")], row[("Qwen3-4B", "4")]
    assert one[4] == "—" and float(four[4]) < float(four[2]) < float(one[2])


@pytest.mark.slow
def test_memory_measure_sees_checkpointing(tmp_path):
    """Qwen3-0.6B's width, 2 and 4 layers (~1 min): one fp32 hidden vector per token and layer
    with checkpointing, far more without."""
    from tools import memory
    m = memory.measure(lengths=(128, 256))
    on = [r for r in m["rows"] if r["checkpointing"]]
    off = [r for r in m["rows"] if not r["checkpointing"]]
    assert all(r["per_token_per_layer"] == 4 * 1024 for r in on)
    assert all(r["per_token_per_layer"] > 20 * 4 * 1024 for r in off)


def test_the_environment_always_runs_and_a_part_runs_alone(tmp_path, monkeypatch):
    """The environment has a floor of its own (at a small budget its share used to be under the
    5 s minimum, so it was skipped), and `--only X` runs X with the environment beside it."""
    from tools import gpu_suite
    ran = []
    monkeypatch.setattr(gpu_suite, "run_job", lambda part, job, limit, args: ran.append((part, job, limit))
                        or {"time_s": 0.0, "figure": 1.0})
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    gpu_suite.main(["--device", "cpu", "--model-shape", "toy", "--out", str(tmp_path), "--budget-s", "60",
                    "--only", "train_cli"])
    assert [(p, j) for p, j, _ in ran] == [("environment", "environment"), ("train_cli", "train_cli")]
    assert ran[0][2] == pytest.approx(gpu_suite.PARTS["environment"][0], abs=1) and ran[1][2] > 25


@pytest.mark.slow
def test_gpu_suite_rehearsed_at_qwen3_06b_depth_and_width(tmp_path):
    """The suite's first figures at 0.6B's depth and width on the CPU (small batches, short
    answers): the graphs check before the step, the compile's time printed the moment it is
    known (before the call that paid for it ends), one compile per process."""
    res = subprocess.run([sys.executable, "-m", "tools.gpu_suite", "--device", "cpu", "--model-shape",
                          "qwen3-0.6b", "--out", str(tmp_path), "--budget-s", "3000", "--only", "graphs", "steps",
                          "--set", "rl_batch_size=1", "num_generations=2", "sft_batch_size=1",
                          "max_completion_length=4", "eval_max_new_tokens=4", "rollout_engine=static"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    order = [out.index(x) for x in ("environment: up to", "graphs: up to", "the first decode step (the compile)",
                                    "graphs: training (", "steps/static: up to")]
    assert order == sorted(order), out[-3000:]
    r = json.load(open(tmp_path / "gpu_suite_cpu.json"))
    assert [c["compiles"] for c in r["graphs"]["calls"]] == [1, 1, 1, 1]
    assert r["steps"]["static"]["median_step_s"] > 0 and r["graphs"]["calls"][0]["equal_rows"] == 2


def test_the_engines_bench_compares_all_three_on_equal_answers(tmp_path):
    """`python -m tools.bench engines`, small: hf, static eager and static compiled by inductor
    time the same calls and draw the same tokens (the rule auto's CPU choice rests on)."""
    from tools import bench
    s = bench.shape_settings("toy", ["rl_batch_size=1", "num_generations=2", "max_completion_length=4"])
    r = bench.bench_engines(s, calls=2)
    assert list(r["engines"]) == ["hf", "static", "static, inductor"] and r["rollouts_per_call"] == 2
    assert all(e["answers_equal_to_hf"] == 1.0 and e["steady_call_s"] > 0 for e in r["engines"].values())
    assert r["engines"]["hf"]["steady_ratio_to_hf"] == 1.0
    assert "| static, inductor |" in bench.engines_table(r)
