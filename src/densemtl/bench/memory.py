"""Peak tensor memory of a window of code, relative to the moment a probe was opened.

``MemoryProbe`` answers one question: how many bytes of tensors allocated since the probe opened
were alive at the worst moment of the window marked with ``window()``? Opened before a model copy
is made, that is the whole training footprint of the copy: parameters, gradients, optimizer state,
the engine's buffers and the step's activations and temporaries.

- CUDA: ``torch.cuda.max_memory_allocated`` after a reset at the start of the window, minus
  ``memory_allocated`` when the probe opened (the caching allocator's reserve is not counted).
- CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free made by
  PyTorch's CPU allocator with its size; the running sum of those events from the probe's opening
  is the live memory, and its maximum inside the window (a ``record_function`` range) is the
  peak. Memory that libraries allocate behind PyTorch's back (oneDNN scratch space, BLAS
  workspaces, Python objects) is not seen; frees of blocks allocated before the probe opened are
  not counted either. The profiler slows the code it watches, so never time inside a probe.

The CPU path reads the profiler's event tree (``experimental_event_tree``), a semi-private
PyTorch API: if it is missing the probe reports ``None`` rather than a wrong number.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
from collections.abc import Iterator
from types import TracebackType

import torch

WINDOW = "densemtl.bench.window"
# Lines some PyTorch builds print on stderr around every profiler session.
_NOISE = ("USDT:", "profiler_start", "profiler_stop", "gpuGetDeviceCount", "Memory block of unknown size")


@contextlib.contextmanager
def _filtered_native_stderr() -> Iterator[None]:
    """Capture file descriptor 2 and re-emit it without the profiler's banner lines."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if not any(n in line for n in _NOISE)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def _allocation_peak(prof: torch.profiler.profile) -> int | None:
    """Max running sum of CPU allocation events inside the window, counting from the session's start."""
    try:
        from torch._C._profiler import _EventType

        roots = prof.profiler.kineto_results.experimental_event_tree()  # type: ignore[union-attr]
    except (AttributeError, ImportError, RuntimeError):
        return None
    allocations: list[tuple[int, int]] = []
    windows: list[tuple[int, int]] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if fields.device.type == "cpu":
                allocations.append((node.start_time_ns, int(fields.alloc_size)))
        elif node.name == WINDOW:
            windows.append((node.start_time_ns, node.end_time_ns))
    if not windows:
        return None
    start, end = min(w[0] for w in windows), max(w[1] for w in windows)
    live, peak = 0, None
    for when, size in sorted(allocations):
        if when > end:
            break
        if when >= start and peak is None:
            peak = live  # live bytes when the window opened
        live += size
        if peak is not None:
            peak = max(peak, live)
    return live if peak is None else peak


class MemoryProbe:
    """``with MemoryProbe(device) as probe: ...; with probe.window(): ...`` then ``probe.peak_bytes``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self._baseline = 0
        self._prof: torch.profiler.profile | None = None
        self._quiet: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> MemoryProbe:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._quiet = _filtered_native_stderr()
            self._quiet.__enter__()
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        """The code whose peak is reported (one window per probe)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        else:
            with torch.profiler.record_function(WINDOW):
                yield

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._prof is not None:
            try:
                self._prof.__exit__(kind, err, tb)
                if kind is None:
                    self.peak_bytes = _allocation_peak(self._prof)
            finally:
                self._prof = None
                if self._quiet is not None:
                    self._quiet.__exit__(None, None, None)
                    self._quiet = None
