"""Methods added to vLLM's worker processes (``worker_extension_cls``), called by name with
``collective_rpc`` so that no pickled callable crosses into the engine.

``release_free_memory``: glibc keeps memory that the worker's forward passes freed inside its
heap (tensors of ever-changing shapes leave holes it cannot return by shrinking the heap's
top), so a CPU worker's resident memory crept up turn after turn. ``malloc_trim(0)`` hands
the free pages back to the kernel; the actor calls it after each weights reload, a pause
between turns that happens once per learner step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


def release_free_memory() -> bool:
    """Return the heap's free pages to the kernel; whether the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class MemoryReleasingWorker:
    """Mixed into vLLM's worker class by ``worker_extension_cls``."""

    def release_free_memory(self) -> bool:
        return release_free_memory()


WORKER_EXTENSION = f"{__name__}.{MemoryReleasingWorker.__qualname__}"
