"""POLAR in miniature: the toy's discriminator, learned the way the paper's is, in POLAR's file format.

    python -m tools.toy_polar --out results          # builds results/runs/toy_polar (7 min on 2 cores;
                                                     # the first time also trains and samples students)
    python -m tools.toy_polar --out /tmp/tp --quick  # the same pipeline in seconds (a test runs it)
    python train.py --discriminator polar --discriminator-model results/runs/toy_polar

The idea
--------
The paper's discriminator is POLAR (arXiv 2507.05197): a reward model *pre-trained to tell whether
two answers come from the same policy*. Given a reference answer from policy A, it should score a
candidate from A above a candidate from B (a Bradley-Terry loss over a large population of
policies); a short fine-tune on preference data then aligns that "same policy" sense with what is
wanted. The toy's default discriminator, lexical n-gram F1, is none of this. So, on the CPU:

1. **A population of toy policies** answers the toy's *training* prompts (none of them an
   evaluation or validation prompt of any experiment seed 0-49: `training_prompts` excludes them,
   and a test checks it): scripted teachers of several accuracies, the flawed teacher, a
   topic-only writer and ten "violators" (each breaks one instruction whenever asked for it),
   base students of seeds 0 and 1 and their SFT, GRPO and UniAPL refinements, each sampled at two
   temperatures. The students of seed 2 are held out of training entirely: the
   policy-discrimination accuracy is measured on them.
2. **Pre-training, POLAR's objective**: triples (reference from A, a second answer from A, an
   answer from B to the same prompt); loss -log sigmoid(s(x, ref, A') - s(x, ref, B)). Never
   two students against each other: no short answer tells them apart, and with such pairs in,
   nothing was learned (measured).
3. **Fine-tuning**: reference = the row's teacher answer (what training passes as y_E), two
   candidates of one prompt whose verifier rewards differ; the higher reward is preferred.
4. **POLAR's files**: a sentencepiece tokenizer with POLAR's added tokens, an InternLM2
   `config.json` and `model.safetensors` with InternLM2's names and its fused query/key/value
   matrix (the inverse of polar.py's conversion). It is scored by the very code the real run uses
   (`--discriminator polar`, polar.py and discriminator.py); the build checks that the loaded
   files give the trained model's scores.

The model is the stock Llama that polar.py converts InternLM2 into, at a toy size (64 wide, 2
layers); training reads scores through discriminator.polar_scores, the scoring path itself.
Everything is seeded; the build is repeatable on one machine. `validate` measures it where the
coefficient uses it, as `python -m tools.reproduce discriminators` does for lexical: the rank
correlation with the reward among sibling rollouts. Measured (RESULTS.md): it ranks siblings
about as lexical does (+0.21 to +0.33 against +0.21 to +0.29) and tells policies apart barely
above chance; `python -m tools.reproduce polar` runs the adversarial claims with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import zlib

import torch

import toy

N_EXPERIMENT_SEEDS = 50                    # tools/reproduce.py's seeds 0-49: never their held-out prompts
PROMPT_SEED = 424_242                      # the population's prompts (the holdout world's training kind)
POP_SEEDS, HELD_OUT_SEED = (0, 1), 2       # base students in training; seed 2's only in validation
REFINE = (("sft", 3e-4), ("grpo", 1e-4), ("uniapl", 1e-4))   # the lr grid's choices (RESULTS.md)
# The scripted policies: (toy.py's variant, accuracy). Besides teachers of several accuracies,
# one "violator" per instruction (toy.INSTRUCTIONS' ten ids): a teacher that breaks that one
# instruction whenever a prompt asks for it and follows the rest. POLAR's population is a
# hundred-odd LLMs that differ in how they answer; the toy's students barely do (20-step
# refinements of three bases answer alike: measured, RESULTS.md), so these are what makes the
# population diverse -- policies that differ in *which* instructions they keep.
SCRIPTED = {"teacher": ("", 0.65), "strong-teacher": ("", 0.95), "weak-teacher": ("", 0.3),
            "perfect-teacher": ("", 1.0), "flawed-teacher": ("flawed", 0.65), "topic-only": ("base", 0.0),
            **{f"violates-{iid.split(':')[1]}": (f"violates:{iid}", 1.0) for iid in toy.INSTRUCTIONS}}
TEMPERATURES = (0.7, 1.0)
CFG = {"architectures": ["InternLM2ForRewardModel"], "model_type": "internlm2", "bias": False,
       "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
       "num_key_value_heads": 2, "num_hidden_layers": 2, "rms_norm_eps": 1e-5,
       "rope_theta": 10000.0, "rope_scaling": None, "max_position_embeddings": 32768,
       "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
FULL = dict(n_prompts=1600, n_held_out_prompts=100, refine_steps=20, pretrain_pairs=20000,
            finetune_pairs=12000, epochs=3, finetune_epochs=2, batch=32, lr=1e-3, vocab=1000, max_new_tokens=64,
            student_seeds=(*POP_SEEDS, HELD_OUT_SEED), temperatures=TEMPERATURES, n_check=200)
QUICK = dict(n_prompts=24, n_held_out_prompts=8, refine_steps=0, pretrain_pairs=64,
             finetune_pairs=16, epochs=1, finetune_epochs=1, batch=16, lr=1e-3, vocab=400, max_new_tokens=12,
             student_seeds=(0, HELD_OUT_SEED), temperatures=TEMPERATURES, n_check=24)


# ----------------------------------------------------------------------------------------------
# 1. The population and its answers
# ----------------------------------------------------------------------------------------------

def training_prompts(n: int) -> list[dict]:
    """Toy rows of the holdout world's training kind that no experiment seed evaluates or
    validates on (the union of toy.held_back over seeds 0-49 is excluded)."""
    import toy
    excluded = frozenset().union(*(toy.held_back(s) for s in range(N_EXPERIMENT_SEEDS)))
    return toy.make_rows(n, PROMPT_SEED, exclude=excluded, variant="holdout")


def scripted_answers(rows: list[dict], variant: str, accuracy: float, seed: int) -> list[list[str]]:
    """Two answers per row from a scripted teacher (toy.py) of this accuracy and variant."""
    import toy
    rng = random.Random(f"toy-polar-{variant}-{accuracy}-{seed}")
    out = []
    for x in rows:
        ids, kw = x["instruction_id_list"], x["kwargs"]
        two = []
        for _ in range(2):
            if variant == "base":
                two.append(toy.teacher_response(rng, x["prompt"], [], []))
                continue
            if variant.startswith("violates:"):        # breaks exactly this one, when asked for it
                iid = variant.split(":", 1)[1]
                two.append(toy.teacher_response(rng, x["prompt"], ids, kw, iid if iid in ids else None))
                continue
            violate = None if rng.random() < accuracy else rng.choice(ids)
            if variant == "flawed" and toy.FLAW in ids:
                violate = toy.FLAW
            two.append(toy.teacher_response(rng, x["prompt"], ids, kw, violate))
        out.append(two)
    return out


def student_dirs(out: str, seeds, hp: dict) -> dict:
    """{name: model directory}: each seed's base student (tools/reproduce.py's, cached) and its
    refinements. --quick: two untrained toy models instead (no training at all)."""
    import checkpoint
    import train
    from tools import reproduce
    dirs = {}
    for seed in seeds:
        if not hp["refine_steps"]:
            path = os.path.join(out, "quick-students", f"seed{seed}")
            if not os.path.exists(os.path.join(path, "model.safetensors")):
                model, tok = checkpoint.load_policy("toy", torch.device("cpu"), seed=seed)
                model.save_pretrained(path)
                tok.save_pretrained(path)
            dirs[f"untrained-s{seed}"] = path
            continue
        base = reproduce.base_model(seed, out, [])
        dirs[f"base-s{seed}"] = base
        for method, lr in REFINE:
            run = os.path.join(out, "toy_polar_population", f"{method}-s{seed}")
            if not os.path.exists(os.path.join(run, "final", "model.safetensors")):
                train.main(["--model", base, "--method", method, "--steps", str(hp["refine_steps"]),
                            "--learning-rate", str(lr), "--seed", str(seed), "--out", run,
                            "--no-progress", "--rollout-engine", "hf", "--save-every", "0", "--no-eval-start",
                            "--dataset", "toy:holdout", "--eval-limit", "10"])
            dirs[f"{method}-s{seed}"] = os.path.join(run, "final")
    return dirs


def student_answers(path: str, rows: list[dict], temperature: float, n: int, hp: dict,
                    seed: int) -> list[list[str]]:
    """n sampled answers per row from a saved toy student (the rollout engine, as in training)."""
    import checkpoint
    import rollouts
    model, tok = checkpoint.load_policy(path, torch.device("cpu"))
    torch.manual_seed(seed)
    ro = rollouts.HFEngine().generate(model, tok, rows, n, temperature=temperature,
                                      max_new_tokens=hp["max_new_tokens"])
    return [ro.texts[i * n:(i + 1) * n] for i in range(len(rows))]


STUDENT_SETTINGS = ("n_prompts", "refine_steps", "student_seeds", "temperatures", "max_new_tokens")


def population(out: str, rows: list[dict], hp: dict) -> tuple[dict, set]:
    """{policy: [[answer, answer] per row]} and the held-out policies' names. The students'
    answers (minutes of sampling) are kept in OUT/toy_polar_population/answers-*.json, named by
    the settings they depend on: a build run again reuses them; the scripted ones take seconds."""
    answers = {name: scripted_answers(rows, variant, accuracy, seed=0)
               for name, (variant, accuracy) in SCRIPTED.items()}
    key = json.dumps([{k: hp[k] for k in STUDENT_SETTINGS}, [x["key"] for x in rows]])
    cache = os.path.join(out, "toy_polar_population", f"answers-{zlib.crc32(key.encode())}.json")
    if os.path.exists(cache):
        with open(cache) as f:
            saved = json.load(f)
        return answers | saved["answers"], set(saved["held_out"])
    students, held_out = {}, set()
    for seed in hp["student_seeds"]:
        for name, path in student_dirs(out, [seed], hp).items():
            for t in hp["temperatures"]:
                key = f"{name}@T{t}"
                students[key] = student_answers(path, rows, t, 2, hp, seed=zlib.crc32(key.encode()))
                if seed == HELD_OUT_SEED:
                    held_out.add(key)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump({"answers": students, "held_out": sorted(held_out)}, f)
    return answers | students, held_out


# ----------------------------------------------------------------------------------------------
# 2-3. Pairs: POLAR's pre-training triples, then preference pairs
# ----------------------------------------------------------------------------------------------

def is_student(policy: str) -> bool:
    return "@T" in policy        # a sampled student ("grpo-s0@T1.0"); the scripted ones have no "@"


def same_policy_triples(answers: dict, policies: list[str], prompt_idx: list[int], n: int,
                        rng: random.Random, against: list[str] | None = None,
                        student_vs_student: bool = True) -> list[tuple]:
    """(row index, reference, chosen = the same policy's other answer, rejected = another's);
    `against`: where the other policy comes from (default: `policies` too);
    student_vs_student=False: never two students against each other (pre-training: see build)."""
    out = []
    while len(out) < n:
        i, a = rng.choice(prompt_idx), rng.choice(policies)
        b = rng.choice([p for p in (against or policies) if p != a])
        if not student_vs_student and is_student(a) and is_student(b):
            continue
        k = rng.randrange(2)
        ref, same, other = answers[a][i][k], answers[a][i][1 - k], answers[b][i][rng.randrange(2)]
        if same != other:
            out.append((i, ref, same, other))
    return out


def preference_pairs(answers: dict, rows: list[dict], policies: list[str], prompt_idx: list[int],
                     n: int, rng: random.Random) -> list[tuple]:
    """(row index, the row's teacher answer as reference, the answer with the higher verifier
    reward, the one with the lower): the fine-tune's preferences, which the toy states exactly."""
    import ifeval
    out, tries = [], 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        i, (a, b) = rng.choice(prompt_idx), rng.sample(policies, 2)
        x = rows[i]
        ya, yb = answers[a][i][rng.randrange(2)], answers[b][i][rng.randrange(2)]
        ra, rb = (ifeval.reward(y, x["instruction_id_list"], x["kwargs"], x["prompt"]) for y in (ya, yb))
        if ra != rb:
            out.append((i, x["response"], ya, yb) if ra > rb else (i, x["response"], yb, ya))
    return out


