"""eval.py: distances against hand values, accuracy, behaviour, verified demonstrations, CLI."""

import json
import os

import numpy as np
import pytest
import torch

import eval as evaluation
import rollouts
import static_engine
import train
from tools import plots


def test_wasserstein_and_ks_hand_values():
    assert evaluation.wasserstein1([0, 1], [1, 2]) == pytest.approx(1.0)
    assert evaluation.wasserstein1([0], [3]) == pytest.approx(3.0)
    assert evaluation.ks_distance([0, 1], [1, 2]) == pytest.approx(0.5)
    assert evaluation.ks_distance([0, 1], [5, 6]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(1, 2, size=50)   # equal sizes: mean |sorted diff|
    assert evaluation.wasserstein1(a, b) == pytest.approx(np.mean(np.abs(np.sort(a) - np.sort(b))))
    assert evaluation.wasserstein1(a, a) == 0 and evaluation.ks_distance(a, a) == 0


def test_evaluate_model_and_behaviour(model, tok, toy_rows, tmp_path):
    rows = toy_rows[1][:6]
    res = evaluation.evaluate_model(model, tok, rows, max_new_tokens=8, engine=rollouts.HFEngine(batch_size=4))
    assert len(res["responses"]) == 6 and 0 <= res["prompt_strict"] <= 1
    b = evaluation.behaviour(model, tok, rows, max_new_tokens=8, batch_size=4)
    assert len(b["length"]["student"]) == len(b["length"]["teacher"]) == 6
    assert all(x <= 0 for x in b["logprob"]["student"] + b["logprob"]["teacher"])
    assert b["length"]["w1"] >= 0 and 0 <= b["logprob"]["ks"] <= 1
    plots.plot_behaviour(b, str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").stat().st_size > 1000
    t = evaluation.teacher_accuracy(rows)
    assert 0 <= t["prompt_strict"] <= 1


def test_cli_on_a_saved_toy_run_and_curves(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train.main(["--steps", "2", "--sft-batch-size", "2", "--rl-batch-size", "2",
                "--num-generations", "2", "--max-completion-length", "8", "--eval-limit", "3",
                "--no-progress", "--out", str(run_dir), "--eval-every", "1"])
    evaluation.main(["--model", str(run_dir / "final"), "--limit", "5", "--max-new-tokens", "8",
                     "--behaviour", "--out", str(tmp_path / "e.json")])
    res = json.load(open(tmp_path / "e.json"))
    assert res["n_prompts"] == 5 and "behaviour" in res and res["teacher"]["prompt_strict"] >= 0
    plots.main(["--behaviour", str(tmp_path / "e.json")])
    assert os.path.exists(tmp_path / "e_behaviour.png")
    plots.main([str(run_dir), str(run_dir), "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert any("eval/prompt_strict" in m for m in plots.read_metrics(str(run_dir)))


def test_verified_responses_keep_exactly_the_answers_that_pass(toy_rows):
    """The scripted teacher's answers: kept = the verified ones, counted by reason."""
    import ifeval
    rows = toy_rows[0][:12]
    answers = [r["response"] for r in rows[:-1]] + ["   "]
    kept, stats = evaluation.verified_responses(rows, answers)
    correct = [r for r, a in zip(rows, answers)
               if a.strip() and ifeval.reward(a, r["instruction_id_list"], r["kwargs"]) == 1]
    assert 0 < len(correct) < len(rows) - 1
    assert [r["key"] for r in kept] == [r["key"] for r in correct]
    assert [r["response"] for r in kept] == [r["response"] for r in correct]
    assert stats == {"total": 12, "kept": len(correct), "empty": 1,
                     "failed_checks": 11 - len(correct)}


def test_teacher_demonstrations_keep_every_answer_right_or_wrong(toy_rows):
    """The paper's setting: teacher answers are kept whether or not they pass (only empty ones
    are left out, counted); the failing ones are counted too."""
    rows = toy_rows[0][:12]
    answers = [r["response"] for r in rows[:-1]] + ["   "]
    kept, stats = evaluation.teacher_demonstrations(rows, answers)
    _, verified = evaluation.verified_responses(rows, answers)
    assert [r["response"] for r in kept] == answers[:-1]
    assert stats == {"total": 12, "kept": 11, "empty": 1, "failed_checks": verified["failed_checks"]}
    assert stats["failed_checks"] > 0          # the scripted teacher errs: those answers stay


def test_cli_writes_verified_demonstrations_with_the_toy_model_as_teacher(tmp_path, model, tok,
                                                                           toy_rows, capsys):
    import data
    import ifeval
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    src = tmp_path / "rows.jsonl"
    data.write_jsonl([dict(r, response=None) for r in toy_rows[1][:6]], str(src))
    evaluation.main(["--model", str(tmp_path / "teacher"), "--dataset", str(src), "--max-new-tokens",
                     "8", "--batch-size", "4", "--write-verified", str(tmp_path / "demos.jsonl"),
                     "--write-demos", str(tmp_path / "all.jsonl"), "--out", str(tmp_path / "e.json")])
    out = capsys.readouterr().out
    kept = [json.loads(line) for line in open(tmp_path / "demos.jsonl")]
    assert all(ifeval.reward(r["response"], r["instruction_id_list"], r["kwargs"]) == 1 for r in kept)
    assert f"kept {len(kept)} of 6 answers" in out
    every = [json.loads(line) for line in open(tmp_path / "all.jsonl")]   # the paper's setting
    assert {r["key"] for r in kept} <= {r["key"] for r in every} and "(the paper's setting" in out
    assert f"wrote {len(every)} of 6 answers" in out and all(r["response"].strip() for r in every)
    with pytest.raises(SystemExit, match="cannot load model"):
        evaluation.main(["--model", str(tmp_path / "none"), "--dataset", str(src)])


def test_the_cli_answers_in_the_gpu_dtype_through_the_engine(tmp_path, model, tok, toy_rows,
                                                             monkeypatch):
    """Where the precision is bf16 (CUDA; here forced on the CPU), eval.py loads a teacher or
    student in bf16 and answers -- --write-verified and --behaviour's samples alike -- through
    the rollout engine it was given, not HF generate in fp32."""
    import data
    import parallel
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    src = tmp_path / "rows.jsonl"
    data.write_jsonl(toy_rows[1][:4], str(src))
    real_dtype = parallel.autocast_dtype
    monkeypatch.setattr(parallel, "autocast_dtype", lambda device, p="auto": real_dtype(device, "bf16"))
    seen = []
    real_generate = static_engine.StaticEngine.generate
    monkeypatch.setattr(static_engine.StaticEngine, "generate", lambda self, m, *a, **kw: seen.append(
        (next(m.parameters()).dtype, kw.get("greedy"))) or real_generate(self, m, *a, **kw))
    evaluation.main(["--model", str(tmp_path / "teacher"), "--dataset", str(src), "--max-new-tokens",
                     "6", "--engine", "static", "--behaviour", "--write-verified",
                     str(tmp_path / "demos.jsonl"), "--out", str(tmp_path / "e.json")])
    assert seen == [(torch.bfloat16, True), (torch.bfloat16, False)]      # answers, then samples
