"""Exceptions raised by shmrcu.

Every shmrcu error carries ``.errno`` with the BPF (bpf(2)) equivalent, so
code ported from BPF map handling can keep its error dispatch.
"""
from __future__ import annotations

import errno as _errno
from dataclasses import dataclass


class ShmrcuError(Exception):
    """Base class of shmrcu's own errors."""

    errno: int = _errno.EINVAL

    def __init__(self, message: str = "", *, errno: int | None = None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class RuntimeExists(ShmrcuError, FileExistsError):
    """``Runtime.create`` found a control segment of that name already."""

    errno = _errno.EEXIST


class RuntimeNotFound(ShmrcuError, FileNotFoundError):
    """``Runtime.attach`` found no control segment of that name."""

    errno = _errno.ENOENT


class CorruptSegment(ShmrcuError, ValueError):
    """A segment's header is wrong: bad magic, layout version, sizes or truncation."""

    errno = _errno.EINVAL


class NoFreeSlot(ShmrcuError, RuntimeError):
    """Every worker slot of the runtime is taken."""

    errno = _errno.ENOSPC


class ReaderClosed(ShmrcuError, RuntimeError):
    """The reader (or its runtime) was closed."""

    errno = _errno.EBADF


@dataclass(frozen=True)
class StalledSlot:
    """One reader that held a grace period up."""

    slot: int
    pid: int
    epoch: int
    epoch_lag: int
    seconds: float

    def __str__(self) -> str:
        return (f"slot {self.slot} (pid {self.pid}) at epoch {self.epoch}, "
                f"{self.epoch_lag} behind, not advanced for {self.seconds:.3f}s")


class GracePeriodTimeout(ShmrcuError, TimeoutError):
    """A grace period did not elapse in time; ``.stalled`` names the readers that held it up."""

    errno = _errno.ETIMEDOUT

    def __init__(self, message: str, stalled: list[StalledSlot] | tuple = (), *, errno: int | None = None):
        self.stalled = list(stalled)
        if self.stalled:
            message += ": " + "; ".join(str(s) for s in self.stalled)
        super().__init__(message, errno=errno)
