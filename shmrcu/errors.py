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


class ControllerBusy(ShmrcuError, RuntimeError):
    """Another live process holds the runtime's controller lease."""

    errno = _errno.EBUSY

    def __init__(self, message: str, pid: int = 0):
        super().__init__(message)
        self.pid = pid


class NoFreeSlot(ShmrcuError, RuntimeError):
    """Every worker slot of the runtime is taken."""

    errno = _errno.ENOSPC


class ReaderClosed(ShmrcuError, RuntimeError):
    """The reader (or its runtime) was closed."""

    errno = _errno.EBADF


class RuntimeDestroyed(ReaderClosed):
    """The runtime was destroyed (or cleaned up) while this process was attached: its
    tables are gone, never served silently; attach again once it is re-created (ESTALE)."""

    errno = _errno.ESTALE


class InheritedAcrossFork(ReaderClosed):
    """A reader (or a section of one) was created in another process and inherited by
    ``fork()``: its slot belongs to the parent.  Make a reader in this process."""

    errno = _errno.EBADF


class NotController(ShmrcuError, RuntimeError):
    """A controller-only call from a process that does not hold the controller lease
    (a forked child of the controller never inherits it)."""

    errno = _errno.EPERM


class OutsideSection(ShmrcuError, RuntimeError):
    """An inner map reached through an outer map outside any read-side section of the
    calling thread (or, in debug mode, used after the section that produced it ended):
    nothing would keep it from being replaced and freed meanwhile."""

    errno = _errno.EPERM


class SelfDeadlock(ShmrcuError, RuntimeError):
    """A wait for a grace period from a thread inside its own read-side section:
    it would wait for itself (lockdep's rule for synchronize_rcu under rcu_read_lock)."""

    errno = _errno.EDEADLK


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


# --- maps ------------------------------------------------------------------
# Each carries the errno a bpf(2) map command would return for the same case.

class KeyNotFound(ShmrcuError, KeyError):
    """The key is not in the map (BPF: ENOENT).  ``str()`` is the key, as KeyError's."""

    errno = _errno.ENOENT


class KeyExists(ShmrcuError, ValueError):
    """``update(..., flags=NOEXIST)`` on a key that is present (BPF: EEXIST)."""

    errno = _errno.EEXIST


class MapFull(ShmrcuError, RuntimeError):
    """A hash map already holds ``max_entries`` keys (BPF: E2BIG)."""

    errno = _errno.E2BIG


class IndexOutOfRange(ShmrcuError, IndexError):
    """An array index is ``>= max_entries`` (BPF: E2BIG)."""

    errno = _errno.E2BIG


class ReadOnlyMap(ShmrcuError, PermissionError):
    """A write to a ``worker_readonly`` map from a process that is not the controller (EPERM)."""

    errno = _errno.EPERM


class MapClosed(ShmrcuError, RuntimeError):
    """The map handle is unusable: the map was freed, or this process unmapped it (EBADF)."""

    errno = _errno.EBADF


class MapNotFound(ShmrcuError, KeyError):
    """No map of that name or id in the runtime's directory (ENOENT)."""

    errno = _errno.ENOENT


class MapExists(ShmrcuError, FileExistsError):
    """A map of that name already exists in the runtime (EEXIST)."""

    errno = _errno.EEXIST


class InvalidMapSpec(ShmrcuError, ValueError):
    """``create_map`` arguments are wrong: kind, formats, sizes, nesting (EINVAL or E2BIG)."""

    errno = _errno.EINVAL


class TemplateMismatch(ShmrcuError, ValueError):
    """An inner map does not match its outer map's template (BPF: EINVAL)."""

    errno = _errno.EINVAL


class UnsupportedOperation(ShmrcuError, TypeError):
    """The operation does not exist for this kind of map, e.g. deleting from an array (EINVAL)."""

    errno = _errno.EINVAL


class MapInUse(ShmrcuError, RuntimeError):
    """The map is still referenced (by an outer slot) where that is not allowed."""

    errno = _errno.EBUSY


class OutOfSharedMemory(ShmrcuError, OSError):
    """/dev/shm has no room for a new segment."""

    errno = _errno.ENOSPC
