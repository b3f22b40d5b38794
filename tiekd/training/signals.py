"""SIGTERM and SIGINT (a cluster's pre-emption notice, Ctrl-C) ask a run to stop, not kill it: the
trainer finishes the current update, saves a checkpoint and returns, and `--resume` continues it."""

from __future__ import annotations

import signal


class StopRequests:
    """While entered, SIGTERM/SIGINT set `signum` instead of ending the process; on exit the previous
    handlers come back. `signum` stays set afterwards (the run says which signal stopped it)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def source(self) -> str:
        """What stopped the run, for its last message. Under torchrun the signal may have reached
        another rank only: the trainer all-reduces a stop flag so that every rank stops."""
        return f"signal {self.signum}" if self.requested else "a signal to another rank"

    def _request(self, signum, _frame) -> None:
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._request)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
