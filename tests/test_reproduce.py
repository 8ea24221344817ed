"""reproduce.py --quick: the whole table pipeline (every configuration, stages, behaviour, plots)."""

import json

import reproduce


def test_quick_table_runs_every_configuration(tmp_path):
    results = reproduce.main(["--quick", "--out", str(tmp_path), "--machine", "test"])
    assert {r["name"] for r in results} == {name for name, _ in reproduce.CONFIGS}
    table = (tmp_path / "toy_table.md").read_text()
    for name, _ in reproduce.CONFIGS:
        assert f"| {name} |" in table
    data = json.load(open(tmp_path / "toy_table.json"))
    assert data["steps"] == 4 and len(data["results"]) == len(reproduce.CONFIGS)
    assert (tmp_path / "toy_curves.png").exists() and (tmp_path / "lambda_sweep.png").exists()
    staged = next(r for r in results if r["name"] == "sft -> grpo")
    assert staged["run_dir"].endswith("stage2")
