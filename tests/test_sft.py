"""sft.py: L_SFT equals an independently computed NLL over response tokens only."""

import torch

import data
import sft


def test_sft_loss_equals_hand_computed_nll(model, tok):
    rows = [{"prompt": "Describe the cat.", "response": "The cat is calm."},
            {"prompt": "Write about the moon, please.", "response": "Moon. That is all."}]
    batch = data.demo_batch(tok, rows, 64)
    loss, stats = sft.sft_loss(model, batch)
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
    assert stats["tokens"] == count
    assert abs(loss.item() - total / count) < 1e-5


def test_sft_gradient_reaches_tied_embedding(model, tok):
    batch = data.demo_batch(tok, [{"prompt": "Describe the cat.", "response": "Cat."}], 64)
    loss, _ = sft.sft_loss(model, batch)
    loss.backward()
    emb = model.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
