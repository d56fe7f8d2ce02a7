# cython: language_level=3
"""Batch kernels: nogil loops over a buffer of packed keys (and values) for one map.

``MapCore.lookup_batch`` / ``update_batch`` / ``delete_batch`` run these without the GIL; each
stops at the first error and reports how many keys it finished.  Lookups in a one-copy hash are
software-pipelined (keys hashed and home slots prefetched PREFETCH_AHEAD lookups ahead).  A module
of its own: the specialisations of the pipelined loop (constant key and value sizes) are only
inlined and folded when the translation unit around them is small.

``MapBatch`` gives every map handle (it is the base class of ``shmrcu.maps.Map``) its
``lookup_batch`` / ``update_batch`` / ``delete_batch`` methods.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, ENOENT
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy

from shmrcu.core._layout cimport shm_load_relaxed
from shmrcu.maps._kernels cimport (map_view, PREFETCH_AHEAD, hash_bytes, home_of, slot_at, value_at,
                                   hash_find_n, mv_find, mv_read, mv_update, mv_delete, advance_epoch)
from shmrcu.maps._maplayout cimport SHMRCU_ANY, SHMRCU_MAP_ARRAY_OF_MAPS, SHMRCU_MAP_HASH_OF_MAPS
from shmrcu.maps._maps cimport MapCore, buf_ptr

from ..errors import ShmrcuError, UnsupportedOperation

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

cdef inline void read_entry(map_view* m, uint64_t e, char* dst) noexcept nogil:
    """Entry ``e``'s value into ``dst``: whole (mv_read), or the sum of the per-worker
    copies (one u64) -- the slow-path loops' read."""
    cdef uint32_t c
    cdef uint64_t sum = 0
    if m.n_copies == 1:
        mv_read(m, e, 0, dst)
        return
    for c in range(m.n_copies):
        # relaxed: each copy's owner stores whole words
        sum += shm_load_relaxed(<uint64_t*>value_at(m, e, c))
    (<uint64_t*>dst)[0] = sum

cdef Py_ssize_t batch_lookup(map_view* m, const char* keys, Py_ssize_t n, char* out,
                             int* rc) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t e
    cdef uint32_t ks = m.key_size
    cdef uint32_t vs = m.value_size
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
        read_entry(m, <uint64_t>e, out + i * vs)
    return n

cdef Py_ssize_t batch_lookup_default(map_view* m, const char* keys, Py_ssize_t n, char* out,
                                     const char* dflt, uint8_t* found, int* rc) noexcept nogil:
    """Like batch_lookup, but a missing key does not stop the batch: its value is
    ``dflt`` (NULL: left as it is) and ``found[i]`` (if not NULL) says which were there.
    Returns how many keys were found; another error (an array index out of range) stops
    it: rc[0] is set and the return value is that key's index."""
    cdef Py_ssize_t i, hits = 0
    cdef int64_t e
    cdef uint32_t ks = m.key_size
    cdef uint32_t vs = m.value_size if m.n_copies == 1 else 8
    rc[0] = 0
    for i in range(n):
        e = mv_find(m, keys + i * ks)
        if e < 0:
            if e != -ENOENT:
                rc[0] = <int>e
                return i              # where it stopped (batch_error names that key)
            record_miss(out, i, vs, dflt, found)
            continue
        hits += 1
        record_hit(i, found)
        read_entry(m, <uint64_t>e, out + i * vs)
    return hits

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


# ---------------------------------------------------------------------------
# the batch methods of every map handle

try:
    import numpy as _np
except ImportError:                # numpy is optional: batches then fill bytearrays
    _np = None



cdef inline object as_bytes_view(object buf, bint writable, str what):
    cdef object mv = memoryview(buf)
    if not mv.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous buffer")
    if writable and mv.readonly:
        raise ValueError(f"{what} must be a writable buffer")
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv



