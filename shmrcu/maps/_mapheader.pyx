# cython: language_level=3
"""Map segment headers: sizing a new map, filling its header, validating one on open.

The geometry (offsets, strides, capacity) comes from ``shmrcu_map_geometry`` in
_maplayout.h, the one function used both to lay a map out and to check a
header against its real segment size.
"""
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.unistd cimport getpid

from shmrcu.core._layout cimport shm_load_acquire, shm_store_release
from shmrcu.maps._maplayout cimport *
from shmrcu.core._segment cimport Mapping

import time

from ..errors import CorruptSegment

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char* s, size_t maxlen)


def segment_size(int kind, uint32_t key_size, uint32_t value_size, uint32_t max_entries,
                 uint32_t n_copies, uint32_t flags=0):
    """Bytes of a map segment for this spec (0 if the spec is impossible)."""
    cdef map_header h
    memset(&h, 0, sizeof(h))
    h.kind = kind
    h.flags = flags
    h.key_size = key_size
    h.value_size = value_size
    h.max_entries = max_entries
    h.n_copies = n_copies
    return shmrcu_map_geometry(&h)

cdef void set_text(char* dst, str text, size_t cap):
    cdef bytes b = text.encode()
    memset(dst, 0, cap)
    memcpy(dst, <const char*>b, min(<size_t>len(b), cap - 1))

cdef str get_text(const char* src, size_t cap):
    return src[:strnlen(src, cap)].decode("utf-8", "replace")

def init_header(Mapping mapping, dict spec):
    """Fill a fresh (zeroed) map segment's header from ``spec``; magic goes last."""
    cdef map_header* h = <map_header*>mapping.addr
    cdef uint64_t total
    if mapping.size < sizeof(map_header):
        raise ValueError("segment smaller than a map header")
    h.layout_version = SHMRCU_MAP_LAYOUT_VERSION
    h.id = spec["id"]
    h.kind = spec["kind"]
    h.flags = spec["flags"]
    h.key_size = spec["key_size"]
    h.value_size = spec["value_size"]
    h.max_entries = spec["max_entries"]
    h.n_copies = spec["n_copies"]
    h.creator_pid = getpid()
    h.created_unix_ns = time.time_ns()
    set_text(h.name, spec.get("name") or "", sizeof(h.name))
    set_text(h.key_format, spec["key_format"], sizeof(h.key_format))
    set_text(h.value_format, spec["value_format"], sizeof(h.value_format))
    inner = spec.get("inner")
    if inner:
        h.inner_kind = inner["kind"]
        h.inner_flags = inner["flags"]
        h.inner_key_size = inner["key_size"]
        h.inner_value_size = inner["value_size"]
        h.inner_max_entries = inner["max_entries"]
        set_text(h.inner_key_format, inner["key_format"], sizeof(h.inner_key_format))
        set_text(h.inner_value_format, inner["value_format"], sizeof(h.inner_value_format))
    total = shmrcu_map_geometry(h)
    if total == 0 or total != mapping.size:
        raise ValueError(f"map geometry {total} does not match the segment size {mapping.size}")
    h.total_size = total
    h.state = SHMRCU_MAP_LIVE
    # release: every field above is visible before an opener can see the magic
    shm_store_release(&h.magic, SHMRCU_MAP_MAGIC)

def mark_freed(Mapping mapping):
    """The map's runtime is being destroyed: readers of the map raise from now on."""
    cdef map_header* h = <map_header*>mapping.addr
    if mapping.size >= sizeof(map_header):
        # release: as any state change the controller makes (handles load it relaxed)
        shm_store_release(&h.state, SHMRCU_MAP_FREED)

def read_header(Mapping mapping, uint64_t expected_id, str where, double wait_s=0.5):
    """Validate a mapped map header against its real size; return it as a dict.

    ``CorruptSegment`` on bad magic, version, sizes or geometry."""
    cdef map_header* h
    cdef map_header g
    cdef uint64_t total
    cdef double deadline
    if mapping.size < sizeof(map_header):
        raise CorruptSegment(f"{where} is truncated: {mapping.size} bytes, a map header needs "
                             f"{sizeof(map_header)}")
    h = <map_header*>mapping.addr
    deadline = time.monotonic() + wait_s
    # acquire: pairs with init_header's release store of the magic
    while shm_load_acquire(&h.magic) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)             # a creator may be filling it right now
    if shm_load_acquire(&h.magic) != SHMRCU_MAP_MAGIC:
        raise CorruptSegment(f"{where} has bad magic {h.magic:#x} (not a shmrcu map)")
    if h.layout_version != SHMRCU_MAP_LAYOUT_VERSION:
        raise CorruptSegment(f"{where} has layout version {h.layout_version}, "
                             f"this shmrcu reads {SHMRCU_MAP_LAYOUT_VERSION}")
    if h.header_size != sizeof(map_header):
        raise CorruptSegment(f"{where} has header size {h.header_size}, expected {sizeof(map_header)}")
    if h.total_size != mapping.size:
        raise CorruptSegment(f"{where} says it is {h.total_size} bytes but the segment is {mapping.size}")
    if h.id != expected_id:
        raise CorruptSegment(f"{where} holds map id {h.id}, expected {expected_id}")
    if h.state < <uint64_t>SHMRCU_MAP_LIVE or h.state > <uint64_t>SHMRCU_MAP_FREED:
        raise CorruptSegment(f"{where} has unknown state {h.state}")
    memcpy(&g, h, sizeof(map_header))
    total = shmrcu_map_geometry(&g)
    if (total != h.total_size or g.key_stride != h.key_stride or g.capacity != h.capacity
            or g.slot_size != h.slot_size or g.slots_offset != h.slots_offset
            or g.values_offset != h.values_offset or g.value_stride != h.value_stride
            or g.copy_stride != h.copy_stride):
        raise CorruptSegment(f"{where} has inconsistent geometry (kind {h.kind}, key {h.key_size} B, "
                             f"value {h.value_size} B, {h.max_entries} entries, {h.n_copies} copies)")
    if h.count > h.max_entries + 64:
        raise CorruptSegment(f"{where} claims {h.count} live keys of at most {h.max_entries}")
    return {
        "id": h.id, "kind": h.kind, "flags": h.flags, "key_size": h.key_size,
        "value_size": h.value_size, "max_entries": h.max_entries, "n_copies": h.n_copies,
        "capacity": h.capacity, "total_size": h.total_size, "state": h.state,
        "name": get_text(h.name, sizeof(h.name)) or None,
        "key_format": get_text(h.key_format, sizeof(h.key_format)),
        "value_format": get_text(h.value_format, sizeof(h.value_format)),
        "creator_pid": h.creator_pid, "created_unix_ns": h.created_unix_ns,
        "inner": None if h.inner_kind == 0 else {
            "kind": h.inner_kind, "flags": h.inner_flags, "key_size": h.inner_key_size,
            "value_size": h.inner_value_size, "max_entries": h.inner_max_entries,
            "key_format": get_text(h.inner_key_format, sizeof(h.inner_key_format)),
            "value_format": get_text(h.inner_value_format, sizeof(h.inner_value_format)),
        },
    }
