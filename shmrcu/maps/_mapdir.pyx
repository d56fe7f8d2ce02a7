# cython: language_level=3
"""The map directory of a runtime, /shmrcu.<runtime>.dir: names and specs of its maps.

A fixed array of ``dir_entry`` records (layout in _maplayout.h).  Creating,
naming and removing maps are rare, so every access holds an OFD write lock on
the directory's file: the kernel drops it if its holder dies, so a crashed
creator cannot wedge the directory.  The lock is per open file description,
hence per process here; ``shmrcu.maps`` adds a thread lock on top.
"""
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EINTR

from shmrcu.core._layout cimport shm_load_acquire, shm_store_release, shm_load_relaxed
from shmrcu.maps._maplayout cimport *
from shmrcu.core._segment cimport Mapping

import os
import time

from ..errors import CorruptSegment, MapExists, MapNotFound, ShmrcuError

cdef extern from *:
    """
    #include <fcntl.h>
    #include <string.h>
    #include <errno.h>
    #ifndef F_OFD_SETLKW
    #define F_OFD_SETLK 37
    #define F_OFD_SETLKW 38
    #endif
    /* Blocking OFD write lock (lock=1) or unlock (lock=0) of byte 0 of fd. */
    static int shmrcu_dir_lock(int fd, int lock) {
        struct flock fl;
        int r;
        memset(&fl, 0, sizeof fl);
        fl.l_type = lock ? F_WRLCK : F_UNLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = 0;
        fl.l_len = 1;
        do { r = fcntl(fd, lock ? F_OFD_SETLKW : F_OFD_SETLK, &fl); } while (r != 0 && errno == EINTR);
        return r == 0 ? 0 : -errno;
    }
    """
    int shmrcu_dir_lock(int fd, int lock) nogil

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char* s, size_t maxlen)

CAPACITY = SHMRCU_DIR_CAPACITY


def segment_size():
    return sizeof(dir_header) + <size_t>SHMRCU_DIR_CAPACITY * sizeof(dir_entry)


cdef void set_text(char* dst, str text, size_t cap):
    cdef bytes b = text.encode()
    memset(dst, 0, cap)
    memcpy(dst, <const char*>b, min(<size_t>len(b), cap - 1))


cdef str get_text(const char* src, size_t cap):
    return src[:strnlen(src, cap)].decode("utf-8", "replace")


