"""Run by tests/test_preemption.py: `python train.py ARGS` with one fault injected (or under torchrun).

    UNIAPL_FAULT=WHAT:WHERE:N[:RANK] python tests/preempt_worker.py ARGS...

WHAT is `kill` (SIGKILL: the process vanishes, as on a spot instance or after a scheduler's grace
period) or a signal name (SIGTERM, SIGINT, SIGUSR1: sent to itself, as a scheduler sends it).
WHERE is the moment, counted within this process from 1:
* `step`: the N-th unified step, while it runs (after its rollouts, before its forward and
  backward passes);
* `eval`: the N-th evaluation, while it generates (the one before training counts);
* `fsync`: the N-th file flushed to disk while a checkpoint is written (between two files);
With RANK, only that torchrun rank sends it. Without UNIAPL_FAULT: train.py as is.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import checkpoint  # noqa: E402
import eval  # noqa: E402
import parallel  # noqa: E402
import train  # noqa: E402


def inject(fault: str) -> None:
    what, where, n, *rank = fault.split(":")
    if rank and os.environ.get("RANK", "0") != rank[0]:
        return
    number = signal.SIGKILL if what == "kill" else getattr(signal, what)
    count = {"n": 0}

    def hit():
        count["n"] += 1
        if count["n"] == int(n):
            sys.stdout.flush()
            os.kill(os.getpid(), number)

    def wrap(module, name, before: bool):
        real = getattr(module, name)

        def wrapped(*a, **k):
            if before:
                hit()
                return real(*a, **k)
            out = real(*a, **k)
            hit()
            return out
        setattr(module, name, wrapped)

    if where == "step":      # the signal lands in the middle of the step: its backward is still to come
        wrap(train, "micro_batches", True)
    elif where == "eval":
        wrap(eval, "generate_responses", True)
    elif where == "fsync":
        wrap(checkpoint, "_fsync", False)
    else:
        raise SystemExit(f"unknown fault place {where!r}")


if __name__ == "__main__":
    if os.environ.get("UNIAPL_FAULT"):
        inject(os.environ["UNIAPL_FAULT"])
    summary = train.main(sys.argv[1:])
    print("SUMMARY", summary)
    parallel.shutdown()
