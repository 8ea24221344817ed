"""train.py end to end on the toy world: every method, staged runs, exact resume, safety nets."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import parallel
import toy
import trackers
import train

TINY = ["--steps", "3", "--sft-batch-size", "2", "--rl-batch-size", "2", "--num-generations", "2",
        "--max-completion-length", "12", "--eval-limit", "4", "--no-progress"]


def run(out, *extra):
    return train.main(TINY + ["--out", str(out), *extra])


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("method,extra", [
    ("sft", []), ("grpo", []), ("a-sft", []), ("a-grpo", []), ("uniapl", []),
    ("uniapl", ["--adv-mode", "reward"]), ("uniapl", ["--lambda-adv", "0"]),
    ("grpo", ["--beta", "0.05", "--num-iterations", "2"]),
    ("chord-mu", []), ("a-chord-phi", ["--adv-coef-norm", "batch"]),
])
def test_every_method_runs_end_to_end(tmp_path, method, extra):
    summary = run(tmp_path, "--method", method, *extra)
    ms = metrics(tmp_path)
    assert [m["step"] for m in ms] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in ms)
    for name in ("config.json", "eval_start.json", "eval_final.json", "final/model.safetensors",
                 "final/tokenizer.json", "final/uniapl.json"):
        assert os.path.exists(tmp_path / name), name
    final = json.load(open(tmp_path / "eval_final.json"))
    assert {"prompt_strict", "inst_strict", "prompt_loose", "inst_loose"} <= set(final)
    assert summary["after"] == final["prompt_strict"]
    keys = set(ms[-1])
    chord = method.endswith(("chord-mu", "chord-phi"))
    assert ("sft/nll" in keys) == (method in ("sft", "a-sft", "uniapl") or chord)
    assert ("grpo/loss" in keys) == (method in ("grpo", "a-grpo", "uniapl") or chord)
    assert ("adv/loss" in keys) == (method in ("a-sft", "a-grpo", "a-chord-phi") or
                                    (method == "uniapl" and not extra))
    assert ("adv/d_mean" in keys) == ("adv/loss" in keys or "reward" in extra)   # a discriminator read
    if method == "chord-mu":   # mu decays from 0.9 over the run (3 steps here)
        assert [m["alpha"] for m in ms] == pytest.approx([0.9, 0.05 + 0.425 * 1.5, 0.05 + 0.425 * 0.5])
    if "--beta" in extra:
        assert "kl/loss" in keys


def test_staged_pipeline_sft_then_grpo_from_the_saved_model(tmp_path):
    run(tmp_path / "sft", "--method", "sft")
    summary = run(tmp_path / "grpo", "--method", "grpo", "--model", str(tmp_path / "sft" / "final"))
    cfg = json.load(open(tmp_path / "grpo" / "config.json"))
    assert cfg["world"] == "toy" and cfg["dataset"] == "toy"      # the toy world carries over
    # the second stage starts from the first stage's weights, not from a fresh init
    a = load_file(str(tmp_path / "sft" / "final" / "model.safetensors"))
    start = json.load(open(tmp_path / "grpo" / "eval_start.json"))
    end_sft = json.load(open(tmp_path / "sft" / "eval_final.json"))
    assert start["responses"] == end_sft["responses"]
    assert summary["out"] == str(tmp_path / "grpo") and a


def test_resume_gives_exactly_the_uninterrupted_run(tmp_path, monkeypatch):
    args = ["--steps", "4", "--save-every", "2", "--method", "uniapl"]
    run(tmp_path / "full", *args)

    real_step = train.unified_step

    def crash_at_third(policy, batch, s, run, step):
        if step == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_step(policy, batch, s, run, step)

    monkeypatch.setattr(train, "unified_step", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", *args)
    monkeypatch.setattr(train, "unified_step", real_step)
    run(tmp_path / "cut", *args, "--resume", "auto")

    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full)
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in ms]  # noqa: E731
    assert strip(metrics(tmp_path / "full")) == strip(metrics(tmp_path / "cut"))
    assert [m["step"] for m in metrics(tmp_path / "cut")] == [1, 2, 3, 4]


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path, monkeypatch):
    import sft
    real = sft.sft_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        loss = real(*a, **k)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    with pytest.raises(train.NonFiniteError, match="step 2: non-finite .*l_sft = nan"):
        run(tmp_path, "--method", "sft", "--save-every", "1")
    ckpts = sorted(os.listdir(tmp_path / "checkpoints"))
    assert ckpts == ["step-0000001"]
    weights = load_file(str(tmp_path / "checkpoints" / ckpts[0] / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    real_save = torch.save
    state = {"n": 0}

    def failing_save(obj, path, *a, **k):
        if str(path).endswith("trainer_state.pt"):
            state["n"] += 1
            if state["n"] == 2:
                raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    full = r"No space left on device.*a checkpoint needs about \d+\.\d\d GiB and \d+\.\d\d GiB are free"
    with pytest.raises(SystemExit, match=full + ".*earlier checkpoint is intact"):
        run(tmp_path, "--method", "sft", "--save-every", "1")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-0000001"]   # no half directory
    assert checkpoint.check_manifest(str(tmp_path / "checkpoints" / "step-0000001")) is None
    monkeypatch.setattr(torch, "save", real_save)
    summary = run(tmp_path, "--method", "sft", "--save-every", "1", "--resume", "auto")
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3] and summary["after"] >= 0


def test_operational_errors_are_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match="is not writable"):
        run(blocker / "sub")
    with pytest.raises(SystemExit, match="CUDA is not available"):
        parallel.pick_device("cuda")
    with pytest.raises(SystemExit, match="cannot load model 'Qwen/Qwen3-0.6B'.*--model toy"):
        checkpoint.load_policy("Qwen/Qwen3-0.6B", torch.device("cpu"))
    run(tmp_path / "done", "--method", "sft")
    with pytest.raises(SystemExit, match="already holds a run; use --resume auto"):
        run(tmp_path / "done", "--method", "sft")
    # --resume auto in a directory without a checkpoint starts the run (tests/test_preemption.py);
    # a directory holding another run's settings is refused with one line naming the difference
    with pytest.raises(SystemExit, match="holds another run: its --method was 'sft', now 'grpo'"):
        run(tmp_path / "done", "--method", "grpo", "--resume", "auto")


def test_missing_optional_packages_say_what_to_install(monkeypatch, tmp_path):
    import sys

    import logprobs
    import polar
    from tools import plots
    monkeypatch.setattr(logprobs, "triton", None)
    with pytest.raises(RuntimeError, match="pip install triton"):
        logprobs.token_logprobs(torch.randn(2, 4), torch.randn(5, 4), torch.tensor([0, 1]),
                                backend="triton")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(SystemExit, match="pip install sentencepiece"):
        polar.PolarTokenizer(str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        plots.pyplot()


def test_evaluation_has_its_own_answer_length(tmp_path, monkeypatch):
    """IFEval answers get --eval-max-new-tokens (1,280 in the real world), not the rollout length."""
    import rollouts
    calls, real = [], rollouts.generate

    def spy(*a, greedy=False, max_new_tokens=64, **k):
        calls.append((greedy, max_new_tokens))
        return real(*a, greedy=greedy, max_new_tokens=max_new_tokens, **k)
    monkeypatch.setattr(rollouts, "generate", spy)
    run(tmp_path, "--method", "grpo", "--eval-max-new-tokens", "5")
    assert {n for greedy, n in calls if greedy} == {5}          # evaluation
    assert {n for greedy, n in calls if not greedy} == {12}     # rollouts (TINY's length)
    res = json.load(open(tmp_path / "eval_final.json"))
    assert 0 <= res["truncated_frac"] <= 1


def test_resume_from_a_sharded_checkpoint(tmp_path, capsys):
    """Models above transformers' shard size are saved in several files plus an index."""
    from transformers import AutoModelForCausalLM
    for name in ("plain", "sharded"):
        run(tmp_path / name, "--method", "sft", "--steps", "2", "--save-every", "2")
    ckpt = tmp_path / "sharded" / "checkpoints" / "step-0000002"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    os.remove(ckpt / "model.safetensors")
    model.save_pretrained(ckpt, max_shard_size="1MB")
    assert (ckpt / "model.safetensors.index.json").exists()
    os.remove(ckpt / checkpoint.MANIFEST)
    checkpoint.write_manifest(str(ckpt))           # as save_checkpoint writes it, over the shards
    for name in ("plain", "sharded"):
        run(tmp_path / name, "--method", "sft", "--steps", "3", "--save-every", "2", "--resume", "auto")
        assert f"resumed from {tmp_path / name}" in capsys.readouterr().out
    a = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "sharded" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def one_step(tok, rows, seed=0, **overrides):
    """One unified step of a fresh toy policy with plain SGD (the update is the gradient)."""
    import data
    import settings
    import uniapl
    from discriminator import Lexical
    from tests.worlds import Replay, replay_texts
    s = settings.Settings.for_world("toy", **{"num_generations": 4, "max_completion_length": 10,
                                              "max_grad_norm": 1e9} | overrides)
    policy = toy.build_model(tok, seed=0)
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    run = train.Run(tok, uniapl.objective(s), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0),
                    Replay(replay_texts(rows)), Lexical())
    torch.manual_seed(seed)
    m, _ = train.unified_step(policy, data.MixedBatch(demos=rows[:4], prompts=rows[4:7]), s, run, 0)
    return torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(policy.parameters(), before)]), m


