# Longest-prefix match (the lpm_trie kind, BPF_MAP_TYPE_LPM_TRIE); see _lpm.pyx.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from shmrcu.maps._kernels cimport map_view
from shmrcu.maps._batch cimport MapBatch

# Set prefix ``addr``/``plen`` (address bytes: key_size - 1 of them) to ``value``, BPF
# ``flags``.  0 or -errno (-EINVAL: plen longer than the address).
cdef int mv_lpm_update(map_view* m, const uint8_t* addr, uint32_t plen, const void* value,
                       uint64_t flags) noexcept nogil
# Remove prefix ``addr``/``plen``: 0 or -ENOENT.
cdef int mv_lpm_delete(map_view* m, const uint8_t* addr, uint32_t plen) noexcept nogil
# The entry of the longest prefix that matches the full address ``addr`` (its length to
# ``plen`` when not NULL), or -ENOENT.  Lock-free; inside a read-side section, as mv_find.
cdef int64_t mv_lpm_find(map_view* m, const uint8_t* addr, uint32_t* plen) noexcept nogil

cdef class LpmCore(MapBatch):
    cdef int _addr_check(self, bytes addr) except -1
