# Cython view of _ledger.h (the pool's per-worker ledger; see the header).
from libc.stdint cimport uint64_t

cdef extern from "_ledger.h" nogil:
    ctypedef struct pool_ledger:
        uint64_t applied
        uint64_t batches
        uint64_t dropped
        uint64_t hits
        uint64_t misses
        uint64_t j_seq
        uint64_t j_map
        uint64_t j_offset
        uint64_t j_packets
        uint64_t j_bytes
        uint64_t uncertain
        uint64_t incarnation
        uint64_t pid
        uint64_t slot
    const char* SHMRCU_LEDGER_FORMAT

cdef class Ledger:
    cdef pool_ledger* p
    cdef readonly object map          # the ledger map handle (keeps the mapping alive)
    cdef readonly int index
    cdef int alive(self) except -1
