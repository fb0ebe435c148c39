"""SIGINT and SIGTERM during training: finish the step, save, and say how to resume.

:class:`StopSignals` is a context manager the trainer holds while it trains. In the main thread
it replaces the handlers of SIGINT and SIGTERM by one that only records the signal; the trainer
polls :attr:`StopSignals.received` after every step, writes a checkpoint and stops with an
:class:`~densemtl.errors.Interrupted` (exit status 128 + the signal's number). A second signal
before that stops at once (``KeyboardInterrupt``). The previous handlers are restored on exit.
Elsewhere (a worker thread, where Python cannot install handlers) it does nothing.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Records SIGINT / SIGTERM while active instead of letting them kill the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        """The received signal's name ("SIGTERM"), or "" when none was received."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # a second signal: the user does not want to wait
        self.received = signum

    def __enter__(self) -> StopSignals:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
