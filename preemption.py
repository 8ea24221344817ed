"""Stop signals: a run on a preemptible machine ends where the signal lands, and loses nothing.

Plumbing, kept out of train.py's way (docs/running.md, "Preemptible clusters").

SIGTERM, SIGINT and SIGUSR1 (a scheduler's warning before it kills a job) ask the run to stop.
What is lost depends on where the run is, so `StopSignals.mode` follows it:

* before the first step (joining the process group, loading, the first evaluation) there is
  nothing to save: the process ends at once;
* in an evaluation between steps, the evaluation is dropped (`StopNow` is raised in it);
* in a step, the step finishes.

Then train.py checkpoints the last finished step (checkpoint.py) and the same command continues
the run bit for bit. Why a watchdog thread and not only a handler: a Python signal handler runs
only between bytecodes of the main thread, and a rank waiting in a C++ call (the process group's
start) never gets there; CPython writes each signal's number to a wakeup pipe the moment it
arrives, and a thread reading that pipe can end the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


class StopNow(BaseException):
    """A stop signal that drops what the run is doing now (an evaluation between steps); not an
    Exception, so that no `except Exception` on the way swallows it."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.number = int(number)


class StopSignals:
    """SIGTERM, SIGINT and SIGUSR1 (a scheduler's warning, e.g. SLURM's --signal=USR1@120) ask the
    run to stop. How soon depends on where it is, `mode`:

    * "start" -- before the first step (joining the process group, loading, the first evaluation):
      there is nothing to save, so the process ends at once, with exit status 128 + the signal's
      number (what a shell reports for a process ended by it; torchrun's agent then stops the
      other ranks) and a line saying nothing was lost. A watchdog thread ends it: CPython writes
      every signal's number to a wakeup pipe the moment it arrives, also while the main thread
      waits in a C++ call that never returns to Python -- a rank waiting for the others in the
      process group's start, where a Python handler never runs.
    * "drop" -- inside `dropping()` (an evaluation between steps): the handler raises StopNow in
      the main thread; the loop then checkpoints the last finished step.
    * "step" -- inside a step: the handler records which signal came; the loop finishes the step,
      writes a checkpoint and exits 0. A second SIGINT (Ctrl-C twice) stops at once.

    `install` replaces the handlers, `restore` puts the old ones back. Only the main thread may
    set signal handlers (Python's rule), so off it `install` does nothing: a run started from a
    thread (a notebook's worker, a test's) runs without stop signals."""

    SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self):
        self.number, self.previous, self.mode = 0, {}, "start"   # number: the first signal (0: none)
        self._pipe = None                                         # (read end, write end, old fd)

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self.previous[number] = signal.signal(number, self._handle)
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipe = (read, write, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
        threading.Thread(target=self._watch, args=(read,), name="stop-signals", daemon=True).start()
        return self

    def _handle(self, number, frame) -> None:
        if number == signal.SIGINT and self.number and self.mode == "step":
            raise KeyboardInterrupt           # the second Ctrl-C: now
        self.number = self.number or int(number)
        if self.mode == "drop":
            raise StopNow(self.number)

    def _watch(self, read: int) -> None:
        """The watchdog: each byte on the pipe is a signal's number, written as it arrived."""
        while got := os.read(read, 64):       # b"" once `restore` closed the write end
            for number in got:
                if number in self.previous and self.mode == "start":
                    sys.stdout.flush()
                    print(f"stopped by {signal.Signals(number).name} before the first step: nothing "
                          "was lost; run the same command to continue", flush=True)
                    os._exit(128 + number)
        os.close(read)

    @contextlib.contextmanager
    def dropping(self):
        """Within it, once steps have begun, a stop signal raises StopNow (also one that came
        before it); before the first step the process still ends at once."""
        if self.number and self.mode == "step":
            raise StopNow(self.number)
        mode, self.mode = self.mode, "drop" if self.mode == "step" else self.mode
        try:
            yield
        finally:
            self.mode = mode

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
        if self._pipe:
            read, write, old = self._pipe
            signal.set_wakeup_fd(old)
            os.close(write)                   # the watchdog reads b"" and ends
            self._pipe = None
