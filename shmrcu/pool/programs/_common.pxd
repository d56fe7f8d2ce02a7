# Helpers shared by the built-in kernels (inline: no module of their own).
from libc.stdint cimport uint32_t, uint64_t, int64_t
from shmrcu.core._layout cimport shm_load_acquire
from shmrcu.maps._maps cimport MapCore
from shmrcu.maps._kernels cimport map_view, mv_find, mv_value

# The inner map id stored at ``key`` of an outer map, 0 when the slot is empty.
cdef inline uint64_t inner_id(map_view* outer, uint32_t key) noexcept nogil:
    cdef int64_t e = mv_find(outer, &key)
    if e < 0:
        return 0
    # acquire: pairs with the controller's seq_cst exchange of the id, so the
    # inner map it names is completely built before we read it
    return shm_load_acquire(<uint64_t*>mv_value(outer, <uint64_t>e, 0))