@pytest.mark.parametrize("method,loss_type", [("sft", "token"), ("grpo", "token"),
                                              ("uniapl", "token"), ("uniapl", "sequence")])
def test_micro_batches_give_the_same_update(tok, toy_rows, method, loss_type):
    """12 rollouts and 4 demonstrations in one backward, or 5 at a time (3 micro-batches, the
    last one short): every mean divided by the whole step's count, the same update. (Replayed
    rollouts: their rewards differ within each group, so GRPO has a gradient.)"""
    whole, m1 = one_step(tok, toy_rows[0], method=method, loss_type=loss_type)
    parts, mk = one_step(tok, toy_rows[0], method=method, loss_type=loss_type, micro_batch_size=5)
    assert whole.norm() > 1e-3
    assert (parts - whole).norm() / whole.norm() < 1e-5
    for k in ("loss", "reward", "sft/nll", "grpo/loss", "grpo/ratio_clip_frac", "sampler_gap_mean"):
        if k in m1:
            assert mk[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k


def test_a_zero_weight_term_is_not_computed(tok, toy_rows, monkeypatch):
    """CHORD-mu with valley 0: at the end of its decay the SFT weight is 0, and a NaN in L_SFT
    must not reach the loss (0 * NaN is NaN): the term is a plain 0 then, never computed."""
    import sft
    monkeypatch.setattr(sft, "sft_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    delta, m = one_step(tok, toy_rows[0], method="chord-mu", chord_mu_valley=0.0,
                        chord_mu_decay_steps=0)
    assert m["alpha"] == 0.0 and torch.isfinite(delta).all() and "sft/nll" not in m


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path, monkeypatch):
    """trainer_state.pt's tensors are tagged with the device that wrote them; torch.load without
    map_location restores them there (every rank onto cuda:0; on a CPU-only machine: an error).
    Here the checkpoint is written as if from cuda:0 and resumed on the CPU."""
    import torch.serialization
    real_tag = torch.serialization.location_tag
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    run(tmp_path, "--method", "sft", "--steps", "2", "--save-every", "2")
    monkeypatch.setattr(torch.serialization, "location_tag", real_tag)
    state = tmp_path / "checkpoints" / "step-0000002" / "trainer_state.pt"
    with pytest.raises(RuntimeError, match="CUDA"):          # what a plain torch.load meets
        torch.load(state, weights_only=True)
    run(tmp_path, "--method", "sft", "--steps", "3", "--save-every", "2", "--resume", "auto")
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3]


