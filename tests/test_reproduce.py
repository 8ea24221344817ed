"""tools/reproduce.py and tools/claims.py: statistics by hand; --quick runs the whole pipeline
(lr grid, main table, report, discriminators) and keeps finished runs when run again."""

import argparse
import json
import re
import shutil

import pytest
import torch

from tools import claims, reproduce


def test_paired_difference_and_exact_t_by_hand():
    rs = [{"name": n, "seed": s, "accuracy": a} for n, s, a in [
        ("a", 0, 0.5), ("a", 1, 0.6), ("a", 2, 0.7), ("b", 0, 0.4), ("b", 1, 0.4), ("b", 2, 0.6)]]
    ci = claims.paired(rs, "a", "b")
    # differences 0.1, 0.2, 0.1: mean 0.13333, sd 0.057735, se 0.033333; t(2, 0.975) = 4.302653
    assert ci["mean"] == pytest.approx(0.133333, abs=1e-6) and ci["n"] == 3
    assert ci["high"] - ci["mean"] == pytest.approx(4.302653 * 0.033333, rel=1e-5)
    # t = 4.0 on 2 degrees of freedom: two-sided p = 1 - 4 / sqrt(18) = 0.057191
    assert ci["p"] == pytest.approx(1 - 4 / 18 ** 0.5, rel=1e-5)
    assert claims.paired(rs, "a", "missing") is None
    teacher = [dict(r, teacher=0.65) for r in rs]
    assert claims.paired(teacher, "a", "teacher")["mean"] == pytest.approx(-0.05)


def test_holm_and_the_verdict():
    # p sorted 0.01, 0.02, 0.04 of m = 3: 0.03, max(0.03, 0.04), max(0.04, 0.04) -- and order kept
    assert claims.holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert claims.holm([0.5, 0.9]) == [1.0, 1.0]
    assert claims.verdict({"mean": 0.1}, 0.01) == "reproduced"
    assert claims.verdict({"mean": -0.1}, 0.01).startswith("not reproduced")
    assert claims.verdict({"mean": -0.1}, 0.01, sign=-1) == "reproduced"      # lower is better
    assert claims.verdict({"mean": 0.1}, 0.06) == "inconclusive" and claims.verdict(None, None) == "not run"
    # seeds needed: ((z(1 - 0.025/m) + z(0.8)) sd / gap)^2; m = 1: (1.95996 + 0.84162)^2 = 7.849
    assert claims.seeds_needed(1.0, 1.0, 1) == 8 and claims.seeds_needed(0.05, 0.03, 1) == 22


