"""SIGINT and SIGTERM stop a study the same way: the run in flight is stopped, the study saved.

While a study runs, :class:`StopSignals` replaces both handlers with one that records which
signal arrived and raises :class:`Terminated` (SIGTERM) or ``KeyboardInterrupt`` (SIGINT) in
the main thread, so every ``except KeyboardInterrupt`` in the runners (stop and remove the
container, forward SIGINT to a local harness) handles a ``kill`` or ``docker stop`` of
``llem`` exactly like Ctrl-C. The executor reads :attr:`StopSignals.received` to learn that
the study must stop even when the run in flight had already finished (its ``result.json``
written): that run counts as completed. Exit status: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's ``KeyboardInterrupt`` would be."""


#: Exit status of a study stopped by each signal (128 + N, the shell's convention).
EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignals:
    """Context manager: SIGINT/SIGTERM raise in the main thread and are remembered."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.received = self.received or sig
        if sig == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        """130 (SIGINT) or 143 (SIGTERM); 130 when nothing was recorded (a raw Ctrl-C)."""
        return EXIT_FOR_SIGNAL.get(self.received or signal.SIGINT, 130)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
