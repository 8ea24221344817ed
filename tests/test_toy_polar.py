"""tools/toy_polar.py: the toy's POLAR is built in POLAR's released format and scores through the
real run's `polar` path; its prompts are never an experiment's evaluation or validation prompts."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import polar
import toy
import train
from tests.test_train import TINY
from tools import toy_polar


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_polar")
    return toy_polar.main(["--out", str(out), "--quick"]), out


def test_the_population_never_answers_an_evaluation_or_validation_prompt():
    rows = toy_polar.training_prompts(50)
    prompts = {r["prompt"] for r in rows}
    for seed in range(toy_polar.N_EXPERIMENT_SEEDS):
        assert not prompts & toy.held_back(seed), seed
    assert not any(toy.is_held_out(r["instruction_id_list"]) for r in rows)   # the holdout world's kind


def test_the_conversion_to_internlm2_is_polars_read_inverted():
    from transformers import LlamaModel
    cfg = dict(toy_polar.CFG, vocab_size=50)
    torch.manual_seed(0)
    model = LlamaModel(polar.llama_config_from_internlm2(cfg))
    v_head = torch.randn(1, cfg["hidden_size"])
    internlm2 = toy_polar.to_internlm2_state_dict(model.state_dict(), v_head, cfg)
    assert any(".attention.wqkv." in k for k in internlm2) and "v_head.weight" in internlm2
    back, v = polar.convert_internlm2_state_dict(internlm2, cfg)
    sd = model.state_dict()
    assert back.keys() == {k for k in sd if "rotary" not in k}
    assert all(torch.equal(back[k], sd[k]) for k in back) and torch.equal(v, v_head)


def test_the_build_writes_polars_files_that_score_as_the_trained_model(built):
    res, out = built
    path = res["path"]
    assert json.load(open(os.path.join(path, "config.json")))["architectures"] == ["InternLM2ForRewardModel"]
    assert any(".attention.wqkv." in k for k in load_file(os.path.join(path, "model.safetensors")))
    assert res["files_vs_trained_max_abs"] <= 1e-4
    assert res["held_out_policies"] and res["pretrain_pairs"] > 0 and res["finetune_pairs"] > 0
    md = (out / "toy_polar.md").read_text()
    assert "same_policy/held_out_policy" in md and (out / "toy_polar.png").stat().st_size > 1000
    (out / "toy_polar.md").unlink()
    toy_polar.main(["--out", str(out), "--report"])        # the table again, from the JSON alone
    assert (out / "toy_polar.md").read_text() == md


def test_the_toy_trains_with_it_through_the_polar_path(built, tmp_path):
    res, _ = built
    train.main(TINY + ["--method", "uniapl", "--discriminator", "polar", "--discriminator-model",
                       res["path"], "--out", str(tmp_path)])
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert all("adv/d_mean" in m and torch.isfinite(torch.tensor(m["adv/d_mean"])) for m in lines)


def test_the_build_is_repeatable(built, tmp_path):
    """Seeded from the students' sampling to the last optimizer step: a second build, from
    nothing, writes the same files (and a different model would not)."""
    res, _ = built
    again = toy_polar.build(str(tmp_path), quick=True)
    for name in ("model.safetensors", "tokenizer.model", "config.json"):
        assert open(os.path.join(again["path"], name), "rb").read() == \
            open(os.path.join(res["path"], name), "rb").read(), name
    assert again["accuracy"] == res["accuracy"] and again["pretrain_loss"] == res["pretrain_loss"]