def test_quick_pipeline(tmp_path):
    out, best = str(tmp_path), {}       # no lr_grid.json: every method at 1e-3 (the slow test grids)
    # the rows of the claims about GRPO, SFT and the staged pipeline (the slow test runs all rows)
    rows = ["base", "sft", "grpo", "uniapl", "sft -> grpo"]
    quick = ["--quick", "--out", out, "--machine", "test", "--configs", *rows]
    results = reproduce.main(quick)
    assert {r["name"] for r in results} == set(rows)
    assert {r["seed"] for r in results} == {0, 1}
    md = (tmp_path / "toy_table.md").read_text()
    for name in rows:
        assert f"| {name} |" in md
    assert re.search(r"\| UniAPL beats SFT -> GRPO \| accuracy \(higher is better\) \| [+-]\d", md)
    assert "| GRPO improves on the base |" in md and "Holm" in md
    for png in ("toy_methods.png", "toy_claims.png", "toy_curves.png", "toy_behaviour.png"):
        assert (tmp_path / png).stat().st_size > 1000
    staged = next(r for r in results if r["name"] == "sft -> grpo" and r["seed"] == 1)
    assert staged["run_dir"].endswith("stage2") and staged["lrs"] == [1e-3, 1e-3]
    # every run started from its seed's shared base model, trained on the holdout world
    cfg = json.load(open(tmp_path / "runs" / "main" / "grpo-s1" / "stage1" / "config.json"))
    assert cfg["model"].endswith("base/seed1/final") and cfg["dataset"] == "toy:holdout"
    base_cfg = json.load(open(tmp_path / "runs" / "base" / "seed1" / "config.json"))
    assert base_cfg["dataset"] == "toy:holdout" and base_cfg["method"] == "sft"
    # more seeds for some rows later: the table keeps the others
    reproduce.main(["--quick", "--out", out, "--seeds", "2", "--configs", "base", "grpo", "--machine", "t"])
    saved = json.load(open(tmp_path / "toy_table.json"))["results"]
    assert {(r["name"], r["seed"]) for r in saved} >= {("grpo", 2), ("uniapl", 1), ("base", 2)}
    # the teacher's strength: UniAPL and SFT -> GRPO at each teacher, GRPO once
    teacher = reproduce.main(["teacher", "--quick", "--out", out, "--machine", "test"])
    assert {(r["name"], r["seed"]) for r in teacher} == {(f"{n}, teacher {a:g}", s) for a in (0.65, 0.8, 0.95)
                                                         for n in ("uniapl", "sft -> grpo") for s in (0, 1)
                                                         } | {("grpo (no teacher)", 0), ("grpo (no teacher)", 1)}
    cfg = json.load(open(tmp_path / "runs" / "teacher" / "sft->grpo_teacher0.95-s0" / "stage1" / "config.json"))
    assert cfg["teacher_accuracy"] == 0.95 and cfg["model"].endswith("base/seed0/final")
    md = (tmp_path / "toy_teacher.md").read_text()
    assert re.search(r"\| UniAPL beats GRPO \(teacher 0.95\) \| accuracy \(higher is better\) \| [+-]\d", md)
    assert "| 0.65 |" in md and "| 0.8 |" in md and (tmp_path / "toy_teacher.png").stat().st_size > 1000
    # the adversarial claims with a POLAR-format discriminator: none built yet, then one
    with pytest.raises(SystemExit, match="build it first"):
        reproduce.main(["polar", "--quick", "--out", out, "--machine", "test"])
    from tools import worlds
    worlds.write_polar_checkpoint(tmp_path / "runs" / "toy_polar")
    polar = reproduce.main(["polar", "--quick", "--out", out, "--machine", "test"])
    arms = {claims.polar_run(n) for n in ("a-grpo", "uniapl", "sft -> a-grpo", "uniapl, adv as reward",
                                          "uniapl, lambda 1")}
    assert {(r["name"], r["seed"]) for r in polar} == {(n, s) for n in arms | {claims.GRPO_ALONE, claims.SFT_GRPO}
                                                       for s in (0, 1)}
    same = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs if r["name"] == claims.GRPO_ALONE)  # noqa: E731
    assert same(polar) == same(teacher)          # the baselines are the teacher table's runs, not rerun
    assert not (tmp_path / "runs" / "polar_claims" / "grpo(noteacher)-s0").exists()
    for d in ("a-grpo_toypolar-s0/stage1", "sft->a-grpo_toypolar-s1/stage2", "uniapl_lambda1_toypolar-s0/stage1"):
        cfg = json.load(open(tmp_path / "runs" / "polar_claims" / d / "config.json"))
        assert cfg["discriminator"] == "polar" and cfg["discriminator_model"].endswith("runs/toy_polar")
    md = (tmp_path / "toy_polar_claims.md").read_text()
    assert re.search(r"\| A-GRPO beats GRPO \(toy POLAR\) \| accuracy \(higher is better\) \| [+-]\d", md)
    assert "| SFT -> A-GRPO beats SFT -> GRPO | " in md
    assert (tmp_path / "toy_polar_claims.png").stat().st_size > 1000
    need = reproduce.main(["seeds", "--quick", "--out", out])
    assert all(v["seeds_for_0.03"] >= 2 for v in need.values())
    disc = reproduce.main(["discriminators", "--quick", "--out", out, "--machine", "test"])
    assert {"lexical / base", "lexical / fixed"} <= set(disc) and 0 <= disc["lexical / fixed"]["auc"] <= 1
    # an interrupted reproduction keeps the runs that finished with the settings asked for
    args = argparse.Namespace(out=out, steps=4, extra=reproduce.QUICK, n_eval=12)
    threads = torch.get_num_threads()
    grpo_s1 = next(r for r in results if r["name"] == "grpo" and r["seed"] == 1)
    try:
        again = reproduce.run_job(reproduce.job_spec("grpo", [("grpo", [])], 1, args, "main", best,
                                                     behaviour=False))
        assert again["kept"] == 1 and again["accuracy"] == grpo_s1["accuracy"]
        other = reproduce.run_job(reproduce.job_spec("grpo", [("grpo", [])], 1, args, "main",
                                                     {"grpo": 1e-2}, behaviour=False))
        assert other["kept"] == 0 and other["lrs"] == [1e-2]
    finally:
        torch.set_num_threads(threads)
    # another machine, with the tables' JSON but none of the run directories: nothing runs again
    table = json.load(open(tmp_path / "toy_table.json"))["results"]
    shutil.rmtree(tmp_path / "runs")
    again = reproduce.main([*quick, "--seeds", "0", "1", "2"])
    assert not (tmp_path / "runs").exists()
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True)
                                                                          for r in table)
    # an lr grid that stopped half-way has chosen nothing: the tables refuse to run on it
    json.dump({"grid": [], "steps": 4, "best": None, "results": []}, open(tmp_path / "lr_grid.json", "w"))
    with pytest.raises(SystemExit, match="unfinished lr grid"):
        reproduce.main(quick)


