"""Stopping a run cleanly on a signal: finish the iteration, write a resume state, exit.

SIGTERM (``kill``; SLURM at the time limit or on preemption; torchrun passing on its own SIGTERM),
SIGINT (Ctrl-C) and SIGUSR1 (SLURM's early warning, ``sbatch --signal=USR1@120``) ask the loop to
stop after the iteration in progress. The loop then writes a resume state of that iteration, so
that rerunning the same command with ``--resume latest`` continues exactly there instead of at the
last snapshot, and ``train.py`` exits with 128 + the signal's number, as a process killed by it would.

The same signal a second time stops at once, the usual way (Ctrl-C twice). A *different* signal
does not: under torchrun, Ctrl-C reaches the workers as SIGINT from the terminal and, a moment
later, as SIGTERM from the agent, and SLURM follows its SIGUSR1 with SIGTERM.
"""
from __future__ import annotations

import signal
import threading
from typing import Dict, List, Optional

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def _present() -> List[int]:
    """The :data:`STOP_SIGNALS` this platform has (no SIGUSR1 on Windows)."""
    return [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]


class StopRequest:
    """While installed (main thread only), catches :data:`STOP_SIGNALS`; ``signal_name`` is the
    first one caught ('SIGTERM', ...) or None. The handler only records: the loop acts on it."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, object] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self   # signal.signal works only there; a loop run from a thread stops the default way
        for sig in _present():
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = name
        elif name == self.signal_name:   # asked twice: give the signal its usual effect now
            self.restore()
            signal.raise_signal(signum)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)   # None: set outside Python
        self._previous = {}


def exit_status(signal_name: Optional[str]) -> int:
    """128 + the signal's number (the shell's status of a process that signal killed); 0 for None."""
    return 128 + int(signal.Signals[signal_name]) if signal_name else 0


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore the stop signals, which SLURM and the terminal
    also send to them. The main process finishes its iteration and then shuts them down; had they
    died of the signal, it would have raised in the middle of that iteration."""
    for sig in _present():
        signal.signal(sig, signal.SIG_IGN)
