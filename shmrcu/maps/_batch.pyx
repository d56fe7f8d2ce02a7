# cython: language_level=3
"""Batch kernels: nogil loops over a buffer of packed keys (and values) for one map.

``MapCore.lookup_batch`` / ``update_batch`` / ``delete_batch`` run these without the GIL; each
stops at the first error and reports how many keys it finished.  Lookups in a one-copy hash are
software-pipelined (keys hashed and home slots prefetched PREFETCH_AHEAD lookups ahead).  A module
of its own: the specialisations of the pipelined loop (constant key and value sizes) are only
inlined and folded when the translation unit around them is small.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memcpy

from shmrcu.core._layout cimport shm_load_relaxed
from shmrcu.maps._kernels cimport (map_view, PREFETCH_AHEAD, hash_bytes, home_of, slot_at, value_at,
                                   hash_find_n, mv_find, mv_read, mv_update, mv_delete)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil,
                       void* arg)
    int pthread_join(pthread_t thread, void** retval)

cdef extern from *:
    """
    #define SHMRCU_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    """
    void SHMRCU_PREFETCH(const void* p) nogil


cdef inline Py_ssize_t hash_lookup_pipelined(map_view* m, const char* keys, Py_ssize_t n, char* out,
                                              int* rc, uint32_t ks, uint32_t vs) noexcept nogil:
    """Batch lookups in a one-copy hash; ``ks``/``vs`` are constants where specialised.

    A software pipeline: keys are hashed and their home slots prefetched
    PREFETCH_AHEAD lookups ahead, so the cache misses of many lookups overlap.
    The map's geometry is copied to a local first: stores to ``out`` cannot
    alias it, so the compiler keeps it in registers."""
    cdef map_view v = m[0]
    cdef Py_ssize_t i
    cdef int64_t e
    cdef uint64_t hashes[PREFETCH_AHEAD]
    cdef uint64_t h
    cdef const char* k
    for i in range(min(n, <Py_ssize_t>PREFETCH_AHEAD)):
        h = hash_bytes(keys + i * ks, ks)
        hashes[i] = h
        SHMRCU_PREFETCH(slot_at(&v, home_of(&v, h)))
    for i in range(n):
        k = keys + i * ks
        h = hashes[i & (PREFETCH_AHEAD - 1)]
        if i + PREFETCH_AHEAD < n:
            hashes[i & (PREFETCH_AHEAD - 1)] = hash_bytes(k + PREFETCH_AHEAD * ks, ks)
            SHMRCU_PREFETCH(slot_at(&v, home_of(&v, hashes[i & (PREFETCH_AHEAD - 1)])))
        e = hash_find_n(&v, k, h, NULL, ks)
        if e < 0:
            rc[0] = <int>e
            return i
        if vs == 8:
            # relaxed: one word, see write_value
            (<uint64_t*>(out + i * 8))[0] = shm_load_relaxed(<uint64_t*>value_at(&v, <uint64_t>e, 0))
        else:
            read_out(m, <uint64_t>e, out + i * vs)   # m, not &v: v must not escape
    return n

cdef void read_out(map_view* m, uint64_t e, char* dst) noexcept nogil:
    """mv_read out of line: keeps the copy loop out of the pipelined lookup's body."""
    mv_read(m, e, 0, dst)

cdef Py_ssize_t batch_lookup(map_view* m, const char* keys, Py_ssize_t n, char* out,
                             int* rc) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t e
    cdef uint32_t ks = m.key_size
    cdef uint32_t vs = m.value_size
    cdef uint32_t c
    cdef uint64_t sum
    rc[0] = 0
    if m.is_hash and m.n_copies == 1:
        if ks == 8 and vs == 8:
            return hash_lookup_pipelined(m, keys, n, out, rc, 8, 8)
        if ks == 4 and vs == 8:
            return hash_lookup_pipelined(m, keys, n, out, rc, 4, 8)
        if ks == 4 and vs == 4:
            return hash_lookup_pipelined(m, keys, n, out, rc, 4, 4)
        return hash_lookup_pipelined(m, keys, n, out, rc, ks, vs)
    for i in range(n):
        e = mv_find(m, keys + i * ks)
        if e < 0:
            rc[0] = <int>e
            return i
        if m.n_copies == 1:
            mv_read(m, <uint64_t>e, 0, out + i * vs)
        else:
            sum = 0
            for c in range(m.n_copies):
                # relaxed: each copy's owner stores whole words
                sum += shm_load_relaxed(<uint64_t*>value_at(m, <uint64_t>e, c))
            (<uint64_t*>(out + i * 8))[0] = sum
    return n

cdef struct lookup_job:
    map_view* m
    const char* keys
    char* out
    Py_ssize_t n
    Py_ssize_t done
    int rc

cdef void* lookup_job_run(void* arg) noexcept nogil:
    cdef lookup_job* j = <lookup_job*>arg
    j.done = batch_lookup(j.m, j.keys, j.n, j.out, &j.rc)
    return NULL

cdef Py_ssize_t batch_lookup_threads(map_view* m, const char* keys, Py_ssize_t n, char* out,
                                     int threads, int* rc) noexcept nogil:
    """batch_lookup split into ``threads`` contiguous parts run in parallel (at most 16).
    The result is as if sequential: the count stops at the first failing key."""
    cdef lookup_job jobs[16]
    cdef pthread_t tids[16]
    cdef bint started[16]
    cdef int t
    cdef Py_ssize_t part, start = 0
    if threads > 16:
        threads = 16
    part = (n + threads - 1) // threads
    for t in range(threads):
        jobs[t].m = m
        jobs[t].keys = keys + start * m.key_size
        jobs[t].out = out + start * (8 if m.n_copies > 1 else m.value_size)
        jobs[t].n = min(part, n - start)
        jobs[t].done = 0
        jobs[t].rc = 0
        start += jobs[t].n
        started[t] = t > 0 and pthread_create(&tids[t], NULL, lookup_job_run, &jobs[t]) == 0
    lookup_job_run(&jobs[0])
    for t in range(1, threads):
        if started[t]:
            pthread_join(tids[t], NULL)
        else:
            lookup_job_run(&jobs[t])          # no thread to be had: do it here
    start = 0
    for t in range(threads):
        if jobs[t].rc < 0:
            rc[0] = jobs[t].rc
            return start + jobs[t].done
        start += jobs[t].n
    rc[0] = 0
    return n

cdef Py_ssize_t batch_update(map_view* m, const char* keys, const char* values, Py_ssize_t n,
                             uint64_t flags, uint32_t copy, int* rc) noexcept nogil:
    cdef Py_ssize_t i
    cdef int r
    rc[0] = 0
    for i in range(n):
        r = mv_update(m, keys + i * m.key_size, values + i * m.value_size, flags, copy)
        if r < 0:
            rc[0] = r
            return i
    return n

cdef Py_ssize_t batch_delete(map_view* m, const char* keys, Py_ssize_t n, int* rc) noexcept nogil:
    cdef Py_ssize_t i
    cdef int r
    rc[0] = 0
    for i in range(n):
        r = mv_delete(m, keys + i * m.key_size)
        if r < 0:
            rc[0] = r
            return i
    return n
