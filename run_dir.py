"""The run directory `--out`: one run per directory, opened to start, to resume or to say it ended.

Plumbing, kept out of train.py's way. What `OUT/` holds: config.json (the run's settings),
metrics.jsonl (a line per step), eval_*.json (the evaluations), checkpoints/step-N/ (checkpoint.py)
and, once the run has ended, final/ (a from_pretrained directory with its marker uniapl.json).

* `open_run` makes it ready for the loop: with --resume it clears what a process killed while
  saving left, refuses a directory that holds another run (`same_run`: any setting that changes
  the run differs), says so when the run has already ended (`finished_run`), and loads the newest
  whole checkpoint; metrics.jsonl is then cut back to that step, so that the lines of steps run
  again are not written twice.
* Small files are written whole or not at all (`write_json`: a temporary file, then a rename).
* With several processes (parallel.py) rank 0 decides and writes, and every rank hears its answer.
"""

from __future__ import annotations

import json
import os

import checkpoint
import parallel


def open_run(s, config: dict, ctx: parallel.Context, say, policy, optimizer, scheduler,
             sampler) -> tuple[int, dict | None]:
    """The run directory `s.out`, ready for the loop: (the step to start from, None), or
    (s.steps, its summary) when the run has already ended (the same command after its end).

    Rank 0 creates it; with --resume it clears what a process killed while saving left, refuses a
    directory that holds another run's settings (`config`: what config.json holds), and finds the
    newest whole checkpoint, which every rank loads (--resume auto with none: the run starts again,
    its partial metrics and evaluations replaced). Then metrics.jsonl is cut back to that step and
    config.json written."""
    main, out = ctx.is_main, s.out
    if main:
        prepare_out(out, resuming=s.resume is not None)
        if s.resume:
            checkpoint.tidy_checkpoints(out)              # what a process killed while saving left
    problem = ctx.broadcast_object(same_run(out, config) if main and s.resume else None)
    if problem:
        raise SystemExit(problem)
    done = ctx.broadcast_object(finished_run(out, s.steps) if main and s.resume == "auto" else None)
    if done:
        say(f"{out} holds this run, finished after {s.steps} steps (final/): nothing to do")
        return s.steps, done
    path = ctx.broadcast_object(checkpoint.find_checkpoint(s.resume, out, say) if main and s.resume else None)
    start = 0
    if path:
        start = checkpoint.load_checkpoint(path, policy, optimizer, scheduler, sampler, ctx)
        if start > s.steps:
            raise SystemExit(f"--steps {s.steps} is below the step of {path} ({start}); run it "
                             f"with --steps {start} or more")
        say(f"resumed from {path} at step {start}")
    elif s.resume and main and clear_unfinished(out):
        say(f"{out}: no whole checkpoint; the run starts again from step 0 (its partial metrics "
            "and evaluations are replaced)")
    if main:
        truncate_metrics(out, start)
        write_json(os.path.join(out, "config.json"), config)
    return start, None


def write_json(path: str, obj) -> None:
    """Written whole or not at all (a temporary file, then a rename): a run stopped or killed
    while writing never leaves half a config.json or evaluation behind."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def prepare_out(out: str, resuming: bool) -> None:
    """Create the run directory; refuse to mix two runs in one directory (rank 0 only)."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"output directory {out!r} is not writable ({e.strerror}); choose "
                         "another with --out") from None
    if not resuming and os.path.exists(os.path.join(out, "metrics.jsonl")):
        raise SystemExit(f"{out} already holds a run; use --resume auto to continue it, or "
                         "another --out")


def same_run(out: str, settings: dict) -> str | None:
    """Why `out` holds another run, or None: its config.json must agree with `settings` in every
    setting that changes the run (the line names the first that differs). How it is run -- where
    it is written, trackers, checkpoint frequency, the number of steps, the device -- may change."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    # CHORD-mu's decay spans the run unless its length is set: then --steps changes the schedule
    schedule_follows_steps = str(settings.get("method", "")).endswith("chord-mu") and \
        settings.get("chord_mu_decay_steps") is None
    for key, value in settings.items():
        if (key in RUN_ONLY and not (key == "steps" and schedule_follows_steps)) or \
                key not in saved or saved[key] == value:
            continue
        return (f"{out} holds another run: its --{key.replace('_', '-')} was {saved[key]!r}, now "
                f"{value!r}; use another --out, or that run's settings to continue it")
    return None


RUN_ONLY = {"resume", "out", "steps", "save_every", "save_every_minutes", "save_total_limit",
            "report_to", "tracker_project", "log_completions_every", "no_progress", "eval_every",
            "eval_start", "eval_limit", "device", "world_size",  # world size: load_checkpoint checks
            # memory and speed (a job moved to another GPU): the same run, up to rounding
            "micro_batch_size", "gradient_checkpointing", "logprobs_backend", "rollout_engine",
            "vllm_gpu_memory_utilization"}


def save_final(s, model, tokenizer, ctx: parallel.Context) -> None:
    """OUT/final: the trained model, loadable with from_pretrained, and its marker uniapl.json
    (world, task, method, steps: `finished_run` reads it, and a run from it stays in its world
    and task). Every rank calls it (FSDP2 gathers the weights); rank 0 writes."""
    weights, _ = checkpoint.full_state(model, None, ctx)
    if ctx.is_main:
        marker = {"world": s.world, "task": s.task, "method": s.method, "steps": s.steps,
                  "source_model": s.model}
        checkpoint.save_pretrained_atomic(model, tokenizer, os.path.join(s.out, "final"), {"uniapl.json": marker},
                               state_dict=weights if ctx.fsdp else None)
    ctx.barrier()


def finished_run(out: str, steps: int) -> dict | None:
    """The summary of a run in `out` that ended (final/ written after `steps` steps, evaluated),
    or None: the same command run again after the end has nothing to redo."""
    marker, final = os.path.join(out, "final", "uniapl.json"), os.path.join(out, "eval_final.json")
    if not (os.path.exists(marker) and os.path.exists(final)):
        return None
    with open(marker) as f:
        if json.load(f).get("steps") != steps:
            return None
    with open(final) as f:
        after = json.load(f)
    headline = after.get("headline", "prompt_strict")        # the task's first metric
    start = os.path.join(out, "eval_start.json")
    before = json.load(open(start)).get(headline) if os.path.exists(start) else None
    return {"before": before, "after": after.get(headline), "teacher": None, "out": out,
            "finished": True}


def clear_unfinished(out: str) -> bool:
    """Remove what a run that never wrote a checkpoint left (metrics, evaluations); True if any."""
    left = [os.path.join(out, n) for n in os.listdir(out)
            if n == "metrics.jsonl" or (n.startswith("eval_") and n.endswith(".json"))]
    for name in left:
        os.remove(name)
    return bool(left)



def truncate_metrics(out: str, step: int) -> None:
    """Drop metrics.jsonl lines written after `step` (they will be written again), and a torn
    last line (a process killed, or a disk full, in the middle of writing it)."""
    path = os.path.join(out, "metrics.jsonl")
    if os.path.exists(path):
        kept = []
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    break          # a torn line is the last one written: nothing after it counts
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
