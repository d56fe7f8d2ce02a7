# cython: language_level=3
"""Test support for whole values (tests/maps/test_whole_values.py): a nogil writer that
rewrites values whose 8-byte words are all equal, as fast as it can, and a nogil reader
that copies values out through the C API (mv_find + mv_read) and counts the torn ones.

A value is whole when every 8-byte word of it is equal: the writer's values are
``(i, i, i, i)`` for a ``"QQQQ"`` map and one repeated byte for a ``"32s"`` map.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from shmrcu.core._layout cimport shm_monotonic_ns
from shmrcu.maps._maps cimport MapCore
from shmrcu.maps._kernels cimport map_view, mv_find, mv_read, mv_update

DEF MAX_VALUE = 256


cdef inline bint value_whole(const uint8_t* v, uint32_t n) noexcept nogil:
    cdef uint64_t a, b
    cdef uint32_t j
    memcpy(&a, v, 8)
    j = 8
    while j + 8 <= n:
        memcpy(&b, v + j, 8)
        if b != a:
            return False
        j += 8
    return True


def value_is_whole(bytes packed):
    """The same check, for values read from Python."""
    if len(packed) < 8:
        return True
    return value_whole(<const uint8_t*>(<const char*>packed), <uint32_t>len(packed))


def write_loop(MapCore m, uint32_t n_keys, double seconds, uint32_t copy=0, bint repeat_byte=False):
    """Rewrite keys 0..n_keys-1 round-robin with whole values (stamp = write count)
    for ``seconds``; returns the number of updates.  Errors raise."""
    cdef map_view* v = &m.view
    cdef uint8_t buf[MAX_VALUE]
    cdef uint64_t stamp = 1, w, deadline
    cdef uint32_t key, j
    cdef int rc = 0
    if v.value_size > MAX_VALUE or v.key_size != 4:
        raise ValueError("write_loop needs key 'I' and a value of at most 256 bytes")
    deadline = shm_monotonic_ns() + <uint64_t>(seconds * 1e9)
    with nogil:
        while True:
            key = <uint32_t>(stamp % n_keys)
            if repeat_byte:
                memset(buf, <int>(stamp & 0xff), v.value_size)
            else:
                w = stamp
                j = 0
                while j + 8 <= v.value_size:
                    memcpy(buf + j, &w, 8)
                    j += 8
            rc = mv_update(v, &key, buf, 0, copy)
            if rc < 0:
                break
            stamp += 1
            if (stamp & 1023) == 0 and shm_monotonic_ns() > deadline:
                break
    if rc < 0:
        raise OSError(-rc, f"mv_update failed after {stamp - 1} updates")
    return stamp - 1


def read_loop(MapCore m, uint32_t n_keys, uint64_t reads, uint32_t copy=0):
    """Copy values of keys 0..n_keys-1 out ``reads`` times (mv_find + mv_read, nogil);
    returns (whole, torn, missing)."""
    cdef map_view* v = &m.view
    cdef uint8_t buf[MAX_VALUE]
    cdef uint64_t r, whole = 0, torn = 0, missing = 0
    cdef uint32_t key
    cdef int64_t e
    if v.value_size > MAX_VALUE or v.key_size != 4:
        raise ValueError("read_loop needs key 'I' and a value of at most 256 bytes")
    with nogil:
        for r in range(reads):
            key = <uint32_t>(r % n_keys)
            e = mv_find(v, &key)
            if e < 0:
                missing += 1
                continue
            mv_read(v, <uint64_t>e, copy, buf)
            if value_whole(buf, v.value_size):
                whole += 1
            else:
                torn += 1
    return whole, torn, missing


def count_torn(buf, uint32_t value_size):
    """Torn values in a buffer of packed values (e.g. a lookup_batch result)."""
    cdef const uint8_t[::1] b = memoryview(buf).cast("B")
    cdef Py_ssize_t i, n = b.shape[0] // value_size
    cdef uint64_t torn = 0
    if n == 0:
        return 0
    with nogil:
        for i in range(n):
            if not value_whole(&b[i * value_size], value_size):
                torn += 1
    return torn
