"""trackers.py: the run's metrics, evaluations and completion tables reach each tracker (offline)."""

import importlib.util
import json
import os
import sys

import pytest

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
