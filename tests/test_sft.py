"""sft.py: L_SFT equals an independently computed NLL over response tokens only."""

import pytest
import torch

import data
import sft


def test_sft_loss_equals_hand_computed_nll(model, tok):
    rows = [{"prompt": "Describe the cat.", "response": "The cat is calm."},
            {"prompt": "Write about the moon, please.", "response": "Moon. That is all."}]
    batch = data.demo_batch(tok, rows, 64)
    loss = sft.sft_loss(model, batch)
    # Reference: each row alone, full logits from the model's own LM head, no padding at all.
    total, count = 0.0, 0
    for row in rows:
        p = tok(data.chat_prompt(tok, row["prompt"]), add_special_tokens=False)["input_ids"]
        r = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + r])
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        for t in range(len(p), len(p) + len(r)):
            total -= logp[t - 1, ids[0, t]].item()
            count += 1
    assert batch.score_mask[:, 1:].sum() == count
    assert abs(loss.item() - total / count) < 1e-5


def test_sft_gradient_reaches_tied_embedding(model, tok):
    batch = data.demo_batch(tok, [{"prompt": "Describe the cat.", "response": "Cat."}], 64)
    loss = sft.sft_loss(model, batch)
    loss.backward()
    emb = model.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_chord_phi_weights_each_token_by_p_times_one_minus_p(model, tok):
    """phi-weighted NLL: sum_t p_t (1 - p_t) (-log p_t) / tokens, phi detached (hand computed)."""
    rows = [{"prompt": "Describe the cat.", "response": "The cat is calm."}]
    batch = data.demo_batch(tok, rows, 64)
    loss = sft.sft_loss(model, batch, weighting="phi")
    p_ids = tok(data.chat_prompt(tok, rows[0]["prompt"]), add_special_tokens=False)["input_ids"]
    r_ids = tok(rows[0]["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    lp = torch.stack([logp[t - 1, ids[0, t]] for t in range(len(p_ids), len(p_ids) + len(r_ids))])
    p = lp.exp()
    assert abs(loss.item() - (-(p * (1 - p) * lp).sum() / len(r_ids)).item()) < 1e-6
    loss.backward()                              # the weight is detached: d/dtheta of -phi log p
    g = model.get_input_embeddings().weight.grad.clone()
    model.zero_grad()
    lp_t = torch.log_softmax(model(ids).logits[0], -1)
    lp_t = torch.stack([lp_t[t - 1, ids[0, t]] for t in range(len(p_ids), len(p_ids) + len(r_ids))])
    w = (lp_t.detach().exp() * (1 - lp_t.detach().exp()))
    (-(w * lp_t).sum() / len(r_ids)).backward()
    assert torch.allclose(g, model.get_input_embeddings().weight.grad, atol=1e-6)


def test_a_partitioned_head_is_one_clear_error(model, tok, toy_rows):
    """DeepSpeed ZeRO-3 leaves a parameter with shape [0] outside its module's forward; the
    log-prob path reads the head after the forward, so it must say so, not fail in a matmul."""
    stand_in = torch.nn.Linear(1, 1)
    stand_in.weight = torch.nn.Parameter(torch.empty(0))
    model.get_output_embeddings = lambda: stand_in
    batch = data.demo_batch(tok, toy_rows[0][:2], 16)
    with pytest.raises(RuntimeError, match="ZeRO-3.*ZeRO-2 or FSDP"):
        sft.sft_loss(model, batch)
