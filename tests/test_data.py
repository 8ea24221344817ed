"""data.py: every source format, every bad-row class, batches and the mixed sampler."""

import json

import pytest

import data

GOOD = {"key": 7, "prompt": "Write a poem.", "response": "A poem",
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
        "kwargs": [{}, {"num_words": 5, "relation": "less than"}]}


def test_google_ifeval_row_with_null_kwargs_and_no_response():
    row = {"key": 1000, "prompt": "Say hi without commas.",
           "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
           "kwargs": [{"num_words": None, "keywords": None},
                      {"num_words": None, "keywords": ["hi"]}]}
    out = data.normalise_row(row, "google/IFEval", 0)
    assert out["kwargs"] == [{}, {"keywords": ["hi"]}] and out["response"] is None


def test_argilla_row_with_kwargs_as_json_string_and_extra_columns():
    row = {"key": 3, "prompt": "p", "response": "r",
           "instruction_id_list": ["detectable_format:title"], "kwargs": "[{\"num_words\": null}]",
           "prompt_level_strict_acc": True, "inst_level_strict_acc": [True]}
    out = data.normalise_row(row, "argilla/ifeval-like-data", 0)
    assert out["kwargs"] == [{}] and out["response"] == "r"


def test_local_jsonl_and_parquet_round_trip(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(dict(GOOD, key=8)) + "\n")
    rows = data.load_rows(str(path))
    assert [r["key"] for r in rows] == [7, 8]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([dict(GOOD, kwargs=json.dumps(GOOD["kwargs"]))]),
                   tmp_path / "rows.parquet")
    assert data.load_rows(str(tmp_path / "rows.parquet"))[0]["kwargs"] == rows[0]["kwargs"]


@pytest.mark.parametrize("change,field", [
    ({"prompt": None}, "missing field 'prompt'"),
    ({"prompt": 5}, "field 'prompt' must be a string"),
    ({"prompt": "  "}, "field 'prompt' is empty"),
    ({"response": 3}, "field 'response' must be a string or null"),
    ({"instruction_id_list": "punctuation:no_comma"}, "field 'instruction_id_list' must be a list"),
    ({"instruction_id_list": []}, "field 'instruction_id_list' is empty"),
    ({"instruction_id_list": ["nope:x", "punctuation:no_comma"]}, "unknown instruction id 'nope:x'"),
    ({"kwargs": [{}, {"num_words": 5}]}, "missing required kwarg 'relation'"),
    ({"kwargs": [{}, {"num_words": "5", "relation": "less than"}]}, "must be an integer"),
    ({"kwargs": "[{}, {"}, "field 'kwargs' is not valid JSON"),
    ({"kwargs": [{}]}, "field 'kwargs' has 1 entries for 2 instruction ids"),
])
def test_bad_rows_name_source_row_key_and_field(tmp_path, change, field):
    bad = dict(GOOD, key="k-2", **change)
    if change.get("prompt", "") is None:
        del bad["prompt"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [GOOD, GOOD, bad]) + "\n")
    with pytest.raises(data.DataError) as e:
        data.load_rows(str(path))     # the loader train.py uses
    msg = str(e.value)
    assert str(path) in msg and "row 2" in msg and "'k-2'" in msg and field in msg, msg