def test_the_meter_reports_a_true_peak_per_phase_and_per_step(monkeypatch):
    """CUDA's allocator keeps one high-water mark; a phase resets it to measure its own peak, so
    a step peak read once at the end would be the last phase's (the suite once reported 12 GiB
    for a true 24). A fake allocator: the step's true peak must come out, and each phase's."""
    state = {"now": 0.0, "peak": 0.0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: state.update(peak=state["now"]))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: state["peak"] * 2**30)

    def use(gib):                       # allocate up to `gib` for a moment, then go back down
        state["peak"] = max(state["peak"], gib)
    meter = trackers.Meter("cuda")
    with meter.phase("generate"):
        use(24)
    use(30)                             # between two phases of the step (a rollout's leftovers)
    with meter.phase("backward"):
        use(14)
    with meter.phase("optimizer"):
        use(12)
    m = meter.read()
    assert (m["mem/generate"], m["mem/backward"], m["mem/optimizer"], m["mem/step"]) == (24, 14, 12, 30)
    state["peak"] = 50                  # an evaluation between steps is not the next step's
    with meter.phase("generate"):
        use(5)
    assert meter.read()["mem/step"] == 5


def test_random_states_resume_where_fewer_gpus_are_visible(monkeypatch):
    """A checkpoint holds one CUDA random state per GPU visible when it was written; a resume on
    a node that sees fewer restores those that exist (set_rng_state_all raised there). Fake
    states on a CPU machine: two saved, one GPU visible now."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s)))

    def all_states(states):            # torch's: one state per state given, each on its device
        if len(states) > torch.cuda.device_count():
            raise RuntimeError("invalid device ordinal")
        for i, s in enumerate(states):
            torch.cuda.set_rng_state(s, i)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", all_states)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([7]), torch.tensor([8])])
    state = checkpoint.rng_state()
    checkpoint.set_rng_state(state)
    assert [(d, int(s)) for d, s in restored] == [(0, 7)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)   # more visible: the saved ones
    restored.clear()
    checkpoint.set_rng_state(state)
    assert [(d, int(s)) for d, s in restored] == [(0, 7), (1, 8)]


def test_the_kl_is_a_fourth_term_with_its_own_weight(tmp_path):
    """L = a L_SFT + (1 - a) L_GRPO + lam L_ADV + beta KL: the logged terms add up to the loss with
    beta as the KL's own weight (not (1 - a) beta inside L_GRPO), on the second update, where
    the policy has moved from the reference."""
    run(tmp_path, "--method", "uniapl", "--beta", "0.05", "--num-iterations", "2", "--steps", "2",
        "--eval-limit", "2")
    for m in metrics(tmp_path):
        assert m["kl/loss"] > 0
        assert m["loss"] == pytest.approx(0.5 * m["sft/nll"] + 0.5 * m["grpo/loss"] + 0.1 * m["adv/loss"]
                                          + 0.05 * m["kl/loss"], rel=1e-5, abs=1e-7)


def test_grpo_never_reads_the_teachers_answers(tmp_path):
    """The teacher-strength experiment (tools/reproduce.py teacher) reuses the main table's GRPO
    runs at every teacher accuracy: that holds only if GRPO's training is the same whatever the
    teacher writes. It is, to the bit; UniAPL's is not (the check can fail)."""
    def final(method, *extra):
        out = tmp_path / f"{method}{''.join(extra)}"
        run(out, "--method", method, *extra)
        return load_file(str(out / "final" / "model.safetensors"))
    for method, same in (("grpo", True), ("uniapl", False)):
        a, b = final(method), final(method, "--teacher-accuracy", "0.95")
        assert all(torch.equal(a[k], b[k]) for k in a) == same, method


