"""discriminator.py: lexical and embedding scores; POLAR's input string, weight conversion, loading."""

import json
import math

import pytest
import torch

import discriminator as D
import polar
from tests.worlds import CFG, write_polar_checkpoint, write_polar_tokenizer

# ----------------------------------------------------------------------------------------------
# lexical and embedding
# ----------------------------------------------------------------------------------------------


def test_lexical_hand_computed():
    assert D.lexical_similarity("the cat sat", "the cat sat") == 1.0
    assert D.lexical_similarity("the cat sat", "dogs run fast") == 0.0
    # unigrams: ref {a, b, c}, cand {a, b, d}: P = R = 2/3 -> F1 2/3
    # bigrams: ref {ab, bc}, cand {ab, bd}: P = R = 1/2 -> F1 1/2
    assert D.lexical_similarity("a b c", "a b d") == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert D.lexical_similarity("a, b", "a b") < 1.0          # punctuation counts
    s = D.Lexical().score(["p", "p"], ["x y", "x y"], ["<think>\n\n</think>\n\nx y", "z"])
    assert s.tolist() == [1.0, 0.0]                            # the think block is stripped


def test_strip_think_only_removes_a_leading_block():
    assert D.strip_think("<think>\nhmm\n</think>\n\nAnswer") == "Answer"
    assert D.strip_think("Answer <think>x</think>") == "Answer <think>x</think>"