def test_bad_parquet_row_is_reported(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    bad = dict(GOOD, key=9, kwargs=json.dumps([{}, {"num_words": -1, "relation": "less than"}]))
    pq.write_table(pa.Table.from_pylist([dict(GOOD, kwargs=json.dumps(GOOD["kwargs"])), bad]),
                   tmp_path / "x.parquet")
    with pytest.raises(data.DataError, match=r"row 1 \(key 9\).*non-negative integer"):
        data.load_rows(str(tmp_path / "x.parquet"))


def test_unreadable_files_and_empty_dataset(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "x"\n')
    with pytest.raises(data.DataError, match="line 1 is not valid JSON"):
        data.load_rows(str(tmp_path / "a.jsonl"))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(data.DataError, match="the dataset is empty"):
        data.load_rows(str(tmp_path / "e.jsonl"))
    (tmp_path / "c.parquet").write_bytes(b"not parquet")
    with pytest.raises(data.DataError, match="cannot read parquet"):
        data.load_rows(str(tmp_path / "c.parquet"))
    with pytest.raises(data.DataError, match="no such file"):
        data.load_rows(str(tmp_path / "missing.jsonl"))


def test_skip_invalid_counts_and_reports(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [GOOD, dict(GOOD, prompt=""), GOOD]))
    rows = data.load_rows(str(path), skip_invalid=True)
    assert len(rows) == 2
    assert "skipped 1 of 3 invalid rows" in capsys.readouterr().err


def test_methods_that_need_responses_say_so():
    rows = [data.normalise_row(dict(GOOD, response=None), "src", 0)]
    with pytest.raises(data.DataError, match="method 'uniapl' needs teacher responses"):
        data.require_responses(rows, "src", "uniapl")


def test_over_long_prompts_are_left_out_and_counted_or_stop_when_strict(tok, capsys):
    rows = [data.normalise_row(dict(GOOD, prompt="word " * 200, key="long"), "src", 0),
            data.normalise_row(dict(GOOD, key="short"), "src", 1)]
    kept = data.check_prompt_lengths(rows, tok, 64, "src")
    assert [r["key"] for r in kept] == ["short"]
    err = capsys.readouterr().err
    assert "left out 1 of 2 rows" in err and "row 0 (key 'long')" in err      # never silent
    with pytest.raises(data.DataError, match="row 0.*'prompt' is .* tokens.*over --max-prompt-length 64"):
        data.check_prompt_lengths(rows, tok, 64, "src", strict=True)
    with pytest.raises(data.DataError, match="every prompt is over"):
        data.check_prompt_lengths(rows[:1], tok, 64, "src")


def test_hub_dataset_offline_gives_a_clear_error():
    with pytest.raises(data.DataError, match="could not load dataset 'google/IFEval'.*--dataset toy"):
        data.load_rows("google/IFEval")


def test_prompt_batch_is_left_padded(tok):
    ids, mask = data.encode_prompts(tok, ["Describe the cat.", "Tell me about the big old moon now."])
    assert ids.shape == mask.shape and mask[0, 0] == 0 and mask[:, -1].all()
    assert (ids[mask == 0] == tok.pad_token_id).all()
    assert tok.decode(ids[1][mask[1].bool()]) == data.chat_prompt(tok, "Tell me about the big old moon now.")


def test_demo_batch_scores_response_and_eos_only(tok):
    rows = [{"prompt": "Describe the cat.", "response": "The cat is calm."},
            {"prompt": "Describe the moon please.", "response": "Moon."}]
    b = data.demo_batch(tok, rows, max_response_length=50)
    for i, row in enumerate(rows):
        scored = b.input_ids[i][b.score_mask[i]]
        assert tok.decode(scored) == row["response"] + tok.eos_token
        assert tok.decode(b.input_ids[i][b.attention_mask[i].bool()]) == \
            data.chat_prompt(tok, row["prompt"]) + row["response"] + tok.eos_token
    assert b.truncated == 0
    assert data.demo_batch(tok, rows, max_response_length=2).truncated == 2


def test_mixed_sampler_is_deterministic_wraps_epochs_and_resumes():
    demos = [{"key": i} for i in range(5)]
    prompts = [{"key": 100 + i} for i in range(3)]
    a = data.MixedSampler(demos, prompts, 2, 2, seed=1)
    seq = [a.next() for _ in range(6)]
    keys = [r["key"] for b in seq for r in b.demos]
    assert sorted(keys[:5]) == list(range(5))            # the first epoch covers every demo once
    b = data.MixedSampler(demos, prompts, 2, 2, seed=1)
    for _ in range(3):
        b.next()
    state = b.state_dict()
    c = data.MixedSampler(demos, prompts, 2, 2, seed=1)
    c.load_state_dict(json.loads(json.dumps(state)))     # survives serialisation
    assert [c.next() for _ in range(3)] == seq[3:]
    assert data.MixedSampler(demos, prompts, 2, 2, seed=2).next() != seq[0]


def test_cli_convert(tmp_path, toy_rows):
    src = tmp_path / "rows.jsonl"
    data.write_jsonl([dict(r, response=None) for r in toy_rows[1][:6]], str(src))
    data.main(["convert", "--dataset", str(src), "--out", str(tmp_path / "conv.jsonl")])
    assert len(data.load_rows(str(tmp_path / "conv.jsonl"))) == 6