def test_a_users_reward_module_is_called_with_the_rows_fields_and_logged(tmp_path, monkeypatch):
    """--reward MODULE:FUNCTION (TRL's convention) beside a task's own, with --reward-weights: the
    function gets every field of the rows by name, one entry per completion; each function's
    mean is logged as reward/<name> and the reward is their weighted sum."""
    (tmp_path / "myreward.py").write_text(
        "import json\n"
        "def quarter(prompts, completions, **fields):\n"
        "    json.dump(sorted(fields), open(__file__ + '.seen', 'w'))\n"
        "    assert len(prompts) == len(completions) == len(fields['key'])\n"
        "    return [0.25] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run(tmp_path / "run", "--method", "grpo", "--reward", "myreward:quarter", "fraction",
        "--reward-weights", "2", "1")
    seen = json.load(open(tmp_path / "myreward.py.seen"))
    assert seen == ["instruction_id_list", "key", "kwargs", "response"]
    for m in metrics(tmp_path / "run"):
        assert m["reward/myreward:quarter"] == 0.25
        assert m["reward"] == pytest.approx(2 * 0.25 + m["reward/fraction"])


def test_gsm8k_trains_from_one_command_and_the_saved_model_keeps_its_task(tmp_path):
    summary = run(tmp_path / "a", "--task", "gsm8k", "--method", "uniapl", "--reward", "answer", "steps",
                  "--reward-weights", "1", "0.5")
    final = json.load(open(tmp_path / "a" / "eval_final.json"))
    assert final["headline"] == "accuracy" and summary["after"] == final["accuracy"]
    assert "reward/answer" in metrics(tmp_path / "a")[-1]      # (steps: None until it writes <<...>>)
    assert json.load(open(tmp_path / "a" / "final" / "uniapl.json"))["task"] == "gsm8k"
    run(tmp_path / "b", "--model", str(tmp_path / "a" / "final"), "--method", "grpo")   # stays gsm8k
    assert json.load(open(tmp_path / "b" / "config.json"))["task"] == "gsm8k"
    with pytest.raises(SystemExit, match="--task nosuchtask: cannot import it"):
        run(tmp_path / "c", "--task", "nosuchtask")
