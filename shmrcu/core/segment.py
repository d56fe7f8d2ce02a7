"""POSIX shared-memory segments: naming, creation, opening, unlinking.

Every segment of runtime ``net`` is ``/shmrcu.net.<part>`` (``ctl`` for the
control segment, ``map.<id>`` for maps), so a runtime's segments can always be
found -- and removed -- by listing ``/dev/shm``.

fork
----
Everything a process owns here -- OFD locks (reader slots, the controller
lease, the map directory), mappings and the objects built on them -- belongs to
the pid that made it.  A ``fork()`` child inherits the descriptors (and with
them the *same* open file descriptions, hence the same OFD locks) and would,
by unlocking or by merely outliving its parent, act on the parent's slots and
lease.  So in the child, before any user code runs (``os.register_at_fork``):

* every mapping is already absent (MADV_DONTFORK) and its Python object is
  forgotten: closed, never unmapped (see ``_segment.pyx``);
* every inherited descriptor is closed -- never unlocked: closing one of two
  descriptors of a description keeps its locks, which stay the parent's and
  die with the parent;
* each layer's hook disowns its objects (readers, runtimes, map handles), so
  they raise or re-attach instead of touching what the parent owns.

``fork_generation()`` counts the forks this process descends from, so an
object can tell in one comparison whether it was made in this process.
"""
from __future__ import annotations

import os
import re
import weakref
from typing import Callable

import posix_ipc

from ._segment import Mapping, forget_all

SHM_DIR = "/dev/shm"
PREFIX = "shmrcu."
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "1-64 characters of [A-Za-z0-9_.-]"


def validate_name(name: object, what: str = "runtime name") -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid {what} {name!r}: must be {NAME_RULE}")
    return name


def shm_name(runtime: str, part: str) -> str:
    """The POSIX name (with leading slash) of one segment of ``runtime``."""
    return f"/{PREFIX}{runtime}.{part}"


def runtime_segments(runtime: str) -> list[str]:
    """POSIX names of every segment that belongs to ``runtime`` (control last)."""
    prefix = f"{PREFIX}{runtime}."
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    except FileNotFoundError:
        return []
    # A runtime called "a" must not claim "a.b"'s segments: the part after the
    # prefix is "ctl" or "map.<digits>" (or other parts named by later layers
    # that never contain another runtime's ".ctl").
    own = [n for n in names if _belongs(n[len(prefix):])]
    own.sort(key=lambda n: n.endswith(".ctl"))
    return ["/" + n for n in own]


def _belongs(part: str) -> bool:
    head = part.split(".", 1)[0]
    return head in ("ctl", "map", "dir", "torture") and (head != "map" or part[4:].isdigit())


def unlink(name: str) -> bool:
    """Unlink a segment; False when it was already gone."""
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


# ---------------------------------------------------------------------------
# fork: the child disowns what it inherited

_fork_generation = 0
_child_hooks: list[Callable[[], None]] = []
_open_segments: "weakref.WeakSet[Segment]" = weakref.WeakSet()
_owned_fds: set[int] = set()


def fork_generation() -> int:
    """How many forks separate this process from the one that imported shmrcu."""
    return _fork_generation


def at_fork_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child, after the descriptors and mappings are dropped."""
    _child_hooks.append(hook)


def own_fd(fd: int) -> int:
    """Register a descriptor that holds OFD locks: a forked child closes it (never unlocks)."""
    _owned_fds.add(fd)
    return fd


def close_owned_fd(fd: int) -> None:
    """Close a descriptor registered with ``own_fd`` (its locks go with it)."""
    _owned_fds.discard(fd)
    os.close(fd)


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    forget_all()
    for s in list(_open_segments):
        s._disown()
    for fd in list(_owned_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _owned_fds.clear()
    _close_stray_fds()
    for hook in _child_hooks:
        hook()


def _close_stray_fds() -> None:
    """Close every inherited descriptor of a shmrcu segment the registries missed: one
    another thread had opened but not yet registered (or unregistered but not yet
    closed) when fork() struck, or a reclaimer's short-lived one.  All are the parent's."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in fds:
        try:
            fd = int(name)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except (ValueError, OSError):
            continue
        if target.startswith(SHM_DIR + "/" + PREFIX):
            try:
                os.close(fd)
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)


class Segment:
    """An open POSIX shared-memory segment and its mapping.

    ``fd`` stays open for the segment's life: the runtime's OFD locks live on
    it, and ``fstat`` tells the real size when validating a header."""

    def __init__(self, shm: posix_ipc.SharedMemory, name: str, writable: bool):
        self._shm = shm
        self.name = name
        self.size = os.fstat(shm.fd).st_size
        self.writable = writable
        self.mapping: Mapping | None = Mapping(shm.fd, self.size, writable) if self.size else None
        _open_segments.add(self)

    @classmethod
    def create(cls, name: str, size: int, mode: int = 0o600) -> "Segment":
        """Create exclusively (FileExistsError if present) and size it."""
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=size)
        except posix_ipc.ExistentialError as e:
            raise FileExistsError(f"shared-memory segment {name} already exists") from e
        except OSError:
            # ftruncate can fail for lack of /dev/shm space: do not leave the name behind
            unlink(name)
            raise
        try:
            os.fchmod(shm.fd, mode)  # shm_open applies the umask; the runtime's mode is exact
            # Reserve the pages now: on tmpfs a short /dev/shm fails here with ENOSPC
            # instead of a SIGBUS at the first touch of a page that has no memory.
            os.posix_fallocate(shm.fd, 0, size)
            return cls(shm, name, True)
        except BaseException:
            shm.close_fd()
            unlink(name)
            raise

    @classmethod
    def open(cls, name: str, writable: bool = True) -> "Segment":
        flags = 0
        try:
            shm = posix_ipc.SharedMemory(name, flags, read_only=not writable)
        except posix_ipc.ExistentialError as e:
            raise FileNotFoundError(f"shared-memory segment {name} does not exist") from e
        except posix_ipc.PermissionsError as e:
            raise PermissionError(f"no permission to open shared-memory segment {name}") from e
        try:
            return cls(shm, name, writable)
        except BaseException:
            shm.close_fd()
            raise

    @property
    def fd(self) -> int:
        return self._shm.fd

    @property
    def path(self) -> str:
        return os.path.join(SHM_DIR, self.name.lstrip("/"))

    def reopen_fd(self) -> int:
        """A new descriptor (a new open file description) of the same segment.

        OFD locks taken through it belong to it alone; close it with
        ``close_owned_fd`` (a forked child closes it by itself)."""
        return own_fd(os.open(self.path, os.O_RDWR | os.O_CLOEXEC))

    def close(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None
        if self._shm is not None and self._shm.fd >= 0:
            self._shm.close_fd()
        _open_segments.discard(self)

    def _disown(self) -> None:
        """Forked child: drop the inherited descriptor without touching its locks."""
        self.mapping = None                # already forgotten (MADV_DONTFORK)
        if self._shm is not None and self._shm.fd >= 0:
            self._shm.close_fd()           # close(), not unlock: the parent keeps its locks

    def unlink(self) -> bool:
        return unlink(self.name)
