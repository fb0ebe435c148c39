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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from densemtl.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: Seconds within which the same signal again is taken for a forwarded copy of the first.
REPEAT_S = 5.0


class SignalScope(ABC):
    """While inside (in the main thread; elsewhere nothing changes), SIGINT and SIGTERM go to
    :meth:`_handle`; the previous handlers come back on exit. Subclasses say what a signal does."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    @abstractmethod
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """What a SIGINT or SIGTERM does while inside."""

    def __enter__(self) -> SignalScope:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class StopSignals(SignalScope):
    """Records SIGINT / SIGTERM while active instead of letting them kill the process."""

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None

    @property
    def name(self) -> str:
        """The received signal's name ("SIGTERM"), or "" when none was received."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def stopped(self, where: str, resume: str) -> Interrupted:
        """The error to stop with after the received signal, a checkpoint saved at ``where``;
        exit status 128 + the signal's number, and the ``resume`` command in the message."""
        assert self.received is not None
        return Interrupted(
            f"training stopped by {self.name} at {where}; checkpoint saved; resume with: {resume}",
            128 + self.received,
        )

    def stop_if_received(self, comm: Any, save: Callable[[], None] | None, where: str, out: Path) -> None:
        """After a SIGINT or SIGTERM on any rank of ``comm``: ``save`` a checkpoint (None: one was
        just written) and raise :meth:`stopped`, with the command that resumes run ``out``."""
        if not comm.any(self.received is not None):
            return
        if save is not None:
            save()
        if self.received is None:  # another rank was signalled: stop with it
            self.received = signal.SIGTERM
        again = f"densemtl train --resume --out {out}"
        if comm.active:
            again = f"torchrun --nproc_per_node N -m {again} (any N)"
        stop = self.stopped(where, again)
        stop.quiet = not comm.is_main  # type: ignore[attr-defined]
        raise stop

    _at = 0.0  # when the first signal came (time.monotonic)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            # the same signal again within REPEAT_S: a launcher (torchrun, srun) forwarding what the
            # process already got, not a user who does not want to wait
            if signum == self.received and time.monotonic() - self._at < REPEAT_S:
                return
            raise KeyboardInterrupt  # a second signal: the user does not want to wait
        self.received = signum
        self._at = time.monotonic()

    def __enter__(self) -> StopSignals:
        self.received = None
        super().__enter__()
        return self