@pytest.mark.slow
def test_quick_lr_grid_and_ablations(tmp_path):
    out = str(tmp_path)
    best = reproduce.main(["lr-grid", "--quick", "--out", out, "--machine", "test"])
    assert set(best) == set(reproduce.SINGLE) and set(best.values()) <= {1e-3, 3e-3}
    results = reproduce.main(["--quick", "--out", out, "--machine", "test"])
    staged = next(r for r in results if r["name"] == "sft -> grpo")
    assert staged["lrs"] == [best["sft"], best["grpo"]]          # a rate per stage
    reproduce.main(["ablations", "--quick", "--out", out, "--machine", "test"])
    md = (tmp_path / "toy_ablations.md").read_text()
    assert "flawed teacher" in md and "| grpo, binary reward vs grpo |" in md


def test_choose_lr_takes_the_best_mean_and_the_smaller_rate_on_a_tie():
    rs = [{"name": "x", "lrs": [lr], "accuracy": a} for lr, a in
          [(1e-4, 0.5), (1e-4, 0.7), (3e-4, 0.6), (3e-4, 0.6), (1e-3, 0.2), (1e-3, 0.3)]]
    assert reproduce.choose_lr(rs, "x") == 1e-4


def test_the_real_table_rehearsed_on_the_cpu(tmp_path, capsys):
    """tools/reproduce_real at toy size: a Qwen3-format directory, argilla- and IFEval-format
    rows, a POLAR-format discriminator (the real run's rehearsal world); the plan first, then
    the base's evaluation and three rows as train.py processes, the report; run again, every
    finished run is kept."""
    import toy
    from tools import reproduce_real, worlds
    worlds.write_qwen3_policy(tmp_path / "policy", hidden=32, layers=2)
    worlds.write_polar_checkpoint(tmp_path / "polar")
    rows, evals = toy.train_eval_rows(0, n_train=40, n_eval=6)
    worlds.write_argilla_rows(tmp_path / "train.jsonl", rows)
    worlds.write_ifeval_rows(tmp_path / "eval.jsonl", evals)
    argv = ["--model", str(tmp_path / "policy"), "--dataset", str(tmp_path / "train.jsonl"),
            "--eval-dataset", str(tmp_path / "eval.jsonl"), "--discriminator-model", str(tmp_path / "polar"),
            "--steps", "2", "--seeds", "0", "--configs", "sft", "grpo", "sft -> grpo", "--device", "cpu",
            "--eval-limit", "3", "--eval-max-new-tokens", "8", "--out", str(tmp_path / "out"),
            "--train-args", "--rl-batch-size", "2", "--num-generations", "2", "--sft-batch-size", "2",
            "--max-completion-length", "8"]
    plan = reproduce_real.main(["--plan-only", *argv])
    assert "ASSUMED" in plan and "| sft -> grpo | 1 | sft -> grpo | 2 |" in plan
    md = reproduce_real.main(argv)
    saved = json.load(open(tmp_path / "out" / "real_table.json"))
    assert {r["name"] for r in saved["results"]} == {"base", "sft", "grpo", "sft -> grpo"}
    staged = json.load(open(tmp_path / "out" / "runs" / "sft->grpo-s0" / "stage2" / "config.json"))
    assert staged["model"].endswith("stage1/final") and staged["method"] == "grpo"
    assert staged["world"] == "real" and staged["discriminator"] == "polar" and staged["steps"] == 1
    assert "| sft -> grpo | 1 |" in md and "| UniAPL beats GRPO |" in md
    t0 = __import__("time").perf_counter()
    reproduce_real.main(argv)                                          # all kept: no train.py runs
    assert __import__("time").perf_counter() - t0 < 15