cdef class Directory:
    """A mapped directory segment.  ``with d.locked(): ...`` around every use."""
    cdef dir_header* hdr
    cdef dir_entry* entries
    cdef readonly object mapping
    cdef int fd

    def __cinit__(self, Mapping mapping, int fd):
        self.mapping = mapping
        self.fd = fd
        self.hdr = <dir_header*>mapping.addr
        self.entries = <dir_entry*>(mapping.addr + sizeof(dir_header))

    def initialize(self):
        """Fill a fresh (zeroed) segment's header; magic last."""
        self.hdr.layout_version = SHMRCU_DIR_LAYOUT_VERSION
        self.hdr.header_size = sizeof(dir_header)
        self.hdr.total_size = self.mapping.size
        self.hdr.capacity = SHMRCU_DIR_CAPACITY
        # release: the header is complete before an opener can see the magic
        shm_store_release(&self.hdr.magic, SHMRCU_DIR_MAGIC)

    def validate(self, str where, double wait_s=1.0):
        cdef double deadline = time.monotonic() + wait_s
        if self.mapping.size < segment_size():
            raise CorruptSegment(f"{where} is truncated: {self.mapping.size} of {segment_size()} bytes")
        # acquire: pairs with initialize's release store of the magic
        while shm_load_acquire(&self.hdr.magic) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)         # its creator is still filling it in
        if shm_load_acquire(&self.hdr.magic) != SHMRCU_DIR_MAGIC:
            raise CorruptSegment(f"{where} has bad magic {self.hdr.magic:#x}")
        if (self.hdr.layout_version != SHMRCU_DIR_LAYOUT_VERSION or self.hdr.header_size != sizeof(dir_header)
                or self.hdr.capacity != SHMRCU_DIR_CAPACITY or self.hdr.total_size != self.mapping.size
                or self.hdr.high_water > self.hdr.capacity):
            raise CorruptSegment(f"{where} has an inconsistent header (version {self.hdr.layout_version}, "
                                 f"capacity {self.hdr.capacity}, size {self.hdr.total_size})")

    def lock(self):
        cdef int r
        with nogil:
            r = shmrcu_dir_lock(self.fd, 1)
        if r < 0:
            raise OSError(-r, f"cannot lock the map directory: {os.strerror(-r)}")

    def unlock(self):
        shmrcu_dir_lock(self.fd, 0)

    cdef dict entry_dict(self, dir_entry* e):
        return {"id": e.id, "name": get_text(e.name, sizeof(e.name)) or None, "kind": e.kind,
                "flags": e.flags, "max_entries": e.max_entries, "state": e.state,
                "key_format": get_text(e.key_format, sizeof(e.key_format)),
                "value_format": get_text(e.value_format, sizeof(e.value_format))}

    cdef dir_entry* find(self, uint64_t map_id, str name):
        cdef uint64_t i
        cdef dir_entry* e
        cdef bytes bname = name.encode() if name is not None else None
        for i in range(self.hdr.high_water):
            e = &self.entries[i]
            # relaxed: every access holds the directory lock
            if shm_load_relaxed(&e.used) != SHMRCU_DIR_USED:
                continue
            if name is not None:
                if e.name[:strnlen(e.name, sizeof(e.name))] == bname:
                    return e
            elif e.id == map_id:
                return e
        return NULL

    def add(self, uint64_t map_id, name, uint32_t kind, uint32_t flags, uint32_t max_entries,
            str key_format, str value_format, uint32_t state):
        """Record a map (lock held).  MapExists if ``name`` is taken."""
        cdef uint64_t i
        cdef dir_entry* e = NULL
        if name is not None and self.find(0, name) != NULL:
            raise MapExists(f"a map named {name!r} already exists")
        for i in range(self.hdr.high_water):
            if self.entries[i].used == SHMRCU_DIR_EMPTY:
                e = &self.entries[i]
                break
        if e == NULL:
            if self.hdr.high_water >= self.hdr.capacity:
                raise ShmrcuError(f"the map directory is full ({self.hdr.capacity} maps)")
            e = &self.entries[self.hdr.high_water]
            self.hdr.high_water += 1
        memset(e, 0, sizeof(dir_entry))
        e.id = map_id
        e.kind = kind
        e.flags = flags
        e.max_entries = max_entries
        e.state = state
        set_text(e.name, name or "", sizeof(e.name))
        set_text(e.key_format, key_format, sizeof(e.key_format))
        set_text(e.value_format, value_format, sizeof(e.value_format))
        # release: the entry is complete before it reads as used
        shm_store_release(&e.used, SHMRCU_DIR_USED)

    def lookup_name(self, str name):
        """The entry of the map called ``name`` (lock held); MapNotFound if none."""
        cdef dir_entry* e = self.find(0, name)
        if e == NULL:
            raise MapNotFound(f"no map named {name!r}")
        return self.entry_dict(e)

    def lookup_id(self, uint64_t map_id):
        """The entry of map ``map_id`` (lock held), or None."""
        cdef dir_entry* e = self.find(map_id, None)
        return None if e == NULL else self.entry_dict(e)

    def set_state(self, uint64_t map_id, uint32_t state):
        cdef dir_entry* e = self.find(map_id, None)
        if e != NULL:
            e.state = state

    def remove(self, uint64_t map_id):
        """Forget map ``map_id`` (lock held); False if it was not listed."""
        cdef dir_entry* e = self.find(map_id, None)
        if e == NULL:
            return False
        # release: the lock already orders it; release keeps add's publish pattern
        shm_store_release(&e.used, SHMRCU_DIR_EMPTY)
        return True

    def entries_list(self):
        """Every used entry, in directory order (lock held)."""
        cdef uint64_t i
        out = []
        for i in range(self.hdr.high_water):
            # relaxed: the lock is held
            if shm_load_relaxed(&self.entries[i].used) == SHMRCU_DIR_USED:
                out.append(self.entry_dict(&self.entries[i]))
        return out