cdef class MapBatch(MapCore):
    """MapCore plus batches over buffers (the base of every ``shmrcu.maps`` handle).

    Each batch counts itself in ``busy`` *before* it checks the handle and until its
    GIL-free loop is over: ``close()`` and unmapping wait for it (a batch never runs on
    an unmapped view)."""

    def lookup_batch(self, keys, out=None, *, int threads=1, default=None, found=None):
        """Look up every key of the buffer ``keys`` (packed keys, e.g. a numpy array whose
        itemsize is the key size) without the GIL; values go to ``out`` (allocated when
        None: a numpy array for one-integer values if numpy is there, else a bytearray).
        Returns ``out``.  Stops at the first missing key: the error has ``.count``, the
        number of keys looked up before it.  ``threads > 1`` splits a large batch
        (>= 16384 keys per thread) over that many threads, all inside the caller's
        read-side section.

        Blocklist style: with ``default=`` (a value) and/or ``found=`` (a writable buffer
        of one byte per key, e.g. ``numpy.zeros(n, bool)``), a missing key does not stop
        the batch: its value is ``default`` (or left as it was in ``out``) and
        ``found[i]`` is 0 (1 for keys that are there)."""
        self.busy += 1
        try:
            return self._lookup_batch(keys, out, threads, default, found)
        finally:
            self.busy -= 1

    def update_batch(self, keys, values, uint64_t flags=SHMRCU_ANY):
        """Set every key of ``keys`` to the matching packed value of ``values`` (buffers),
        without the GIL.  Returns the count; stops at the first error (``.count``)."""
        self.busy += 1
        try:
            return self._update_batch(keys, values, flags)
        finally:
            self.busy -= 1

    def delete_batch(self, keys):
        """Delete every key of the buffer ``keys`` without the GIL.  Returns the count;
        stops at the first error (``.count``)."""
        self.busy += 1
        try:
            return self._delete_batch(keys)
        finally:
            self.busy -= 1

    def _lookup_batch(self, keys, out, int threads, default, found):
        """The body of lookup_batch (counted busy by it)."""
        cdef const uint8_t[::1] kv
        cdef uint8_t[::1] ov
        cdef uint8_t[::1] fv
        cdef Py_ssize_t n, done
        cdef int rc = 0
        cdef uint32_t osize
        cdef uint64_t dsmall
        cdef const char* dptr = NULL
        cdef uint8_t* fptr = NULL
        cdef object db = None
        self.check(False)
        kv = as_bytes_view(keys, False, "keys")
        if kv.shape[0] % self.view.key_size:
            raise ValueError(f"keys buffer of {kv.shape[0]} bytes is not a whole number of "
                             f"{self.view.key_size}-byte keys")
        n = kv.shape[0] // self.view.key_size
        osize = self.view.value_size
        if self.view.n_copies > 1:
            if not (self.value_int and self.view.value_size == 8):
                raise UnsupportedOperation("lookup_batch on a per-worker map needs a one-field u64 value")
        if out is None:
            if _np is not None and self.value_int:
                out = _np.empty(n, dtype=_np.dtype(self.value_struct.fields[0].code))
            else:
                out = bytearray(n * osize)
        ov = as_bytes_view(out, True, "out")
        if ov.shape[0] < n * osize:
            raise ValueError(f"out holds {ov.shape[0]} bytes, {n * osize} needed")
        if default is not None or found is not None:
            if self.view.kind == SHMRCU_MAP_ARRAY_OF_MAPS or self.view.kind == SHMRCU_MAP_HASH_OF_MAPS:
                raise UnsupportedOperation("outer maps: look inner ids up one key at a time")
            if default is not None:
                db = self.value_bytes(default, &dsmall)
                dptr = buf_ptr(db, &dsmall)
            if found is not None:
                fv = as_bytes_view(found, True, "found")
                if fv.shape[0] < n:
                    raise ValueError(f"found holds {fv.shape[0]} bytes, one per key ({n}) needed")
                if n:
                    fptr = &fv[0]
            if n == 0:
                return out
            with nogil:
                done = batch_lookup_default(&self.view, <const char*>&kv[0], n, <char*>&ov[0],
                                            dptr, fptr, &rc)
            if rc < 0:
                self.batch_error(rc, kv, done)
            return out
        if n == 0:
            return out
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        threads = min(threads, 16, max(1, n // 16384))
        with nogil:
            if threads > 1:
                done = batch_lookup_threads(&self.view, <const char*>&kv[0], n, <char*>&ov[0],
                                            threads, &rc)
            else:
                done = batch_lookup(&self.view, <const char*>&kv[0], n, <char*>&ov[0], &rc)
        if rc < 0:
            self.batch_error(rc, kv, done)
        return out

    def _update_batch(self, keys, values, uint64_t flags):
        """The body of update_batch (counted busy by it)."""
        cdef const uint8_t[::1] kv, vv
        cdef Py_ssize_t n, done
        cdef int rc = 0
        cdef int copy = 0
        self.check(True)
        if self.view.kind == SHMRCU_MAP_ARRAY_OF_MAPS or self.view.kind == SHMRCU_MAP_HASH_OF_MAPS:
            raise UnsupportedOperation("outer maps are updated one inner map at a time")
        if self.view.n_copies > 1:
            copy = self.copy_index()
            if copy < 0:
                raise ShmrcuError("per-worker update_batch needs a registered reader in this process")
        kv = as_bytes_view(keys, False, "keys")
        vv = as_bytes_view(values, False, "values")
        if kv.shape[0] % self.view.key_size:
            raise ValueError(f"keys buffer is not a whole number of {self.view.key_size}-byte keys")
        n = kv.shape[0] // self.view.key_size
        if vv.shape[0] != n * self.view.value_size:
            raise ValueError(f"values buffer holds {vv.shape[0]} bytes, {n} values of "
                             f"{self.view.value_size} bytes needed")
        if n == 0:
            return 0
        with nogil:
            done = batch_update(&self.view, <const char*>&kv[0], <const char*>&vv[0], n, flags,
                                <uint32_t>copy, &rc)
        if rc == -EAGAIN and self.may_synchronize():
            self.runtime.synchronize()
            with nogil:
                done += batch_update(&self.view, <const char*>&kv[done * self.view.key_size],
                                     <const char*>&vv[done * self.view.value_size], n - done,
                                     flags, <uint32_t>copy, &rc)
        if rc < 0:
            self.batch_error(rc, kv, done)
        return n

    def _delete_batch(self, keys):
        """The body of delete_batch (counted busy by it)."""
        cdef const uint8_t[::1] kv
        cdef Py_ssize_t n, done
        cdef int rc = 0
        self.check(True)
        kv = as_bytes_view(keys, False, "keys")
        if kv.shape[0] % self.view.key_size:
            raise ValueError(f"keys buffer is not a whole number of {self.view.key_size}-byte keys")
        n = kv.shape[0] // self.view.key_size
        if n == 0:
            return 0
        with nogil:
            done = batch_delete(&self.view, <const char*>&kv[0], n, &rc)
            if done and self.view.is_hash:
                advance_epoch(&self.view)
        if rc < 0:
            self.batch_error(rc, kv, done)
        return n

    cdef int batch_error(self, int rc, const unsigned char[::1] kv, Py_ssize_t done) except -1:
        cdef uint32_t ks = self.view.key_size
        raw = PyBytes_FromStringAndSize(<const char*>&kv[done * ks], ks)
        key = self.key_struct.unpack(raw)
        try:
            self.raise_rc(rc, key)
        except ShmrcuError as e:
            e.count = done
            raise