def test_the_shifted_pipeline_quick(tmp_path):
    """tools/shifted.py at --quick sizes: the grid (SFT first, GRPO from its choice, UniAPL), then
    every arm at two seeds, each trained in chunks of `train.py --resume auto` that end at its
    evaluation points; the report holds every arm, the family's claims and the curves."""
    from tools import shifted
    out = str(tmp_path)
    with pytest.raises(SystemExit, match="learning rates first"):
        reproduce.main(["shifted", "--quick", "--out", out])
    best = reproduce.main(["shifted-lr", "--quick", "--out", out, "--machine", "test"])
    assert set(best) == {"sft", "grpo", "uniapl"}
    grid = json.load(open(tmp_path / "toy_shifted_lr.json"))
    sft_run = json.load(open(tmp_path / "runs" / "shifted-lr" / f"grpo-lr{best['grpo']:g}-s0" / "config.json"))
    assert sft_run["model"].endswith(f"sft-lr{best['sft']:g}-s0/final")      # GRPO from SFT's choice
    assert len(grid["results"]) == 6
    results = reproduce.main(["shifted", "--quick", "--out", out, "--machine", "test"])
    assert {r["name"] for r in results} == set(shifted.ARMS) and {r["seed"] for r in results} == {0, 1}
    steps = {r["name"]: sorted(map(int, r["evals"])) for r in results if r["seed"] == 1}
    assert steps["S"] == [0, 2] and steps["A"] == [0, 4, 6] and steps["C"] == [0, 2, 4, 6]
    a = next(r for r in results if r["name"] == "A" and r["seed"] == 1)
    assert a["d_only"] == pytest.approx(sum(a["evals"][k]["d_only"] for k in ("4", "6")) / 2)
    run = tmp_path / "runs" / "shifted" / "A-s1"
    with open(run / "metrics.jsonl") as f:                     # two chunks, one line per step
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]
    cfg = json.load(open(run / "config.json"))
    assert cfg["model"].endswith("S-s1/final") and cfg["dataset"] == "toy:shifted"
    assert json.load(open(tmp_path / "runs" / "shifted" / "C0-s1" / "config.json"))["lambda_adv"] == 0
    md = (tmp_path / "toy_shifted.md").read_text()
    for claim, *_ in claims.SHIFT_CLAIMS:
        assert f"| {claim} |" in md
    assert (tmp_path / "toy_shifted.png").stat().st_size > 1000
    again = reproduce.main(["shifted", "--quick", "--out", out, "--machine", "test"])   # all kept
    assert [r["d_only"] for r in again] == [r["d_only"] for r in results]


