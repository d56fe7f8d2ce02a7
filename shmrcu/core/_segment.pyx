# cython: language_level=3
"""mmap/munmap of shared-memory segments, with the address visible to Cython.

Every mapping is made MADV_DONTFORK: a child of ``fork()`` does not inherit
it, so a forked child never pins a freed map's memory (the "memory actually
freed" barrier stays true) and never writes through its parent's view.  The
Python objects the child inherits are *forgotten* by ``forget_all`` (run by
the at-fork hook in shmrcu.segment): marked closed without munmap, since the
address range is not theirs in the child and may be reused by a new mapping.
"""
from posix.mman cimport mmap, munmap, madvise, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from libc.errno cimport errno
from libc.string cimport memcpy
import os
import weakref

cdef extern from "<sys/mman.h>" nogil:
    int MADV_DONTFORK

# Every open Mapping of this process (the at-fork hook forgets them in the child).
_live = weakref.WeakSet()


def forget_all():
    """In a forked child: every inherited Mapping becomes closed, without munmap."""
    cdef Mapping m
    for m in list(_live):
        m.addr = NULL
        m.closed = True
    _live.clear()


cdef class Mapping:
    """``Mapping(fd, size, writable)``: map ``size`` bytes of ``fd`` shared.

    A read-only mapping (``writable=False``) is PROT_READ: a stray write would
    fault, so the Python layer refuses writes before they reach memory."""

    def __cinit__(self, int fd, size_t size, bint writable=True):
        cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
        self.closed = True
        if size == 0:
            raise ValueError("cannot map an empty segment")
        cdef void* p = mmap(NULL, size, prot, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            e = errno
            raise OSError(e, f"mmap of {size} bytes failed: {os.strerror(e)}")
        if madvise(p, size, MADV_DONTFORK) != 0:
            e = errno
            munmap(p, size)
            raise OSError(e, f"madvise(MADV_DONTFORK) of a {size}-byte mapping failed: {os.strerror(e)}")
        self.addr = <char*>p
        self.size = size
        self.writable = writable
        self.closed = False
        _live.add(self)

    @property
    def address(self) -> int:
        return <size_t>self.addr

    def read(self, size_t offset, size_t length) -> bytes:
        """Copy bytes out (for headers and diagnostics, not for hot paths)."""
        if self.closed:
            raise ValueError("mapping is closed")
        if offset + length > self.size:
            raise ValueError(f"read of {length} bytes at {offset} past the end ({self.size})")
        return (self.addr + offset)[:length]

    def write(self, size_t offset, bytes data):
        if self.closed:
            raise ValueError("mapping is closed")
        if not self.writable:
            raise PermissionError("mapping is read-only")
        cdef size_t n = len(data)
        if offset + n > self.size:
            raise ValueError(f"write of {n} bytes at {offset} past the end ({self.size})")
        memcpy(self.addr + offset, <const char*>data, n)

    def close(self):
        """Unmap.  Idempotent; after it the memory may really be returned."""
        if not self.closed:
            munmap(self.addr, self.size)
            self.addr = NULL
            self.closed = True
            _live.discard(self)

    def __dealloc__(self):
        if not self.closed:
            munmap(self.addr, self.size)
