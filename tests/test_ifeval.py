"""ifeval.py: every instruction type passes and fails on hand-written responses; metrics; errors."""

import json

import pytest

import ifeval

# (instruction_id, kwargs, response, expected) — written by hand, edge cases included.
CASES = [
    # keywords:existence — case-insensitive search
    ("keywords:existence", {"keywords": ["river", "Stone"]}, "The RIVER ran past a stone.", True),
    ("keywords:existence", {"keywords": ["river", "stone"]}, "The river ran past a rock.", False),
    # keywords:frequency — "less than N" vs "at least N" boundaries, case-insensitive
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "Cat and CAT.", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "Cat and CAT.", False),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "One cat only.", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "cat cat", False),
    # keywords:forbidden_words — whole word, case-insensitive
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A category of dogs.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "My CAT sleeps.", False),
    # keywords:letter_frequency
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "at least"},
     "A banana", True),   # a, a, a, a (lower-cased)
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 1, "let_relation": "at least"},
     "no such letter", False),
    ("keywords:letter_frequency", {"letter": "b", "let_frequency": 1, "let_relation": "less than"},
     "Bob", False),
    # language:response_language (langdetect, seeded)
    ("language:response_language", {"language": "en"},
     "This is clearly a sentence written in the English language, with many common words.", True),
    ("language:response_language", {"language": "en"},
     "Ceci est une phrase écrite en français avec beaucoup de mots très courants.", False),
    # length_constraints:number_sentences
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith came home. He slept.", True),   # "Dr." does not end a sentence: 2 sentences
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "One. Two! Three?", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "It costs 3.5 dollars. Cheap.", False),     # the decimal point does not split
    # length_constraints:number_paragraphs — *** dividers; an empty inner part fails
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nFirst.\n***\nSecond.\n***",
     True),  # dividers at the very start/end are not paragraphs
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "A\n***\n***\nB", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "A\n***\nB", False),
    # length_constraints:number_words — \w+ tokens, boundaries
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"},
     "one two, three", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"},
     "one two, three", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"},
     "one two-three", True),   # "two-three" is two \w+ tokens
    # length_constraints:nth_paragraph_first_word
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Hello there.\n\n\"Then, we left.", True),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Hello there.\n\nAfter that we left.", False),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "then"},
     "Hello there.\n\nThen we left.", False),   # wrong paragraph count
    # detectable_content:number_placeholders
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name].", False),
    # detectable_content:postscript
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\np.s. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\nP.P.S more", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body. PS missing dots", False),
    # detectable_format:number_bullet_lists — exactly N
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two\ntext", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n* three", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, "**bold** line\n* one", True),
    # detectable_format:constrained_response
    ("detectable_format:constrained_response", {}, "Well. My answer is maybe.", True),
    ("detectable_format:constrained_response", {}, "my answer is yes", False),
    # detectable_format:number_highlighted_sections — empty spans do not count
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*one* and **two**", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and ** **",
     False),
    # detectable_format:multiple_sections
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nfoo", False),
    # detectable_format:json_format — fences stripped
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, '  {"a": [1, 2]}  \n', True),
    ("detectable_format:json_format", {}, "{'a': 1}", False),
    # detectable_format:title
    ("detectable_format:title", {}, "<<My Poem>>\nroses", True),
    ("detectable_format:title", {}, "<<  >> roses", False),
    # combination:two_responses
    ("combination:two_responses", {}, "first answer\n******\nsecond answer", True),
    ("combination:two_responses", {}, "same\n******\nsame", False),
    ("combination:two_responses", {}, "a\n******\n******\nb", False),
    # combination:repeat_prompt — case-insensitive prefix
    ("combination:repeat_prompt", {"prompt_to_repeat": "Tell me a joke."},
     "TELL ME A JOKE. Why did...", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Tell me a joke."},
     "Sure! Tell me a joke.", False),
    # startend:end_checker — trailing whitespace and a closing quote are ignored
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Text. any other questions?  \n", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "\"Text. Any other questions?\"", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Any other questions? Bye.", False),
    # startend:quotation
    ("startend:quotation", {}, '  "quoted"\n', True),
    ("startend:quotation", {}, '"', False),
    ("startend:quotation", {}, '"not closed', False),
    # change_case:capital_word_frequency
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY good", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "THIS is VERY good", False),
    # change_case:english_capital / english_lowercase
    ("change_case:english_capital", {}, "THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER TODAY.",
     True),
    ("change_case:english_capital", {}, "This is an English sentence about the weather.", False),
    ("change_case:english_lowercase", {}, "this is an english sentence about the weather today.",
     True),
    ("change_case:english_lowercase", {}, "this is an English sentence.", False),
    # punctuation:no_comma
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "Well, no.", False),
]


@pytest.mark.parametrize("iid,kwargs,response,expected", CASES)
def test_strict_checks(iid, kwargs, response, expected):
    assert ifeval.check_instruction(iid, kwargs, response) is expected


def test_every_instruction_has_a_pass_and_a_fail_case():
    seen = {(c[0], c[3]) for c in CASES}
    for iid in ifeval.REGISTRY:
        assert (iid, True) in seen and (iid, False) in seen, iid
    assert len(ifeval.REGISTRY) == 25


