"""Run by tests/test_preemption.py: `python train.py ARGS` with one fault injected (or under torchrun).

    UNIAPL_FAULT=WHAT:WHERE:N[:RANK] python tests/preempt_worker.py ARGS...

WHAT is `kill` (SIGKILL: the process vanishes, as on a spot instance or after a scheduler's grace
period) or a signal name (SIGTERM, SIGINT, SIGUSR1: sent to itself, as a scheduler sends it).
WHERE is the moment, counted within this process from 1:
* `step`: the N-th unified step, while it runs (after its rollouts, before its forward and
  backward passes);
* `eval`: the N-th evaluation, while it generates (the one before training counts);
* `fsync`: the N-th file flushed to disk while a checkpoint is written (between two files);
* `load`: the N-th model load (the policy's), as it begins;
* `setup`: joining the process group, 2 s after it began: the process then waits inside it for
  ranks that never come (start it alone with WORLD_SIZE=2), in C++, where a Python signal
  handler never runs.
With RANK, only that torchrun rank sends it. The moment it is sent is printed (`FAULT SENT t`,
time.time()). Without UNIAPL_FAULT: train.py as is.
"""

import os
import signal
import sys
import threading
import time

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

    def send():
        print(f"FAULT SENT {time.time()}", flush=True)
        os.kill(os.getpid(), number)

    def hit():
        count["n"] += 1
        if count["n"] == int(n):
            send()

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
    elif where == "load":
        wrap(checkpoint, "load_policy", True)
    elif where == "setup":
        real = parallel.setup

        def delayed(*a, **k):
            threading.Timer(2.0, send).start()
            return real(*a, **k)
        parallel.setup = delayed
    else:
        raise SystemExit(f"unknown fault place {where!r}")


if __name__ == "__main__":
    if os.environ.get("UNIAPL_FAULT"):
        inject(os.environ["UNIAPL_FAULT"])
    summary = train.main(sys.argv[1:])
    print("SUMMARY", summary)
    parallel.shutdown()
