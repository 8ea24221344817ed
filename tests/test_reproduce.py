"""reproduce.py: statistics by hand; --quick runs the whole pipeline (main, discriminators) and
keeps finished runs when run again."""

import argparse
import json

import pytest
import torch

from tools import reproduce


def test_paired_difference_hand_computed():
    rs = [{"name": n, "seed": s, "accuracy": a} for n, s, a in [
        ("a", 0, 0.5), ("a", 1, 0.6), ("a", 2, 0.7), ("b", 0, 0.4), ("b", 1, 0.4), ("b", 2, 0.6)]]
    ci = reproduce.paired(rs, "a", "b")
    # differences 0.1, 0.2, 0.1: mean 0.1333, sd 0.0577, t(2) = 4.303 -> half width 0.1434
    assert ci["mean"] == pytest.approx(0.13333, abs=1e-4) and ci["n"] == 3
    assert ci["high"] - ci["mean"] == pytest.approx(4.303 * 0.057735 / 3 ** 0.5, abs=1e-4)
    assert reproduce.verdict(ci) == "inconclusive"                   # the interval contains 0
    assert reproduce.verdict({"low": 0.01, "high": 0.2}) == "reproduced"
    assert reproduce.verdict({"low": -0.3, "high": -0.01}).startswith("not reproduced")
    assert reproduce.paired(rs, "a", "missing") is None
    assert reproduce.verdict({"low": -0.3, "high": -0.1}, sign=-1) == "reproduced"   # lower is better
    teacher = [dict(r, teacher=0.65) for r in rs]
    assert reproduce.paired(teacher, "a", "teacher")["mean"] == pytest.approx(-0.05)


def test_quick_pipeline(tmp_path):
    results = reproduce.main(["--quick", "--out", str(tmp_path), "--machine", "test"])
    assert {r["name"] for r in results} == {name for name, _ in reproduce.MAIN}
    assert {r["seed"] for r in results} == {0, 1}
    saved = json.load(open(tmp_path / "toy_table.json"))
    assert saved["steps"] == 4 and len(saved["base_accuracy"]) == 2
    md = (tmp_path / "toy_table.md").read_text()
    for name, _ in reproduce.MAIN:
        assert f"| {name} |" in md
    assert "| UniAPL beats GRPO |" in md
    for png in ("toy_methods.png", "toy_claims.png", "toy_curves.png", "toy_behaviour.png"):
        assert (tmp_path / png).stat().st_size > 1000
    staged = next(r for r in results if r["name"] == "sft -> grpo")
    grpo_s1 = next(r for r in results if r["name"] == "grpo" and r["seed"] == 1)
    assert staged["run_dir"].endswith("stage2") and staged["n_ood"] >= 0
    # every run started from its seed's shared base model
    cfg = json.load(open(tmp_path / "runs" / "main" / "grpo-s1" / "stage1" / "config.json"))
    assert cfg["model"].endswith("base/seed1/final") and cfg["dataset"] == "toy:holdout"
    assert "| The student (UniAPL) beats its teacher |" in reproduce.main(
        ["report", "--quick", "--out", str(tmp_path)])
    disc = reproduce.main(["discriminators", "--quick", "--out", str(tmp_path), "--machine", "test"])
    assert {"lexical", "embedding (the base student as encoder)"} <= set(disc)
    assert 0 <= disc["lexical"]["auc"] <= 1
    # an interrupted reproduction keeps the runs that finished with the settings asked for
    args = argparse.Namespace(out=str(tmp_path), steps=4, extra=reproduce.QUICK, n_eval=12)
    threads = torch.get_num_threads()
    try:
        again = reproduce.run_job(reproduce.job_spec("grpo", [("grpo", [])], 1, args, "main", {},
                                                     behaviour=False))
        assert again["kept"] == 1 and again["accuracy"] == grpo_s1["accuracy"]
        other = reproduce.run_job(reproduce.job_spec("grpo", [("grpo", [])], 1, args, "main",
                                                     {"grpo": 3e-3}, behaviour=False))
        assert other["kept"] == 0 and other["lr"] == 3e-3
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_quick_lr_grid_and_ablations(tmp_path):
    best = reproduce.main(["lr-grid", "--quick", "--out", str(tmp_path), "--machine", "test"])
    assert set(best) == {name for name, _ in reproduce.MAIN}
    reproduce.main(["--quick", "--out", str(tmp_path), "--machine", "test"])
    assert "per-method learning rates" in (tmp_path / "toy_table.md").read_text()
    reproduce.main(["ablations", "--quick", "--out", str(tmp_path), "--machine", "test"])
    md = (tmp_path / "toy_ablations.md").read_text()
    assert "flawed teacher" in md and "| uniapl vs uniapl, adv as reward |" in md
