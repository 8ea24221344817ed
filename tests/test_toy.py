"""toy.py: deterministic task, teacher accuracy as set, disjoint splits, tokenizer and model."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import ifeval
import toy


def test_rows_are_deterministic_per_seed():
    assert toy.make_rows(50, seed=3) == toy.make_rows(50, seed=3)
    assert toy.make_rows(50, seed=3) != toy.make_rows(50, seed=4)


@pytest.mark.parametrize("acc", [0.0, 0.65, 1.0])
def test_teacher_accuracy_matches_the_setting(acc):
    rows = toy.make_rows(1500, seed=7, teacher_accuracy=acc)
    measured = sum(ifeval.reward(r["response"], r["instruction_id_list"], r["kwargs"]) == 1
                   for r in rows) / len(rows)
    assert abs(measured - acc) < 0.04, measured


def test_train_and_eval_prompts_are_disjoint_and_valid():
    train, evals = toy.train_eval_rows(seed=0, n_train=500, n_eval=100)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert len(evals) == 100
    assert data.validate_rows(train, "toy") == train   # already in the normalised schema
    ids = {i for r in train for i in r["instruction_id_list"]}
    assert ids <= set(ifeval.REGISTRY) and len(ids) >= 8


def test_tokenizer_round_trips_any_text_and_has_chat_format(tok):
    for text in ["Describe the cat. Do not use any commas.", "héllo 日本 <<T>>\n\"q\" P.S. ***",
                 "zzqx unseen-words 12345 \t tabs"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok(" river", add_special_tokens=False)["input_ids"]) == 1  # toy words: one token
    chat = data.chat_prompt(tok, "hi")
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert toy.build_tokenizer().get_vocab() == tok.get_vocab()         # deterministic


def test_model_size_and_tied_head(model):
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 < n < 1_000_000
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_save_and_load_round_trip(tmp_path, model, tok):
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([tok("Describe the moon.")["input_ids"]])
    assert torch.equal(model(ids).logits, model2(ids).logits)
    assert data.chat_prompt(tok2, "x") == data.chat_prompt(tok, "x")
    assert tok2.padding_side == "left" and tok2.eos_token == "<|im_end|>"


def test_world_variants():
    """base: the teacher ignores instructions; flawed: it always breaks FLAW; holdout: training
    never combines a held-out pair; validation: prompts disjoint from training and evaluation."""
    import ifeval
    ok = lambda r: ifeval.reward(r["response"], r["instruction_id_list"], r["kwargs"]) == 1  # noqa: E731
    base, _ = toy.train_eval_rows(0, n_train=300, n_eval=10, variant="base")
    scripted, evals = toy.train_eval_rows(0, n_train=300, n_eval=300)
    assert sum(map(ok, base)) / len(base) < 0.15 < 0.5 < sum(map(ok, scripted)) / len(scripted)
    flawed, _ = toy.train_eval_rows(0, n_train=300, n_eval=10, variant="flawed")
    asked = [r for r in flawed if toy.FLAW in r["instruction_id_list"]]
    assert asked and not any(ifeval.check_instruction(toy.FLAW, {}, r["response"]) for r in asked)
    held, held_eval = toy.train_eval_rows(0, n_train=300, n_eval=300, variant="holdout")
    assert not any(toy.is_held_out(r["instruction_id_list"]) for r in held)
    assert any(toy.is_held_out(r["instruction_id_list"]) for r in held_eval)
    val = toy.validation_rows(0, n=50)
    seen = {r["prompt"] for r in scripted} | {r["prompt"] for r in toy.train_eval_rows(0, 300, 1000)[1]}
    assert len(val) == 50 and not seen & {r["prompt"] for r in val}


def test_no_evaluation_prompt_is_ever_trained_on():
    """Every (training variant, evaluation or validation set) pair over seeds 0-4, at the sizes
    the experiment uses and beyond: no shared prompt. (Before the split was fixed, 10-26 of 300
    evaluation prompts per seed were training prompts of another variant, and they scored about
    three times higher than the clean ones.) The base model's rows count as training too."""
    for seed in range(5):
        held = {"evaluation": {r["prompt"] for r in toy.train_eval_rows(seed, 1, toy.HELD_BACK)[1]},
                "evaluation (flawed)": {r["prompt"] for r in toy.train_eval_rows(
                    seed, 1, toy.HELD_BACK, variant="flawed")[1]},
                "validation": {r["prompt"] for r in toy.validation_rows(seed, toy.HELD_BACK)}}
        assert not held["evaluation"] & held["validation"]
        trained = {variant: {r["prompt"] for r in toy.train_eval_rows(seed, 3000, 1, variant=variant)[0]}
                   for variant in ("", "base", "flawed", "holdout")}
        trained |= {f"{shift} (RL prompts)": {r["prompt"] for r in toy.rl_rows(seed, 3000, shift)}
                    for shift in toy.SHIFTS}
        for variant, train in trained.items():
            for name, prompts in held.items():
                assert not train & prompts, (seed, variant, name, len(train & prompts))
    # a smaller evaluation set is a prefix of a larger one
    a = toy.train_eval_rows(0, 1, 300)[1]
    assert [r["prompt"] for r in a[:100]] == [r["prompt"] for r in toy.train_eval_rows(0, 1, 100)[1]]


