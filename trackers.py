"""Experiment trackers: the run's metrics where researchers already watch them.

    python train.py --report-to tensorboard            # or wandb, trackio; several: --report-to tensorboard wandb
    python train.py --report-to wandb --log-completions-every 20

`metrics.jsonl` is always written; a tracker receives the same numbers, step by step, plus the
evaluations (`eval/prompt_strict`, ...) and, every `--log-completions-every` steps, a small table of
sampled completions with their prompt, verifier reward and discriminator score -- the first place
to look when the reward climbs but the answers get worse. `Meter` (below) measures what every
step logs under time/ and mem/: wall time and, on CUDA, peak memory per phase.

* tensorboard: event files under OUT/tensorboard (read them with `tensorboard --logdir OUT`);
  samples as one markdown table per logging step.
* wandb: a run in project `--tracker-project`; offline with WANDB_MODE=offline (files under OUT).
* trackio: local SQLite under TRACKIO_DIR (Hugging Face's lightweight tracker), same project.

Each is an optional package; asking for one that is not installed stops the run at start with one
line that says what to install. Only rank 0 reports (parallel.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time

import torch

INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb",
           "trackio": "pip install trackio"}


class Trackers:
    """The trackers named in `names`; `log`, `log_samples`, `close` go to every one of them."""

    def __init__(self, names: list[str] | str, out: str = "", project: str = "uniapl",
                 run_name: str = "", config: dict | None = None, resume_step: int | None = None):
        """resume_step: the step a resumed run continues after (None: a new run). TensorBoard
        drops its events after that step (they are logged again); wandb continues the run whose
        id the run directory keeps (its steps already logged are kept, as wandb keeps them)."""
        self.sinks = {}
        for name in [names] if isinstance(names, str) else names:
            if name == "none":
                continue
            if name not in INSTALL:
                raise SystemExit(f"--report-to: unknown tracker {name!r} (none, tensorboard, wandb, "
                                 "trackio)")
            try:
                self.sinks[name] = _OPEN[name](out, project, run_name, config or {}, resume_step)
            except ImportError:
                raise SystemExit(f"--report-to {name} needs the {name} package: {INSTALL[name]}") from None

    def log(self, metrics: dict, step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for name, sink in self.sinks.items():
            if name == "tensorboard":
                for k, v in scalars.items():
                    sink.add_scalar(k, v, step)
            else:
                sink.log(scalars, step=step)

    def log_samples(self, samples: list[dict], step: int) -> None:
        """A table of sampled completions (prompt, completion, reward, discriminator score)."""
        if not samples:
            return
        columns = list(samples[0])
        for name, sink in self.sinks.items():
            if name == "tensorboard":
                rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                rows += ["| " + " | ".join(_cell(s[c]) for c in columns) + " |" for s in samples]
                sink.add_text("samples", "\n".join(rows), step)
            elif name == "wandb":
                import wandb
                sink.log({"samples": wandb.Table(columns=columns,
                                                 data=[[s[c] for c in columns] for s in samples])},
                         step=step)
            else:
                import trackio
                sink.log({"samples": trackio.Table(columns=columns,
                                                   data=[[s[c] for c in columns] for s in samples])},
                         step=step)

    def flush(self) -> None:
        """Everything logged so far onto disk (at each checkpoint: a resumed run drops the steps
        after its checkpoint, so the ones before it must not be lost with a killed process)."""
        for name, sink in self.sinks.items():
            if name == "tensorboard":
                sink.flush()          # wandb and trackio send as they go

    def close(self) -> None:
        for name, sink in self.sinks.items():
            sink.close() if name == "tensorboard" else sink.finish()


def _cell(v) -> str:
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _tensorboard(out, project, run_name, config, resume_step):
    from torch.utils.tensorboard import SummaryWriter
    # purge_step: events at or after it, left by the interrupted process, are dropped on resume
    # (a run started again from step 0 drops everything, its evaluation before training too)
    purge = None if resume_step is None else resume_step + 1 if resume_step else 0
    writer = SummaryWriter(os.path.join(out, "tensorboard"), purge_step=purge)
    writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()), 0)
    return writer


def _wandb(out, project, run_name, config, resume_step):
    import wandb
    id_file = os.path.join(out, "wandb_run_id")     # one wandb run for every start of this run
    if resume_step and os.path.exists(id_file):        # (a restart from step 0 is a new wandb run)
        with open(id_file) as f:
            run_id = f.read().strip()
    else:
        run_id = secrets.token_hex(4)            # wandb's ids: short, lowercase letters and digits
        with open(id_file, "w") as f:
            f.write(run_id)
    return wandb.init(project=project, name=run_name, config=config, dir=out, id=run_id,
                      resume="allow", reinit="finish_previous")


def _trackio(out, project, run_name, config, resume_step):
    import trackio
    trackio.init(project=project, name=run_name, config=config)
    return trackio               # the module logs to the run init opened


_OPEN = {"tensorboard": _tensorboard, "wandb": _wandb, "trackio": _trackio}


class Meter:
    """Wall time per phase of a step (time/<phase>, s) and, on CUDA, peak memory: per phase
    (mem/<phase>, GiB) and of the whole step (mem/step). The allocator keeps one high-water mark,
    so each phase resets it at its start -- after reading it, so that the step's peak also
    covers whatever ran between its phases. `read` returns the step's figures and starts anew
    (what runs between steps, an evaluation say, is not counted)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.figures, self.step_peak, self.fresh = {}, 0.0, True

    def _peak(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
            if not self.fresh:        # the first phase of a step starts the step's peak
                self.step_peak = max(self.step_peak, self._peak())
            torch.cuda.reset_peak_memory_stats()
        self.fresh = False
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
            peak = self._peak()
            self.step_peak = max(self.step_peak, peak)
            self.figures[f"mem/{name}"] = max(self.figures.get(f"mem/{name}", 0.0), peak)
        self.figures[f"time/{name}"] = self.figures.get(f"time/{name}", 0.0) + time.perf_counter() - t0

    def read(self) -> dict:
        out = dict(self.figures)
        if self.cuda:
            torch.cuda.synchronize()
            out["mem/step"] = max(self.step_peak, self._peak())
        self.figures, self.step_peak, self.fresh = {}, 0.0, True
        return out
