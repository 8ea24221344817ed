"""bench.py: every benchmark runs end to end (on the CPU, small) and writes what README cites."""

import json

import pytest
import torch

from tools import bench


def test_gpu_suite_rehearsed_on_the_cpu(tmp_path):
    """The suite a lent GPU runs, at the toy shape on the CPU: the same code path end to end."""
    s = bench.shape_settings("toy", ["rl_batch_size=2", "num_generations=2", "sft_batch_size=2",
                                     "max_completion_length=8", "eval_max_new_tokens=8"])
    r = bench.suite(torch.device("cpu"), "toy", [64], str(tmp_path), s, eval_prompts=4,
                    hv=(32, 1000))
    saved = json.load(open(tmp_path / "bench_gpu_suite.json"))
    assert saved["step"]["rollouts"] == 4 and len(saved["step"]["steps"]) == 3
    assert {"generate", "forward", "backward", "optimizer"} <= set(saved["step"]["phase_s"])
    assert {row["variant"] for row in r["logprobs"]["rows"]} == {"naive", "torch"}
    assert saved["step"]["engine"] == "static"                  # the best engine on a CPU
    assert [(c["method"], c["engine"]) for c in saved["compared"]] == [
        ("uniapl", "hf"), ("grpo", "static"), ("TRL GRPOTrainer", "hf")]
    assert saved["eval"]["max_new_tokens"] == 8 and saved["eval"]["tokens_per_s"] > 0
    assert "| generate |" in (tmp_path / "bench_gpu_suite.md").read_text()


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