@pytest.mark.parametrize("variant", ["", "holdout", "flawed"])
def test_another_teacher_answers_the_same_prompts(variant):
    """--teacher-accuracy changes the teacher's answers and nothing else: the prompts of every
    split are the world's (0.65) ones, in order (before, make_rows skipped a prompt whose
    violation the checker passed, which depends on the teacher's draws: with 0.3, only about
    60 of 100 evaluation prompts were shared), and its measured accuracy is the setting."""
    world_train, world_eval = toy.train_eval_rows(3, 1500, 300, variant=variant)
    world_val = toy.validation_rows(3, 300)
    for acc in (0.0, 0.3, 0.95, 1.0):
        train, evals = toy.train_eval_rows(3, 1500, 300, teacher_accuracy=acc, variant=variant)
        val = toy.validation_rows(3, 300, teacher_accuracy=acc)
        for mine, world in ((train, world_train), (evals, world_eval), (val, world_val)):
            assert [dict(r, response="") for r in mine] == [dict(r, response="") for r in world]
        passed = [ifeval.reward(r["response"], r["instruction_id_list"], r["kwargs"], r["prompt"]) == 1
                  for r in train]
        if variant == "flawed":     # the flawed teacher still always breaks FLAW
            assert not any(p for p, r in zip(passed, train) if toy.FLAW in r["instruction_id_list"])
            passed = [p for p, r in zip(passed, train) if toy.FLAW not in r["instruction_id_list"]]
        assert abs(sum(passed) / len(passed) - acc) < 0.04, (acc, sum(passed) / len(passed))
    again = toy.train_eval_rows(3, 1500, 300, teacher_accuracy=0.8, variant=variant)
    assert again == toy.train_eval_rows(3, 1500, 300, teacher_accuracy=0.8, variant=variant)
    assert again[0] != world_train


def test_the_shifted_worlds_rl_prompts_ask_only_for_their_family():
    """toy:shifted and toy:shifted-nolength: demonstrations and evaluation are the ordinary
    world's (every type); the RL prompts are a stream of their own whose instructions all lie in
    R, answered by the 0.65 teacher (L_ADV's references); toy:unshifted's stream has every type.
    Every evaluation prompt is in exactly one family."""
    import collections

    import data
    demos = data.load_rows("toy:shifted", "train", toy_seed=2, toy_n=300)
    assert demos == data.load_rows("toy", "train", toy_seed=2, toy_n=300)
    assert data.load_rows("toy:shifted", "eval", toy_seed=2, toy_eval_n=50) == \
        data.load_rows("toy", "eval", toy_seed=2, toy_eval_n=50)
    for shift, r_types in toy.SHIFTS.items():
        rl = data.load_rows(f"toy:{shift}", "rl", toy_seed=2, toy_n=400)
        asked = collections.Counter(i for r in rl for i in r["instruction_id_list"])
        assert set(asked) == set(r_types), (shift, asked)
        assert rl[0]["key"].startswith("toy-rl-")                               # a stream of its own
        passed = [ifeval.reward(r["response"], r["instruction_id_list"], r["kwargs"], r["prompt"]) == 1
                  for r in rl]
        assert abs(sum(passed) / len(passed) - toy.TEACHER_ACCURACY) < 0.07
    assert "length_constraints:number_words" not in toy.SHIFTS["shifted-nolength"]
    assert toy.family(["punctuation:no_comma", "startend:quotation"], "shifted") == "R-only"
    assert toy.family(["keywords:existence"], "shifted") == "D-only"
    assert toy.family(["keywords:existence", "punctuation:no_comma"], "shifted") == "mixed"
    assert toy.family(["length_constraints:number_words"], "shifted-nolength") == "D-only"
    assert data.load_rows("toy:holdout", "rl") is None and data.load_rows("toy", "rl") is None


def test_a_shifted_world_trains_its_rl_prompts_and_its_demonstrations_apart(tmp_path, monkeypatch):
    """train.py on toy:shifted rolls out only R prompts and imitates demonstrations of every type."""
    import data
    import train
    seen = {"demos": set(), "prompts": set()}
    real = data.MixedSampler.__init__

    def spy(self, demos, prompts, *a, **k):
        seen["demos"] |= {i for r in demos for i in r["instruction_id_list"]}
        seen["prompts"] |= {i for r in prompts for i in r["instruction_id_list"]}
        return real(self, demos, prompts, *a, **k)

    monkeypatch.setattr(data.MixedSampler, "__init__", spy)
    train.main(["--dataset", "toy:shifted", "--steps", "1", "--sft-batch-size", "2", "--rl-batch-size", "2",
                "--num-generations", "2", "--max-completion-length", "8", "--eval-limit", "2",
                "--no-progress", "--out", str(tmp_path)])
    assert seen["prompts"] == set(toy.R_FAMILY) and seen["demos"] == set(toy.INSTRUCTIONS)
    with pytest.raises(data.DataError, match="stream of their own"):
        train.main(["--dataset", "toy:shifted", "--pool-split", "disjoint", "--steps", "1",
                    "--no-progress", "--out", str(tmp_path / "b")])