def test_none_kwargs_are_ignored_like_google_ifeval_rows():
    kwargs = {"keywords": None, "num_words": 3, "relation": "less than", "end_phrase": None}
    assert ifeval.check_instruction("length_constraints:number_words", kwargs, "one two")


def test_repeat_prompt_falls_back_to_the_row_prompt():
    assert ifeval.check_instruction("combination:repeat_prompt", {}, "Say hi. Hi!", prompt="Say hi.")
    assert not ifeval.check_instruction("combination:repeat_prompt", {}, "Hi!", prompt="Say hi.")


def test_empty_response_fails_everything_and_rewards_zero():
    assert not ifeval.check_instruction("punctuation:no_comma", {}, "   \n")
    assert ifeval.reward("  ", ["punctuation:no_comma"], [{}]) == 0.0


def test_reward_is_fraction_satisfied():
    ids = ["punctuation:no_comma", "startend:quotation", "keywords:existence"]
    kws = [{}, {}, {"keywords": ["moon"]}]
    assert ifeval.reward('"Hello, moon"', ids, kws) == pytest.approx(2 / 3)
    assert ifeval.reward("Hello moon", ids, json.dumps(kws)) == pytest.approx(2 / 3)  # JSON string


def test_loose_passes_where_strict_fails():
    # The response's first line is chatter: strict quotation fails, loose drops that line.
    resp = 'Sure, here it is:\n"quoted answer"'
    assert not ifeval.check_instruction("startend:quotation", {}, resp)
    assert ifeval.loose_check("startend:quotation", {}, resp)
    # '*' removal: markdown emphasis around a quoted answer
    assert not ifeval.check_instruction("startend:quotation", {}, "*\"x\"*")
    assert ifeval.loose_check("startend:quotation", {}, "*\"x\"*")
    # something that fails on every variant fails loose too
    assert not ifeval.loose_check("punctuation:no_comma", {}, "a, b\nc, d\ne, f")


def test_evaluate_pools_instruction_level_over_all_instructions():
    rows = [
        {"prompt": "p1", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"prompt": "p2", "instruction_id_list": ["punctuation:no_comma", "startend:quotation",
                                                 "detectable_format:title"],
         "kwargs": [{}, {}, {}]},
    ]
    responses = ["no commas", 'Intro, line\n"<<t>> a, b"']
    m = ifeval.evaluate(rows, responses)
    # strict: row1 1/1, row2: comma fails, quotation fails (first line), title passes -> 1/3
    assert m["prompt_strict"] == 0.5
    assert m["inst_strict"] == pytest.approx(2 / 4)   # pooled: (1 + 1) / 4, not mean(1, 1/3)
    # loose: row2 without its first line is '"<<t>> a, b"' -> quotation passes; the comma is in
    # every non-empty variant, so no_comma still fails
    assert m["inst_loose"] == pytest.approx(3 / 4)
    assert m["prompt_loose"] == 0.5
    assert m["per_instruction"]["punctuation:no_comma"] == {"count": 2, "strict": 0.5, "loose": 0.5}
    assert m["n_instructions"] == 4


def test_trl_reward_signature_with_strings_and_messages():
    out = ifeval.fraction(
        prompts=["a", [{"role": "user", "content": "b"}]],
        completions=["x, y", [{"role": "assistant", "content": "x y"}]],
        instruction_id_list=[["punctuation:no_comma"], ["punctuation:no_comma"]],
        kwargs=[[{}], '[{}]'], extra_column=[1, 2])
    assert out == [0.0, 1.0]


@pytest.mark.parametrize("iid,kwargs,message", [
    ("keywords:nope", {}, "unknown instruction id 'keywords:nope'; known ids: change_case"),
    ("keywords:frequency", {"keyword": "a", "frequency": 2}, "missing required kwarg 'relation'"),
    ("keywords:frequency", {"keyword": "a", "frequency": "2", "relation": "at least"},
     "kwarg 'frequency' must be an integer"),
    ("keywords:frequency", {"keyword": "a", "frequency": 2, "relation": "at most"},
     "kwarg 'relation' must be one of ['less than', 'at least']"),
    ("keywords:existence", {"keywords": "cat"}, "kwarg 'keywords' must be a list of strings"),
    ("punctuation:no_comma", {"num_words": 3}, "unexpected kwarg(s) ['num_words']"),
    ("length_constraints:number_words", {"num_words": 2.5, "relation": "less than"},
     "kwarg 'num_words' must be an integer"),
])
def test_bad_input_errors_name_the_instruction_and_argument(iid, kwargs, message):
    with pytest.raises(ValueError) as e:
        ifeval.check_instruction(iid, kwargs, "text")
    assert message in str(e.value)
    assert repr(iid) in str(e.value)


def test_integral_floats_from_parquet_are_accepted():
    assert ifeval.validate("length_constraints:number_words",
                           {"num_words": 3.0, "relation": "less than"})["num_words"] == 3


def test_count_sentences_examples():
    assert ifeval.count_sentences("Hello world. How are you? Fine!") == 3
    assert ifeval.count_sentences("e.g. this is one sentence.") == 1
    assert ifeval.count_sentences('He said "Stop." Then he left') == 2
    assert ifeval.count_sentences("") == 0
