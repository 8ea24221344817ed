"""Preemption-proof runs: kill the run anywhere, start the same command again, get the same model.

Every start below is its own process (tests/preempt_worker.py: train.py with one fault injected),
as a cluster would start it: SIGKILL at moments drawn by a seeded random generator, a scheduler's
SIGTERM in the middle of a step (one process, and one rank of two under torchrun), and the
checkpoints a killed write leaves behind (a full disk: tests/test_train.py).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import train
from tests.test_train import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# checkpoints at steps 2 and 4, an evaluation at step 3, five steps: every kind of moment occurs
ARGS = [*TINY[2:], "--steps", "5", "--method", "uniapl", "--save-every", "2", "--eval-every", "3",
        "--resume", "auto"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def start(out, fault=None, ranks=1, timeout=300, **env):
    """One start of the job's command; UNIAPL_FAULT says where it is killed or signalled."""
    env = dict(ENV, UNIAPL_FAULT=fault or "", **env)
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    t0 = time.perf_counter()
    res = subprocess.run([*launcher, "tests/preempt_worker.py", *ARGS, "--out", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=timeout)
    res.wall_s, res.ended = time.perf_counter() - t0, time.time()
    return res


def after_the_signal(res) -> float:
    """Seconds from the fault's signal (the worker prints when it sent it) to the process's end."""
    sent = [float(line.split()[-1]) for line in res.stdout.splitlines() if line.startswith("FAULT SENT")]
    assert sent, res.stdout[-2000:]
    return res.ended - sent[0]


def weights(out):
    return load_file(os.path.join(out, "final", "model.safetensors"))


def bit_identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def lines(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in f]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    res = start(out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_killed_at_random_moments_and_started_again_ends_with_the_uninterrupted_weights(
        tmp_path, uninterrupted):
    """Five starts of one command: SIGKILL before the first checkpoint, during an evaluation, between
    two files of a checkpoint's write, then at a moment of any of those kinds; the fifth finishes."""
    draw = random.Random(32)
    faults = [f"kill:step:{draw.randint(1, 2)}",             # before the first checkpoint (step 2's)
              f"kill:eval:{draw.randint(1, 2)}",             # the evaluation before training or step 3's
              f"kill:fsync:{draw.randint(1, 4)}",            # between two files of a checkpoint
              draw.choice(["kill:step:1", "kill:eval:1", f"kill:fsync:{draw.randint(1, 4)}"]),
              None]
    out = tmp_path / "run"
    for i, fault in enumerate(faults):
        res = start(out, fault)
        if fault:           # each drawn moment came: the process died there
            assert res.returncode == -signal.SIGKILL, (i, fault, res.returncode, res.stderr[-2000:])
        else:
            assert res.returncode == 0, res.stderr[-3000:]
    assert "no whole checkpoint; the run starts again from step 0" in res.stdout or \
        "resumed from" in res.stdout
    assert bit_identical(weights(out), weights(uninterrupted))
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("eval/")} for m in ms]  # noqa: E731
    assert strip(lines(out)) == strip(lines(uninterrupted))      # one line per step, as if never killed
    assert not [d for d in os.listdir(out / "checkpoints") if "." in d]     # no half directories left


def test_sigterm_mid_step_stops_after_that_step_with_a_checkpoint_and_resumes_exactly(
        tmp_path, uninterrupted):
    out = tmp_path / "run"
    res = start(out, "SIGTERM:step:3")        # step 3: an evaluation was due after it
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped by SIGTERM after step 3; checkpoint" in res.stdout
    assert "run the same command to continue" in res.stdout
    assert checkpoint.list_checkpoints(str(out))[-1].endswith("step-0000003")
    assert [m["step"] for m in lines(out)] == [1, 2, 3] and not os.path.exists(out / "final")
    res = start(out)
    assert res.returncode == 0 and "resumed from" in res.stdout and "at step 3" in res.stdout
    assert bit_identical(weights(out), weights(uninterrupted))