def test_a_greedy_answer_cut_short_is_the_short_answer(model, tok, toy_rows):
    """The shifted report scores 64 tokens as the first 64 of a 128-token greedy answer: the same
    as a call that asks for 64, answer for answer, and finished exactly where it stopped in time."""
    import rollouts
    from tools import shifted
    rows = toy_rows[1][:12]
    long = rollouts.HFEngine(batch_size=5).generate(model, tok, rows, 1, greedy=True, max_new_tokens=24)
    short = rollouts.HFEngine(batch_size=5).generate(model, tok, rows, 1, greedy=True, max_new_tokens=6)
    texts, done = shifted.cut(long, tok, 6)
    assert texts == short.texts and done == (~short.truncated).tolist()
    assert not all(done) and shifted.cut(long, tok, 24)[0] == long.texts


def test_the_gsm8k_pipeline_quick(tmp_path):
    """tools/process_rewards.py at --quick sizes: the grid, then every arm at two seeds from each
    seed's base student (trained once), the flawed teacher's arms on its world, the process
    reward's arms with the pre-registered weights; the report holds the family's claims."""
    from tools import process_rewards
    out = str(tmp_path)
    with pytest.raises(SystemExit, match="learning rates first"):
        reproduce.main(["gsm8k", "--quick", "--out", out])
    best = reproduce.main(["gsm8k-lr", "--quick", "--out", out, "--machine", "test"])
    assert set(best) == {"sft", "grpo", "uniapl"}
    results = reproduce.main(["gsm8k", "--quick", "--out", out, "--machine", "test"])
    assert {r["name"] for r in results} == set(process_rewards.ARMS) and {r["seed"] for r in results} == {0, 1}
    runs = tmp_path / "runs" / "gsm8k"
    cfg = json.load(open(runs / "arms" / "grpo_answer+steps-s1" / "stage1" / "config.json"))
    assert cfg["task"] == "gsm8k" and cfg["reward"] == ["answer", "steps"] and cfg["reward_weights"] == [1, 0.5]
    assert cfg["model"].endswith("gsm8k/base/seed1/final") and cfg["learning_rate"] == best["grpo"]
    assert json.load(open(runs / "arms" / "uniapl_flawedteacher-s0" / "stage1" / "config.json"))["dataset"] == \
        "toy:flawed"
    assert json.load(open(runs / "base" / "seed0" / "config.json"))["steps"] == 4
    md = (tmp_path / "toy_gsm8k.md").read_text()
    for claim, *_ in claims.GSM8K_CLAIMS:
        assert f"| {claim} |" in md


def test_the_seed_rules_by_hand():
    """From the first seeds' spread, the most any claim needs to see its gap (here one claim of a
    one-claim family: (z(0.975) + z(0.8))^2 (sd / gap)^2), kept within the family's bounds."""
    family = [("c", "a", "b", "accuracy", 1, "")]
    rs = [{"name": n, "seed": s, "accuracy": x} for s in range(10)
          for n, x in (("a", 0.5 + 0.02 * (s % 2)), ("b", 0.5 - 0.02 * (s % 2)))]
    sd = claims.paired(rs, "a", "b")["sd"]
    assert claims.seeds_by_rule(rs, family, 10, 0.01, 2, 99) == claims.seeds_needed(sd, 0.01, 1)
    assert claims.seeds_by_rule(rs, family, 10, 0.5, 12, 30) == 12         # the floor
    assert claims.seeds_by_rule(rs, family, 10, 0.001, 12, 30) == 30       # the ceiling
    assert claims.shift_seeds([]) == claims.SHIFT_SEEDS_PLANNED
    assert claims.gsm8k_seeds([]) == claims.GSM8K_SEEDS_MIN


