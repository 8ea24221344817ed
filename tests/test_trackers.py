"""trackers.py: the run's metrics, evaluations and completion tables reach each tracker (offline)."""

import importlib.util
import json
import os
import sys

import pytest

import trackers
import train
from tests.test_train import TINY


def test_tensorboard_receives_metrics_evaluations_and_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    train.main(TINY + ["--out", str(tmp_path), "--report-to", "tensorboard",
                       "--log-completions-every", "2"])
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    for tag in ("loss", "reward", "sft/nll", "adv/loss"):
        assert [(e.step, round(e.value, 5)) for e in acc.Scalars(tag)] == \
            [(m["step"], round(m[tag], 5)) for m in lines]       # the same numbers as metrics.jsonl
    final = json.load(open(tmp_path / "eval_final.json"))
    assert [e.step for e in acc.Scalars("eval/prompt_strict")] == [0, 3]
    assert acc.Scalars("eval/prompt_strict")[-1].value == pytest.approx(final["prompt_strict"])
    table = tensor_util.make_ndarray(acc.Tensors("samples/text_summary")[0].tensor_proto).item().decode()
    assert table.startswith("| prompt | completion | reward | discriminator |")
    assert acc.Tensors("samples/text_summary")[0].step == 2


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is optional (pip install wandb)")
def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train.main(TINY + ["--out", str(tmp_path), "--report-to", "wandb"])
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run")]
    assert len(runs) == 1


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None,
                    reason="trackio is optional (pip install trackio)")
def test_trackio_local(tmp_path):
    import sqlite3

    from trackio.sqlite_storage import SQLiteStorage
    project = f"uniapl-test-{os.getpid()}"      # trackio reads TRACKIO_DIR once, at import
    train.main(TINY + ["--out", str(tmp_path / "run"), "--report-to", "trackio", "--tracker-project",
                       project])
    db = SQLiteStorage.get_project_db_path(project)
    try:
        assert sqlite3.connect(db).execute("select count(*) from metrics").fetchone()[0] >= 3
    finally:
        for suffix in ("", ".lock", "-shm", "-wal"):
            if os.path.exists(f"{db}{suffix}"):
                os.remove(f"{db}{suffix}")


def test_missing_tracker_package_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SystemExit, match="--report-to wandb needs the wandb package: pip install wandb"):
        train.main(TINY + ["--out", str(tmp_path), "--report-to", "wandb"])
    with pytest.raises(SystemExit, match="unknown tracker 'mlflow'"):
        train.main(TINY + ["--out", str(tmp_path / "b"), "--report-to", "mlflow"])


def test_tensorboard_resumed_run_drops_the_steps_after_its_checkpoint(tmp_path):
    """A run killed after logging step 4 resumes from step 2's checkpoint: steps 3 and 4 are logged
    again, and TensorBoard shows each step once, with the resumed run's values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    first = trackers.Trackers(["tensorboard"], str(tmp_path))
    for step in (1, 2, 3, 4):
        first.log({"loss": float(step)}, step)
    first.close()
    again = trackers.Trackers(["tensorboard"], str(tmp_path), resume_step=2)
    for step in (3, 4, 5):
        again.log({"loss": 10.0 * step}, step)
    again.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0),
                                                                (4, 40.0), (5, 50.0)]


def test_wandb_resumes_the_run_whose_id_the_run_directory_keeps(tmp_path, monkeypatch):
    """A fake wandb module records wandb.init's arguments (wandb.init(id=..., resume="allow")
    continues the run with that id, or creates it)."""
    import types
    inits = []

    class FakeRun:
        def log(self, *a, **k):
            pass

        def finish(self):
            pass

    fake = types.SimpleNamespace(init=lambda **k: inits.append(k) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for resume_step in (None, 2, 4, 0):       # a new run, two resumes, a restart from step 0
        trackers.Trackers(["wandb"], str(tmp_path), resume_step=resume_step).close()
    ids = [k["id"] for k in inits]
    assert ids[0] == ids[1] == ids[2] != ids[3] and all(k["resume"] == "allow" for k in inits)
    assert open(tmp_path / "wandb_run_id").read() == ids[3]