# ----------------------------------------------------------------------------------------------
# 4. The model, trained through the scoring path, and POLAR's files
# ----------------------------------------------------------------------------------------------

def write_tokenizer(path: str, texts: list[str], vocab: int) -> None:
    """POLAR's tokenizer files at toy size: a sentencepiece BPE model of the toy's texts (byte
    fallback: any text encodes) and POLAR's two added tokens after its vocabulary."""
    import io

    import sentencepiece as spm

    import polar
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   byte_fallback=True, hard_vocab_limit=False, minloglevel=2)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    n = spm.SentencePieceProcessor(model_file=os.path.join(path, "tokenizer.model")).get_piece_size()
    added = {str(n): {"content": "<|reward|>", "special": True},
             str(n + 1): {"content": polar.REWARD_TOKEN, "special": True}}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": added}, f)


# Llama (transformers) -> InternLM2, the inverse of polar.convert_internlm2_state_dict: q, k and v
# of each key/value head are stacked back into wqkv's rows, viewed as [n_kv, g + 2, d, H].

def to_internlm2_state_dict(sd: dict, v_head: torch.Tensor, cfg: dict) -> dict:
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    kv = cfg["num_key_value_heads"]
    g, d = heads // kv, hidden // heads
    renames = {"input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1",
               "mlp.up_proj": "feed_forward.w3", "mlp.down_proj": "feed_forward.w2"}
    out = {"model.tok_embeddings.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"],
           "v_head.weight": v_head.reshape(1, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        q = sd[p + "self_attn.q_proj.weight"].reshape(kv, g, d, hidden)
        k = sd[p + "self_attn.k_proj.weight"].reshape(kv, 1, d, hidden)
        v = sd[p + "self_attn.v_proj.weight"].reshape(kv, 1, d, hidden)
        out[f"model.{p}attention.wqkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, hidden)
        for new, old in renames.items():
            out[f"model.{p}{old}.weight"] = sd[f"{p}{new}.weight"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def encode_pairs(tok, rows, pairs) -> list[tuple[list[int], list[int]]]:
    """POLAR's input ids (discriminator.polar_input) of (reference, chosen) and (reference, rejected)."""
    import discriminator
    enc = lambda i, ref, cand: tok.encode(discriminator.polar_input(tok, rows[i]["prompt"], ref, cand))  # noqa: E731
    return [(enc(i, ref, good), enc(i, ref, bad)) for i, ref, good, bad in pairs]


def fit(model, v_head, encoded, hp: dict, pad_id: int, seed: int, epochs: int) -> list[float]:
    """Bradley-Terry: loss = -log sigmoid(s(chosen) - s(rejected)), AdamW; the mean loss per epoch."""
    import discriminator
    params = list(model.parameters()) + list(v_head.parameters())
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=0.0)
    rng, losses = random.Random(seed), []
    for _ in range(epochs):
        order, total = list(range(len(encoded))), 0.0
        rng.shuffle(order)
        for b in range(0, len(order), hp["batch"]):
            chunk = [encoded[j] for j in order[b:b + hp["batch"]]]
            s = discriminator.polar_scores(model, v_head, [c for c, _ in chunk] + [r for _, r in chunk],
                                           pad_id, "cpu")                                # [2B]
            loss = -torch.nn.functional.logsigmoid(s[:len(chunk)] - s[len(chunk):]).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            total += float(loss.detach()) * len(chunk)
        losses.append(total / len(encoded))
    return losses


def lexical_accuracy(rows, pairs) -> float:
    """The same fraction for the lexical discriminator (ties count half)."""
    import discriminator
    lex = discriminator.Lexical()
    prompts, refs = [rows[i]["prompt"] for i, *_ in pairs], [p[1] for p in pairs]
    good, bad = lex.score(prompts, refs, [p[2] for p in pairs]), lex.score(prompts, refs, [p[3] for p in pairs])
    return float((good > bad).float().mean() + 0.5 * (good == bad).float().mean())


@torch.no_grad()
def accuracy(model, v_head, encoded, pad_id: int) -> float:
    """The fraction of pairs scored in the preferred order."""
    import discriminator
    right = 0
    for b in range(0, len(encoded), 64):
        chunk = encoded[b:b + 64]
        s = discriminator.polar_scores(model, v_head, [c for c, _ in chunk] + [r for _, r in chunk],
                                       pad_id, "cpu")
        right += int((s[:len(chunk)] > s[len(chunk):]).sum())
    return right / max(1, len(encoded))


def build(out: str, quick: bool = False) -> dict:
    """The whole build: population -> tokenizer -> pre-training -> fine-tuning -> POLAR's files in
    OUT/toy_polar (OUT/runs/toy_polar under tools/reproduce.py's layout), and its figures."""
    from safetensors.torch import save_file
    from transformers import LlamaModel

    import discriminator
    import polar
    hp, t0 = QUICK if quick else FULL, time.perf_counter()
    torch.manual_seed(0)
    rows = training_prompts(hp["n_prompts"])
    answers, held_out = population(out, rows, hp)
    path = os.path.join(out, "toy_polar")
    os.makedirs(path, exist_ok=True)
    texts = [x["prompt"] for x in rows] + [y for a in answers.values() for two in a for y in two]
    write_tokenizer(path, texts, hp["vocab"])
    tok = polar.PolarTokenizer(path)
    cfg = dict(CFG, vocab_size=len(tok.sp) + 2, reward_token_id=tok.added[polar.REWARD_TOKEN])

    rng = random.Random(0)
    n_eval = hp["n_held_out_prompts"]
    train_idx, eval_idx = list(range(n_eval, len(rows))), list(range(n_eval))
    seen = sorted(set(answers) - held_out)
    # Pre-training triples pit any two policies of the population against each other, except two
    # students: the students are 20-step refinements of a few bases, and no single short answer
    # tells them apart (their "same policy" pairs stay at chance, RESULTS.md); with them in, the
    # loss stayed at log 2 and nothing was learned (measured, 2026-12-06/07). A student still
    # meets every scripted policy, as reference and as either candidate.
    pre = encode_pairs(tok, rows, same_policy_triples(answers, seen, train_idx, hp["pretrain_pairs"], rng,
                                                      student_vs_student=False))
    ft = encode_pairs(tok, rows, preference_pairs(answers, rows, seen, train_idx, hp["finetune_pairs"], rng))
    students, scripted = [p for p in seen if is_student(p)], [p for p in seen if not is_student(p)]
    checks = {  # held-out prompts; the held-out policies: one of them against a seen student
        "same_policy/held_out_policy": same_policy_triples(answers, sorted(held_out), eval_idx,
                                                           hp["n_check"], rng, against=students),
        "same_policy/seen_students": same_policy_triples(answers, students, eval_idx, hp["n_check"], rng),
        "same_policy/scripted": same_policy_triples(answers, scripted, eval_idx, hp["n_check"], rng),
        "preference/held_out_prompts": preference_pairs(answers, rows, sorted(answers), eval_idx,
                                                        hp["n_check"], rng)}
    lexical = {k: lexical_accuracy(rows, v) for k, v in checks.items()}      # the yardstick
    checks = {k: encode_pairs(tok, rows, v) for k, v in checks.items()}

    torch.manual_seed(0)
    model = LlamaModel(polar.llama_config_from_internlm2(cfg))
    v_head = torch.nn.Linear(cfg["hidden_size"], 1, bias=False)
    before = {k: accuracy(model, v_head, v, tok.pad_id) for k, v in checks.items()}
    say = lambda what: print(f"  [{time.perf_counter() - t0:.0f} s] {what}", flush=True)  # noqa: E731
    say(f"{len(answers)} policies; pre-training on {len(pre)} same-policy triples, {hp['epochs']} epochs")
    pre_loss = fit(model, v_head, pre, hp, tok.pad_id, seed=1, epochs=hp["epochs"])
    after_pre = {k: accuracy(model, v_head, v, tok.pad_id) for k, v in checks.items()}
    say(f"loss per epoch {[round(x, 4) for x in pre_loss]}; fine-tuning on {len(ft)} preference pairs")
    ft_loss = fit(model, v_head, ft, dict(hp, lr=hp["lr"] / 3), tok.pad_id, seed=2,
                  epochs=hp["finetune_epochs"])
    after = {k: accuracy(model, v_head, v, tok.pad_id) for k, v in checks.items()}

    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    save_file(to_internlm2_state_dict(model.state_dict(), v_head.weight, cfg),
              os.path.join(path, "model.safetensors"))
    # the files, read back by the real scoring path, give the trained model's scores
    scorer = discriminator.Polar(path, "cpu")
    probe = [ids for pair in checks["preference/held_out_prompts"][:16] for ids in pair]
    with torch.no_grad():
        trained = discriminator.polar_scores(model, v_head, probe, tok.pad_id, "cpu")
    gap = float((scorer.score_ids(probe) - trained).abs().max())
    if gap > 1e-4:
        raise RuntimeError(f"the written toy POLAR scores {gap:.2g} away from the trained one")
    result = {"path": path, "quick": quick, "policies": len(answers), "held_out_policies": sorted(held_out),
              "prompts": len(rows), "pretrain_pairs": len(pre), "finetune_pairs": len(ft),
              "pretrain_loss": pre_loss, "finetune_loss": ft_loss, "accuracy_untrained": before,
              "accuracy_pretrained": after_pre, "accuracy": after, "accuracy_lexical": lexical,
              "files_vs_trained_max_abs": gap,
              "build_s": time.perf_counter() - t0, "settings": hp}
    with open(os.path.join(path, "build.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# ----------------------------------------------------------------------------------------------
# Validation where the coefficient uses it: among sibling rollouts of one prompt
# ----------------------------------------------------------------------------------------------

def validate(out: str, polar_dir: str, hp: dict, n_rows: int = 100, G: int = 8) -> dict:
    """As `python -m tools.reproduce discriminators` does for lexical: G samples per evaluation
    prompt of seed 0 (never a training prompt of the toy POLAR) from students -- seed 0's base,
    seen in training on other prompts, and seed 2's base and GRPO refinement, never seen -- scored
    by the verifier (r) and by each discriminator against the row's teacher answer (d); the mean
    Spearman correlation of d and r inside the groups that have a spread of rewards."""
    import numpy as np

    import data
    import discriminator as D
    import ifeval
    from tools import reproduce
    rows = data.load_rows("toy", "eval", toy_seed=0, toy_eval_n=n_rows)[:n_rows]
    discs = {"lexical": D.Lexical(), "toy POLAR": D.Polar(polar_dir, "cpu")}
    students = {k: v for k, v in student_dirs(out, hp["student_seeds"], hp).items()
                if k in ("base-s0", "base-s2", "grpo-s2", "untrained-s2")}
    result = {}
    for who, path in students.items():
        texts = student_answers(path, rows, 1.0, G, hp, seed=zlib.crc32(who.encode()))
        flat = [t for group in texts for t in group]
        grouped_rows = [x for x in rows for _ in range(G)]
        r = np.array([ifeval.reward(t, x["instruction_id_list"], x["kwargs"], x["prompt"])
                      for t, x in zip(flat, grouped_rows)]).reshape(-1, G)
        for name, disc in discs.items():
            d = disc.score([x["prompt"] for x in grouped_rows], [x["response"] for x in grouped_rows],
                           flat).numpy().reshape(-1, G)
            rho = reproduce.group_spearman(d, r)
            result[f"{name} / {who}"] = {
                "groups": len(rho), "of": len(r), "spearman_mean": float(np.mean(rho)) if rho else None,
                "positive": float(np.mean([x > 0 for x in rho])) if rho else None}
    return result


SIBLINGS = {False: (100, 8), True: (12, 4)}   # --quick or not: (evaluation prompts, samples each)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results", help="as tools/reproduce.py's --out: the model goes "
                   "to OUT/runs/toy_polar, its figures to OUT/toy_polar.{json,md,png}")
    p.add_argument("--quick", action="store_true", help="a tiny population and a few steps (tests)")
    p.add_argument("--report", action="store_true", help="the table and plot again from OUT/toy_polar.json")
    args = p.parse_args(argv)
    if args.report:
        from tools import reproduce
        res = reproduce.load(args.out, "toy_polar")
        if res is None:
            raise SystemExit(f"no {args.out}/toy_polar.json: build first (python -m tools.toy_polar)")
        return report(args.out, res)
    hp = QUICK if args.quick else FULL
    res = build(os.path.join(args.out, "runs"), args.quick)
    res["siblings"] = validate(os.path.join(args.out, "runs"), res["path"], hp, *SIBLINGS[args.quick])
    return report(args.out, res)


def report(out: str, res: dict) -> dict:
    """OUT/toy_polar.{json,md,png}: the pair accuracies and the sibling correlations, with lexical's."""
    from tools import plots, reproduce
    n_rows, G = SIBLINGS[res["quick"]]
    sib = ["| discriminator / student | groups with a reward spread | mean Spearman(d, r) in a group "
           "| groups where it is > 0 |", "|---|---|---|---|"]
    for k, v in res["siblings"].items():
        sib.append(f"| {k} | {v['groups']} of {v['of']} | " + (
            f"{v['spearman_mean']:+.3f} | {v['positive']:.2f} |" if v["groups"] else "- | - |"))
    md = ["| pairs (held-out prompts) | untrained | after pre-training | after fine-tuning | lexical |",
          "|---|---|---|---|---|"]
    for k in res["accuracy"]:
        md.append(f"| {k} | {res['accuracy_untrained'][k]:.3f} | {res['accuracy_pretrained'][k]:.3f} "
                  f"| {res['accuracy'][k]:.3f} | {res['accuracy_lexical'][k]:.3f} |")
    text = (f"The toy POLAR (`python -m tools.toy_polar --out {out}`{' --quick' if res['quick'] else ''}): "
            f"{res['policies']} policies ({len(res['held_out_policies'])} held out), {res['prompts']} "
            f"training prompts, {res['pretrain_pairs']} pre-training and {res['finetune_pairs']} "
            f"fine-tuning pairs, built in {res['build_s']:.0f} s. Accuracy: the fraction of pairs "
            "scored in the right order (same_policy: a second answer of the reference's policy above "
            "another policy's; preference: the higher verifier reward above the lower, against the "
            "teacher's answer).\n\n" + "\n".join(md) + "\n\nWhere the coefficient uses it, among "
            f"sibling rollouts ({G} per prompt, temperature 1, on {n_rows} evaluation prompts of seed 0; "
            "seed 2's students were never in the toy POLAR's training):\n\n" + "\n".join(sib) + "\n"
            "\nBoth on one figure: toy_polar.png.\n")
    reproduce.write(out, "toy_polar", res, text)
    plots.plot_polar_validation(res, os.path.join(out, "toy_polar.png"))
    print(text)
    return res


if __name__ == "__main__":
    main()
