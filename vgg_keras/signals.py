"""SIGINT/SIGTERM/SIGHUP during training: a flag the loop checks, and a second signal that exits
at once.  ``STOP`` is the one set of signals that stop a program after saving (the trainer's,
the launcher's forwarding); each exits 128 + its number."""

from __future__ import annotations

import os
import signal
import sys
import threading

# A closed terminal or a dropped ssh connection (SIGHUP) is a stop like any other.
STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP become a flag the loop checks after each session call.

    The first signal is answered at once (a line on stderr naming ``until``, the step the
    running session call ends at) and lets that call finish; the loop then saves a checkpoint
    and exits 130, 143 or 129.  A second one exits at once, even in the middle of a long session
    call: Python runs signal handlers only between bytecodes of the main thread, which a
    session call blocks, so a helper thread reads the signals from a wakeup fd instead.  Exiting there cannot leave a half-written checkpoint that
    a reader would take (see checkpoints.py).
    """

    def __init__(self):
        self.received: int | None = None
        self.until: int | None = None  # the step the loop stops after, where it knows it
        self._previous = {}

    def __enter__(self) -> StopSignals:
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for sig in STOP:
            # The C-level handler writes to the wakeup fd only for signals with a Python handler.
            self._previous[sig] = signal.signal(sig, lambda *_: None)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, args=(read_fd,), daemon=True)
        self._thread.start()
        return self

    def _watch(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while True:
                data = pipe.read(64)
                if not data:  # __exit__ closed the write end
                    return
                for signum in (s for s in data if s in STOP):
                    name = signal.Signals(signum).name
                    if self.received is None:
                        self.received = signum
                        again = "Ctrl-C" if signum == signal.SIGINT else name
                        at = "the running steps" if self.until is None else f"step {self.until}"
                        print(
                            f"{name}: stopping after {at}: saving a checkpoint "
                            f"({again} again to quit without saving)",
                            file=sys.stderr,
                            flush=True,
                        )
                    else:
                        print(f"{name} again: exiting at once, without saving", file=sys.stderr)
                        os._exit(exit_code(signum))

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._write_fd)
        self._thread.join()

    @property
    def exit_code(self) -> int:
        return exit_code(self.received)


def exit_code(signum: int) -> int:
    """The shell's code for a program ended by ``signum``: 130 SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + signum