@pytest.mark.parametrize("fault", ["SIGTERM:load:1", "SIGINT:eval:1"])
def test_a_signal_before_the_first_step_ends_the_process_at_once(tmp_path, fault, uninterrupted):
    """While the model loads or the evaluation before training runs, there is nothing to save: the
    process ends at once, with 128 + the signal's number (as a shell reports a process it ended)
    and a line saying nothing was lost; nothing of the run was written; the next start runs it
    all and ends with the uninterrupted weights."""
    out = tmp_path / "run"
    res = start(out, fault)
    number = getattr(signal, fault.split(":")[0])
    assert res.returncode == 128 + number, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert f"stopped by {signal.Signals(number).name} before the first step: nothing was lost" in res.stdout
    assert after_the_signal(res) < 5
    assert not (out / "eval_start.json").exists() and not (out / "metrics.jsonl").exists()
    if "load" in fault:     # ended in the load: nothing after it ran
        assert "world, 1 process(es)" not in res.stdout and not out.exists()
    else:
        res = start(out)
        assert res.returncode == 0, res.stderr[-3000:]
        assert bit_identical(weights(out), weights(uninterrupted))


def test_a_rank_waiting_in_the_process_groups_start_ends_at_once(tmp_path):
    """Rank 0 of 2, started alone, waits inside init_process_group for a rank that never comes:
    in C++, where a Python signal handler never runs (the signal used to be ignored there until
    torchrun's agent killed the rank). The SIGTERM sent 2 s into the wait ends it at once."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = start(tmp_path / "run", "SIGTERM:setup:1", timeout=120, WORLD_SIZE="2", RANK="0",
                LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    assert res.returncode == 128 + signal.SIGTERM, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "stopped by SIGTERM before the first step: nothing was lost" in res.stdout
    assert after_the_signal(res) < 5


def test_sigterm_in_an_evaluation_between_steps_drops_it_and_resumes_exactly(tmp_path, uninterrupted):
    """The evaluation after step 3 is dropped where the signal lands (its result is never
    written), step 3 is checkpointed, and the next start ends with the uninterrupted weights."""
    out = tmp_path / "run"
    res = start(out, "SIGTERM:eval:2")        # the evaluation before training is the first
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped by SIGTERM after step 3; checkpoint" in res.stdout
    assert "(the evaluation due after step 3 is skipped)" in res.stdout
    assert checkpoint.list_checkpoints(str(out))[-1].endswith("step-0000003")
    assert [m["step"] for m in lines(out)] == [1, 2, 3] and not (out / "eval_step3.json").exists()
    res = start(out)
    assert res.returncode == 0 and "resumed from" in res.stdout and "at step 3" in res.stdout
    assert bit_identical(weights(out), weights(uninterrupted))


def test_sigterm_to_one_rank_of_two_stops_both_after_the_same_step(tmp_path):
    """Under torchrun the flag rides on the step's all-reduce: rank 1 alone is signalled, both ranks
    stop after step 2, rank 0 writes its checkpoint, and the resumed run ends as the uninterrupted;
    the same when rank 1 alone is signalled in an evaluation between steps."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    res = start(full, ranks=2)
    assert res.returncode == 0, res.stderr[-3000:]
    res = start(cut, "SIGUSR1:step:2:1", ranks=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped by SIGUSR1 after step 2" in res.stdout
    assert checkpoint.list_checkpoints(str(cut))[-1].endswith("step-0000002")
    assert [m["step"] for m in lines(cut)] == [1, 2]
    res = start(cut, ranks=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert bit_identical(weights(cut), weights(full))
    # in an evaluation between steps: rank 1 drops its share, rank 0 learns it at the gather
    res = start(tmp_path / "dropped", "SIGUSR1:eval:2:1", ranks=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stopped by SIGUSR1 after step 3" in res.stdout and "is skipped" in res.stdout
    assert not (tmp_path / "dropped" / "eval_step3.json").exists()
    res = start(tmp_path / "dropped", ranks=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert bit_identical(weights(tmp_path / "dropped"), weights(full))


def test_a_damaged_latest_checkpoint_is_skipped_for_the_one_before(tmp_path, capsys):
    out = str(tmp_path)
    train.main([*ARGS, "--out", out, "--steps", "4", "--eval-every", "0"])
    older, newest = checkpoint.list_checkpoints(out)
    assert checkpoint.check_manifest(newest) is None
    with open(os.path.join(newest, "trainer_state.pt"), "r+b") as f:     # truncated
        f.truncate(100)
    assert checkpoint.find_checkpoint("auto", out) == older
    assert "skipping" in capsys.readouterr().out
    # set aside: it no longer counts against --save-total-limit, and stays for a person to see
    assert checkpoint.list_checkpoints(out) == [older] and os.path.isdir(newest + ".damaged")
    os.remove(os.path.join(older, checkpoint.MANIFEST))                  # its write never finished
    assert checkpoint.find_checkpoint("auto", out) is None and checkpoint.list_checkpoints(out) == []
    with pytest.raises(SystemExit, match="is damaged: trainer_state.pt has 100 bytes"):
        checkpoint.find_checkpoint(newest + ".damaged", out)


def test_a_torn_metrics_line_and_a_broken_safetensors_header_do_not_stop_a_resume(tmp_path):
    out = str(tmp_path)
    train.main([*ARGS, "--out", out, "--steps", "4", "--eval-every", "0"])
    newest = checkpoint.list_checkpoints(out)[-1]
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "loss": 1.2')                          # killed mid-line
    with open(os.path.join(newest, "model.safetensors"), "r+b") as f:
        f.write((2**62).to_bytes(8, "little"))                      # a header length past the file
    assert checkpoint.check_manifest(newest) == "model.safetensors does not match its checksum"
    train.main([*ARGS, "--out", out, "--steps", "5", "--eval-every", "0"])
    assert [m["step"] for m in lines(out)] == [1, 2, 3, 4, 5]


def test_a_resumed_run_continues_from_the_checkpoint_before_a_damaged_one(tmp_path):
    out = str(tmp_path)
    train.main([*ARGS, "--out", out, "--eval-every", "0"])
    reference = load_file(os.path.join(out, "final", "model.safetensors"))
    newest = checkpoint.list_checkpoints(out)[-1]                           # step 5's
    with open(os.path.join(newest, "model.safetensors"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(newest, "model.safetensors")) - 8)
    os.remove(os.path.join(out, "eval_final.json"))     # as if killed in the final evaluation
    summary = train.main([*ARGS, "--out", out, "--eval-every", "0"])
    assert summary["out"] == out
    again = load_file(os.path.join(out, "final", "model.safetensors"))
    assert bit_identical(again, reference)        # step 4's checkpoint, then step 5 once more


def test_resume_auto_starts_an_empty_directory_and_refuses_another_runs(tmp_path, capsys):
    out = str(tmp_path / "run")
    train.main([*ARGS, "--out", out, "--steps", "1", "--save-every", "0", "--eval-every", "0"])
    assert [m["step"] for m in lines(out)] == [1]         # --resume auto on nothing: the run starts
    shutil.rmtree(os.path.join(out, "final"))            # as if killed before its end
    train.main([*ARGS, "--out", out, "--steps", "1", "--save-every", "0", "--eval-every", "0"])
    assert "no whole checkpoint; the run starts again from step 0" in capsys.readouterr().out
    assert [m["step"] for m in lines(out)] == [1]         # its partial metrics were replaced
    with pytest.raises(SystemExit, match="holds another run: its --learning-rate was 0.001, now 0.002"):
        train.main([*ARGS, "--out", out, "--learning-rate", "2e-3"])
    # how it is run may change: more steps, checkpoint frequency, trackers
    train.main([*ARGS, "--out", out, "--steps", "2", "--save-every", "1", "--eval-every", "0"])


def test_a_second_sigint_stops_at_once(tmp_path, monkeypatch):
    real = train.micro_batches

    def two_ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)       # the first: stop after this step
        os.kill(os.getpid(), signal.SIGINT)       # the second: now
        return real(*a, **k)

    monkeypatch.setattr(train, "micro_batches", two_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train.main([*ARGS, "--out", str(tmp_path), "--eval-every", "0"])
    assert signal.getsignal(signal.SIGINT) is handler        # the handlers are put back
    assert not os.path.exists(tmp_path / "checkpoints")


def test_save_every_minutes_checkpoints_by_the_clock(tmp_path, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(train.time, "monotonic", lambda: clock["t"])
    real = train.micro_batches

    def ninety_seconds(*a, **k):
        clock["t"] += 90.0
        return real(*a, **k)

    monkeypatch.setattr(train, "micro_batches", ninety_seconds)
    train.main([*ARGS, "--out", str(tmp_path), "--save-every", "0", "--save-every-minutes", "2.5",
                "--eval-every", "0", "--save-total-limit", "5"])
    # 90 s a step: 2.5 minutes have passed after steps 2 and 4 (counted from the last checkpoint)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path))] == \
        ["step-0000002", "step-0000004"]


def test_the_same_command_after_the_end_has_nothing_to_redo(tmp_path, capsys):
    out = str(tmp_path)
    first = train.main([*ARGS, "--out", out, "--steps", "2", "--save-every", "2", "--eval-every", "0"])
    weights = os.path.getmtime(os.path.join(out, "final", "model.safetensors"))
    again = train.main([*ARGS, "--out", out, "--steps", "2", "--save-every", "2", "--eval-every", "0"])
    assert "finished after 2 steps (final/): nothing to do" in capsys.readouterr().out
    assert again["after"] == first["after"] and again["finished"]
    assert os.path.getmtime(os.path.join(out, "final", "model.safetensors")) == weights
    with pytest.raises(SystemExit, match="--steps 1 is below the step of"):
        train.main([*ARGS, "--out", out, "--steps", "1", "--save-every", "1", "--eval-every", "0"])


def test_a_signal_in_the_last_step_leaves_the_final_evaluation_to_the_next_start(tmp_path, monkeypatch,
                                                                                capsys):
    """A stop asked for in the final evaluation (dropped where it lands), or while the last step's
    checkpoint is written, is honoured before the final evaluation finishes (the real run's is
    long), even with --save-every 0: the last step is checkpointed, and the next start evaluates
    and saves."""
    import eval
    out = str(tmp_path)
    for module, name, nth, extra in ((eval, "generate_responses", 2, ["--save-every", "0"]),
                                     (checkpoint, "_fsync", 1, ["--save-every", "1"])):
        real, calls = getattr(module, name), {"n": 0}

        def signalled(*a, real=real, calls=calls, nth=nth, **k):
            calls["n"] += 1
            if calls["n"] == nth:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)

        monkeypatch.setattr(module, name, signalled)
        summary = train.main([*ARGS, "--out", out, "--steps", "1", "--eval-every", "0", *extra])
        assert summary["stopped_after"] == 1 and not os.path.exists(os.path.join(out, "final"))
        assert checkpoint.list_checkpoints(out)[-1].endswith("step-0000001")
        assert not os.path.exists(os.path.join(out, "eval_final.json"))
        monkeypatch.setattr(module, name, real)
        summary = train.main([*ARGS, "--out", out, "--steps", "1", "--eval-every", "0", *extra])
        assert os.path.exists(os.path.join(out, "final", "model.safetensors")) and "after" in summary
        shutil.rmtree(out)
    assert capsys.readouterr().out.count("before the final evaluation") == 2