def test_a_finished_run_is_what_it_is_not_how_it_ran(tmp_path):
    """`finished` keeps a run whose settings match, whichever engine, device or tracker ran it,
    and refuses one whose method, rate or length differ (it would be run again)."""
    import dataclasses
    import os

    import settings
    argv = ["--model", "toy", "--method", "sft", "--steps", "20", "--learning-rate", "1e-3"]
    out = str(tmp_path)
    os.makedirs(os.path.join(out, "final"))
    for name in ("eval_final.json", "final/model.safetensors"):
        open(os.path.join(out, name), "w").close()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(settings.parse(argv + ["--rollout-engine", "auto"])), f)
    assert reproduce.finished(out, argv + ["--rollout-engine", "hf", "--no-progress"])
    assert not reproduce.finished(out, argv[:-1] + ["3e-4"])
    assert not reproduce.finished(out, argv[:5] + ["40"] + argv[6:])
    assert not reproduce.finished(str(tmp_path / "elsewhere"), argv)


def test_the_gsm8k_report_judges_no_claim_before_the_rule_s_seeds(tmp_path):
    """Interim tables show the arms' means; the claims wait for the seeds the rule asks for."""
    from tools import process_rewards
    rs = [{"name": name, "seed": seed, "accuracy": 0.3 + 0.01 * seed, "steps_right": 0.5, "clean": 0.2,
           "flaw_rate": 0.1} for seed in range(3) for name in process_rewards.ARMS]
    args = argparse.Namespace(out=str(tmp_path), quick=False, machine="test")
    md = process_rewards.report(rs, {"sft": 1e-4}, args)
    assert "every arm has run at 3 of the at least 12 seeds" in md and "| uniapl | 3 |" in md
    assert "| verdict |" not in md and "reproduced" not in md and "inconclusive" not in md
    assert "The seed rule applies once seeds 0-9 have run every arm." in md
    assert "| verdict |" in process_rewards.report(rs, {"sft": 1e-4}, argparse.Namespace(**{**vars(args),
                                                                                             "quick": True}))
    # seeds 0-11 run, spreads that ask for more seeds than 12: the interim line names the rule's count
    import random
    noise = random.Random(0)
    rs = [{"name": name, "seed": seed, "accuracy": noise.random(), "steps_right": 0.5, "clean": noise.random(),
           "flaw_rate": noise.random()} for seed in range(12) for name in process_rewards.ARMS]
    rs += [{**rs[0], "seed": 12}]                     # a base student trained ahead of its arms
    md = process_rewards.report(rs, {"sft": 1e-4}, args)
    assert "The seed rule, applied to seeds 0-9: **30 seeds**." in md and "| verdict |" not in md
    assert "every arm has run at 12 of the 30 seeds" in md and "seeds 0-11 (12)" in md


def test_report_only_runs_nothing_and_writes_the_interim_report(tmp_path):
    from tools import process_rewards
    rs = [{"name": name, "seed": 0, "accuracy": 0.3, "steps_right": 0.5, "clean": 0.2, "flaw_rate": 0.1}
          for name in process_rewards.ARMS]
    (tmp_path / "toy_gsm8k_lr.json").write_text(json.dumps({"results": [], "best": {"sft": 1e-4}}))
    (tmp_path / "toy_gsm8k.json").write_text(json.dumps({"results": rs}))
    reproduce.main(["gsm8k", "--out", str(tmp_path), "--report-only", "--machine", "here"])
    assert json.load(open(tmp_path / "toy_gsm8k.json"))["results"] == rs
    assert "every arm has run at 1 of the at least 12 seeds" in (tmp_path / "toy_gsm8k.md").read_text()
    with pytest.raises(SystemExit, match="--report-only: for shifted and gsm8k"):
        reproduce.main(["main", "--out", str(tmp_path), "--report-only"])
