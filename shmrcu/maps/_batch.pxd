# Batch kernels for MapCore (nogil loops over buffers of packed keys/values); see _batch.pyx.
# Each returns how many keys it finished; rc[0] is 0, or the -errno that stopped it.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from shmrcu.maps._kernels cimport map_view

cdef Py_ssize_t batch_lookup(map_view* m, const char* keys, Py_ssize_t n, char* out,
                             int* rc) noexcept nogil
cdef Py_ssize_t batch_lookup_threads(map_view* m, const char* keys, Py_ssize_t n, char* out,
                                     int threads, int* rc) noexcept nogil
cdef Py_ssize_t batch_update(map_view* m, const char* keys, const char* values, Py_ssize_t n,
                             uint64_t flags, uint32_t copy, int* rc) noexcept nogil
cdef Py_ssize_t batch_delete(map_view* m, const char* keys, Py_ssize_t n, int* rc) noexcept nogil


from shmrcu.maps._maps cimport MapCore

cdef class MapBatch(MapCore):
    cdef int batch_error(self, int rc, const unsigned char[::1] kv, Py_ssize_t done) except -1


# The non-stopping lookups' bookkeeping (batch_lookup_default, the lpm_trie batch): a
# miss takes ``dflt`` (NULL: out left as is) and found[i] = 0; a hit sets found[i] = 1.
cdef inline void record_miss(char* out, Py_ssize_t i, uint32_t vs, const char* dflt,
                             uint8_t* found) noexcept nogil:
    if found != NULL:
        found[i] = 0
    if dflt != NULL:
        memcpy(out + i * vs, dflt, vs)

cdef inline void record_hit(Py_ssize_t i, uint8_t* found) noexcept nogil:
    if found != NULL:
        found[i] = 1
