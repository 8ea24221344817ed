"""gsm8k.py: the hub's rows read from a local .parquet, bad rows refused in one line, GSM8K's
grader and the process reward by hand (never eval), the metrics, and the world in miniature."""

import pytest

import data
import gsm8k
import tasks

HUB = [  # openai/gsm8k, config main: exactly its two columns
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                 "in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
               "clips altogether in April and May.\n#### 72"},
    {"question": "A shop had 1,200 pens and sold 250. How many are left?",
     "answer": "1,200 - 250 = <<1200-250=950>>950 pens are left.\n#### 950"},
]


def test_hub_rows_from_a_local_parquet_are_normalised(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "gsm8k.parquet")
    pq.write_table(pa.Table.from_pylist(HUB), path)
    rows = data.load_rows(path, task=gsm8k)
    assert rows[0] == {"prompt": HUB[0]["question"], "response": HUB[0]["answer"], "answer": "72",
                       "key": f"{path}-0"}
    assert rows[1]["answer"] == "950"
    data.write_jsonl(rows, str(tmp_path / "rows.jsonl"))             # normalised rows round-trip
    assert data.load_rows(str(tmp_path / "rows.jsonl"), task=gsm8k) == rows


@pytest.mark.parametrize("answer,message", [
    ("She sold 72 clips.", "field 'answer': the solution has no final '#### N' line"),
    ("She sold some.\n#### many", "field 'answer': '#### many' is not a number"),
])
def test_bad_hub_rows_are_refused_naming_row_and_field(tmp_path, answer, message):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.Table.from_pylist([HUB[0], {"question": "How many?", "answer": answer}]), path)
    with pytest.raises(data.DataError) as e:
        data.load_rows(path, task=gsm8k)
    assert str(e.value) == f"{path}: row 1 (key '?'): {message}"
    with pytest.raises(data.DataError, match="row 0 .*field 'answer': 'seventy' is not a number"):
        data.validate_rows([{"prompt": "p", "answer": "seventy"}], "rows", task=gsm8k)


def test_the_answer_reward_is_gsm8ks_grader():
    """The number after the first '####', commas removed; '$', minus and decimals as documented;
    no final answer scores 0 (not None); chat-message completions are read as TRL passes them."""
    completions = ["so 72\n#### 72", "#### 1,234", "#### $72", "#### 72.0", "#### -3", "it is 72",
                   "#### 71", [{"role": "assistant", "content": "#### 72"}], "#### 72 then #### 5"]
    answers = ["72", "1234", "72", "72", "-3", "72", "72", "72", "72"]
    assert gsm8k.answer_reward(["q"] * 9, completions, answers) == [1, 1, 1, 1, 1, 0, 0, 1, 1]


def test_the_process_reward_checks_each_calculation_and_never_runs_code():
    assert gsm8k.step_reward(["q"] * 4, ["<<48/2=24>>24 <<48+24=72>>", "<<48/2=23>>23 <<48+23=71>>",
                                         "no working", "<<10/3=3.33>> <<(2+3)*4=20>> <<7-10=-3>>"]) \
        == [1.0, 0.5, None, 1.0]
    assert gsm8k.calculation_right("10/3", "3.33") and gsm8k.calculation_right("10/3", "3.3333")
    assert not gsm8k.calculation_right("10/3", "3.3334") and not gsm8k.calculation_right("10/3", "3.4")
    assert gsm8k.calculation_right("1,200-250", "950") and not gsm8k.calculation_right("2*3", "six")
    for hostile in ("__import__('os').getcwd()", "2**100000", "open('x')", "(1).real", "x+1", "1/0"):
        assert not gsm8k.calculation_right(hostile, "1")
    with pytest.raises(ValueError, match="not arithmetic"):
        gsm8k.arithmetic("__import__('os')")


def test_metrics_by_hand():
    rows = [{"prompt": "q", "answer": "5", "flawed_answer": "7"}, {"prompt": "q", "answer": "3"},
            {"prompt": "q", "answer": "9", "flawed_answer": "9"}]
    texts = ["<<2+3=5>>5\n#### 5", "<<1+1=3>>3\n#### 3", "#### 9"]
    m = gsm8k.evaluate(rows, texts)
    assert m["accuracy"] == 1.0 and m["steps_right"] == 0.5 and m["clean"] == pytest.approx(2 / 3)
    assert m["flaw_rate"] == 0.0 and m["n_flawed"] == 1                 # row 3's flaw changes nothing
    assert gsm8k.evaluate(rows[:1], ["#### 7"])["flaw_rate"] == 1.0


def test_the_task_module_has_every_name_and_rewards_resolve(tmp_path, monkeypatch):
    assert tasks.load("gsm8k") is gsm8k and tasks.load("ifeval").REWARDS
    fns = tasks.reward_functions(gsm8k, ["answer", "steps"], [1.0, 0.5])
    assert [(n, w) for n, _, w in fns] == [("answer", 1.0), ("steps", 0.5)]
    (tmp_path / "mytask.py").write_text("def mine(prompts, completions, **fields):\n"
                                        "    return [len(c) / 10 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tasks.reward_functions(gsm8k, ["mytask:mine"])[0][1](["q"], ["abcde"]) == [0.5]
    for bad, message in ((["nope"], "has answer, steps"), (["mytask:missing"], "missing"),
                         (["answer", "steps"], "1 weights for 2")):
        with pytest.raises(SystemExit, match=message):
            tasks.reward_functions(gsm8k, bad, [1.0] if len(bad) == 2 else None)
    with pytest.raises(SystemExit, match="defines no FIELDS"):
        tasks.load("mytask")


def test_the_toy_world_keeps_its_split_its_teacher_and_its_flaw():
    """Deterministic; no evaluation or validation prompt in training; the teacher's solutions are
    clean at its accuracy, its slips make wrong answers and its miswritten steps only wrong steps;
    the flawed teacher gives the no-borrow answer wherever a borrow is needed."""
    train = gsm8k.toy_rows("", "train", 3, 2000, 10, 0.65)
    assert train == gsm8k.toy_rows("", "train", 3, 2000, 10, 0.65)
    held = {r["prompt"] for v in ("", "validation") for r in gsm8k.toy_rows(v, "eval", 3, 1, 1000, 0.65)}
    assert not held & {r["prompt"] for r in train}
    m = gsm8k.evaluate(train, [r["response"] for r in train])
    assert abs(m["clean"] - 0.65) < 0.04 and m["accuracy"] > m["clean"] + 0.1   # miswritten: right answers
    assert gsm8k.no_borrow(52, 17) == 45 and gsm8k.no_borrow(57, 12) == 45
    flawed = gsm8k.toy_rows("flawed", "train", 3, 2000, 10, 0.65)
    assert [r["prompt"] for r in flawed] == [r["prompt"] for r in train]
    assert gsm8k.evaluate(flawed, [r["response"] for r in flawed])["flaw_rate"] > 0.6
    tok = gsm8k.toy_tokenizer()
    assert tok.tokenize("52")[-2:] == ["5", "2"] and tok.decode(tok(train[0]["response"])["input_ids"]) == \
        train[0]["response"]