def _tiny_encoder(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    words = "[PAD] [UNK] [CLS] [SEP] the cat sat on a mat dog ran far away".split()
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(path)
    tok.save_pretrained(path)


def test_embedding_discriminator_from_a_local_directory(tmp_path):
    _tiny_encoder(tmp_path)
    disc = D.load_discriminator("embedding", str(tmp_path))
    s = disc.score(["p"] * 3, ["the cat sat on a mat"] * 3,
                   ["the cat sat on a mat", "dog ran far away", "the cat sat"])
    assert s.shape == (3,) and s[0].item() == pytest.approx(1.0, abs=1e-5)
    assert s[1] < s[0] and (s <= 1.0 + 1e-5).all()


def test_embedding_discriminator_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="cannot load encoder.*--discriminator lexical"):
        D.load_discriminator("embedding", str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------------------------
# POLAR: a tiny InternLM2-format checkpoint written in the test
# ----------------------------------------------------------------------------------------------

def internlm2_reference(sd, cfg, ids):
    """InternLM2's reward forward written from its published description, independent of transformers."""
    H, nh, kv, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], \
        cfg["rms_norm_eps"]
    d, g, T = H // nh, nh // kv, ids.shape[0]
    rms = lambda x, w: w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # noqa: E731
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()     # [T, d]
    rot = lambda t: torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1)  # noqa: E731
    w = {k: v.double() for k, v in sd.items()}
    x = w["model.tok_embeddings.weight"][ids]                                        # [T, H]
    causal = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = (rms(x, w[p + "attention_norm.weight"]) @ w[p + "attention.wqkv.weight"].T)
        qkv = qkv.view(T, kv, g + 2, d)             # per kv head: g queries, 1 key, 1 value
        q = qkv[:, :, :g].reshape(T, nh, d).transpose(0, 1)                          # [nh, T, d]
        k = qkv[:, :, g].transpose(0, 1)                                             # [kv, T, d]
        v = qkv[:, :, g + 1].transpose(0, 1)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)   # query head j -> kv j // g
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + causal, -1)
        x = x + (att @ v).transpose(0, 1).reshape(T, H) @ w[p + "attention.wo.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        x = x + (torch.nn.functional.silu(h @ w[p + "feed_forward.w1.weight"].T)
                 * (h @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
    return (rms(x, w["model.norm.weight"])[-1] @ w["v_head.weight"].T).item()


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_polar_conversion_matches_an_independent_internlm2(tmp_path, fmt):
    cfg, sd = write_polar_checkpoint(tmp_path, fmt)
    scorer = D.Polar(str(tmp_path))
    ids = torch.randint(3, cfg["vocab_size"], (2, 9))
    scores = scorer.score_ids(ids.tolist())
    for i in range(2):
        assert scores[i].item() == pytest.approx(internlm2_reference(sd, cfg, ids[i]), abs=1e-4)
    # left padding in a batch does not change a row's score
    short = scorer.score_ids([ids[0, :5].tolist()])
    mixed = scorer.score_ids([ids[0, :5].tolist(), ids[1].tolist()])
    assert mixed[0].item() == pytest.approx(short[0].item(), abs=1e-4)


def test_polar_wqkv_split_layout():
    cfg = dict(CFG, vocab_size=10)
    kv, g, d, H = 2, 2, 8, 32
    rows = torch.arange((kv * (g + 2)) * d).float()[:, None].expand(-1, H).clone()
    out, _ = polar.convert_internlm2_state_dict(
        {"model.layers.0.attention.wqkv.weight": rows, "v_head.weight": torch.ones(1, H)}, cfg)
    q = out["layers.0.self_attn.q_proj.weight"][:, 0]
    k = out["layers.0.self_attn.k_proj.weight"][:, 0]
    v = out["layers.0.self_attn.v_proj.weight"][:, 0]
    # block b of 8 rows sits at rows 8b..8b+7: kv head 0 = blocks q0 q1 k v, kv head 1 = 4..7
    assert q[::d].tolist() == [0, 8, 32, 40]
    assert k[::d].tolist() == [16, 48] and v[::d].tolist() == [24, 56]


def test_polar_input_string_template_budgets_and_reward_token(tmp_path):
    write_polar_checkpoint(tmp_path)
    tok = polar.PolarTokenizer(str(tmp_path))
    p, r, c = "What is the capital of China?", "Beijing.", "<think>\nhmm\n</think>\n\nShanghai."
    text = D.polar_input(tok, p, r, c)
    rt = lambda s: tok.decode(tok.encode(s))  # noqa: E731  (the round trip every part makes)
    assert text == rt(p) + "\n" + rt(r) + "<|reward|>" + rt(p) + "\n" + rt("Shanghai.") + \
        "[UNUSED_TOKEN_130]"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids[-1] == tok.added["[UNUSED_TOKEN_130]"]
    assert tok.added["<|reward|>"] in ids
    # budgets: responses keep their START, the prompt keeps its END
    long_r = "Paris is the capital of France. " * 10
    long_p = "numbers 1 2 3 and letters a b c " * 10
    text = D.polar_input(tok, long_p, long_r, "Paris.", max_length=60, max_response_length=12)
    r_ids = tok.encode(long_r)[:12]
    c_ids = tok.encode("Paris.")
    budget = (60 - 4 - 12 - len(c_ids)) // 2
    p_ids = tok.encode(long_p)[-budget:]
    assert text == tok.decode(p_ids) + "\n" + tok.decode(r_ids) + "<|reward|>" + \
        tok.decode(p_ids) + "\n" + tok.decode(c_ids) + "[UNUSED_TOKEN_130]"
    assert text.startswith(tok.decode(tok.encode(long_p)[-budget:]))


def test_polar_scores_identical_pairs_consistently(tmp_path):
    write_polar_checkpoint(tmp_path)
    scorer = D.load_discriminator("polar", str(tmp_path))
    prompts = ["What is the capital of China?"] * 3
    s = scorer.score(prompts, ["Beijing."] * 3, ["Beijing.", "Shanghai.", "Beijing."])
    assert s.shape == (3,) and torch.isfinite(s).all()
    assert s[0].item() == pytest.approx(s[2].item(), abs=1e-5)
    alone = scorer.score(prompts[:1], ["Beijing."], ["Shanghai."])
    assert alone[0].item() == pytest.approx(s[1].item(), abs=1e-4)


def test_polar_without_v_head_or_files_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no 'v_head.weight'"):
        polar.convert_internlm2_state_dict({"model.norm.weight": torch.ones(4)}, CFG)
    (tmp_path / "config.json").write_text(json.dumps(dict(CFG, vocab_size=10)))
    write_polar_tokenizer(tmp_path)
    with pytest.raises(SystemExit, match="no \\*.safetensors or pytorch_model\\*.bin"):
        D.Polar(str(tmp_path))


def test_polar_in_bf16_keeps_rope_and_the_value_head_in_fp32(tmp_path):
    """Cast to bf16 (as on a GPU), POLAR must still rotate far positions by the right angle and
    return unquantised scores."""
    write_polar_checkpoint(tmp_path, cfg_overrides={"hidden_size": 512})   # head_dim 128, theta 1e6
    scorer = D.Polar(str(tmp_path), dtype=torch.bfloat16)
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    pos = torch.arange(0, 2001, 250)[None]                                  # [1, 9]
    cos, sin = scorer.model.rotary_emb(torch.zeros(1, 1, 128, dtype=torch.bfloat16), pos)
    inv = 1.0 / (1e6 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    angle = torch.cat([pos[0, :, None] * inv] * 2, -1)                      # [9, 128] exact
    # only the final bf16 rounding of cos/sin remains (< 0.004); bf16 inverse frequencies
    # would be off by up to 2.3 rad at position 2,000
    assert (cos[0].double() - angle.cos()).abs().max() < 0.01
    assert (sin[0].double() - angle.sin()).abs().max() < 0.01
    ids = torch.randint(3, 300, (16, 12)).tolist()
    s = scorer.score_ids(ids)
    assert s.dtype == torch.float32
    assert not torch.equal(s, s.bfloat16().float())       # a bf16 head would round every score


def test_polar_tokenizer_needs_its_reward_markers_as_single_tokens(tmp_path):
    write_polar_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items()
                                   if v["content"] != "<|reward|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match="'<\\|reward\\|>' is not one added token"):
        polar.PolarTokenizer(str(tmp_path))
