# cython: language_level=3
"""Built-in program ``traffic_accounting``: per-uid (packets, bytes) counters.

Per event (uid u32, bytes u32): ``cfg[0]`` names the live stats map (a hash
or per_worker_hash keyed by uid, values starting with packets u64, bytes u64);
the event adds (1, bytes) to its uid's entry, inserting the uid if needed.
This is Android netd's pattern: the controller swaps ``cfg[0]`` between two
stats maps and reads the retired one after a grace period.

The outer -> inner lookup happens once per batch: under QSBR the inner map
stays valid until this worker's next quiescent state, which the worker loop
reports only after the batch.  The whole batch runs without the GIL.

Counting applied events: every event is committed in the pool's ledger right
after it reaches the map (protocol in _ledger.h).  On a per-worker map the
journal makes the count exact even when the worker is SIGKILLed mid-event;
on a shared map (atomic adds) at most the one event in flight at a SIGKILL is
uncertain, and the ledger says so.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from shmrcu.core._layout cimport (shm_load_relaxed, shm_store_relaxed, shm_fetch_add_relaxed,
                             shm_compiler_barrier)
from shmrcu.maps._maps cimport MapCore
from shmrcu.maps._kernels cimport map_view, mv_upsert, mv_value
from shmrcu.pool.programs._ledger cimport Ledger, pool_ledger
from shmrcu.pool.programs._common cimport inner_id

from shmrcu.pool.programs._resolve import check_inner, outer_map


cdef void apply_per_worker(map_view* m, const uint32_t* rec, Py_ssize_t n, uint32_t copy,
                           pool_ledger* L) noexcept nogil:
    """Per-worker copy: plain owner-only writes, journaled event by event."""
    cdef Py_ssize_t i
    cdef uint32_t uid, nb
    cdef int64_t e
    cdef bint created
    cdef uint64_t* p
    cdef uint64_t pk, by
    # relaxed (all ledger and copy accesses below): this worker is the only
    # writer of its ledger entry and of its copy; other processes read them only
    # for statistics or after our death, when waitpid() has ordered everything.
    # What matters is the *program order* of the stores -- a process killed at
    # any instruction leaves a prefix of them -- hence the compiler barriers.
    cdef uint64_t applied = shm_load_relaxed(&L.applied)
    cdef uint64_t dropped = 0
    for i in range(n):
        uid = rec[2 * i]
        nb = rec[2 * i + 1]
        e = mv_upsert(m, &uid, NULL, copy, &created)
        if e < 0:                     # full, or only tombstones still in their grace period
            dropped += 1
            continue
        p = <uint64_t*>mv_value(m, <uint64_t>e, copy)
        pk = shm_load_relaxed(&p[0])
        by = shm_load_relaxed(&p[1])
        shm_store_relaxed(&L.j_offset, <uint64_t>(<char*>p - m.base))
        shm_store_relaxed(&L.j_packets, pk)
        shm_store_relaxed(&L.j_bytes, by)
        shm_compiler_barrier()
        shm_store_relaxed(&L.j_seq, applied + 1)       # journal open: event in flight
        shm_compiler_barrier()
        shm_store_relaxed(&p[1], by + nb)
        shm_compiler_barrier()
        shm_store_relaxed(&p[0], pk + 1)               # the event is in the map
        shm_compiler_barrier()
        applied += 1
        shm_store_relaxed(&L.applied, applied)          # committed (journal closed)
    if dropped:
        shm_store_relaxed(&L.dropped, shm_load_relaxed(&L.dropped) + dropped)


cdef void apply_shared(map_view* m, const uint32_t* rec, Py_ssize_t n, pool_ledger* L) noexcept nogil:
    """Shared copy: atomic adds (workers add to the same uid concurrently)."""
    cdef Py_ssize_t i
    cdef uint32_t uid, nb
    cdef int64_t e
    cdef bint created
    cdef uint64_t* p
    # relaxed (ledger): owner-only words, see apply_per_worker
    cdef uint64_t applied = shm_load_relaxed(&L.applied)
    cdef uint64_t dropped = 0
    for i in range(n):
        uid = rec[2 * i]
        nb = rec[2 * i + 1]
        e = mv_upsert(m, &uid, NULL, 0, &created)
        if e < 0:
            dropped += 1
            continue
        p = <uint64_t*>mv_value(m, <uint64_t>e, 0)
        shm_store_relaxed(&L.j_seq, applied + 1)       # in flight: uncertain if we die now
        shm_compiler_barrier()
        # relaxed fetch_add: counters need atomicity only; the grace period
        # (acquire/release in _epoch) orders them before the controller's read
        shm_fetch_add_relaxed(&p[1], nb)
        shm_fetch_add_relaxed(&p[0], 1)
        shm_compiler_barrier()
        applied += 1
        shm_store_relaxed(&L.applied, applied)
    if dropped:
        shm_store_relaxed(&L.dropped, shm_load_relaxed(&L.dropped) + dropped)


cdef class TrafficAccounting:
    """The bound program of one worker (``program.bind(ctx)``)."""
    counts_applied = True
    cdef MapCore cfg
    cdef Ledger ledger
    cdef uint32_t copy, key
    cdef uint64_t checked_id
    cdef object ctx

    def __init__(self, ctx):
        self.ctx = ctx
        self.cfg = outer_map(ctx, "cfg", "cfg", "traffic_accounting")
        self.key = ctx.args.get("cfg_key", 0)
        self.ledger = ctx.ledger
        self.copy = ctx.slot
        self.checked_id = 0

    def __call__(self, ctx, batch):
        cdef const uint32_t[:, ::1] recs = batch
        cdef Py_ssize_t n = recs.shape[0]
        cdef pool_ledger* L = self.ledger.p
        cdef MapCore m
        cdef uint64_t mid
        if n == 0:
            return
        if recs.shape[1] != 2:
            raise ValueError("traffic_accounting needs records of (uid u32, bytes u32)")
        mid = inner_id(&self.cfg.view, self.key)
        if mid == 0:                   # no stats map configured: nothing can be applied
            # relaxed: owner-only statistics word
            shm_store_relaxed(&L.dropped, shm_load_relaxed(&L.dropped) + <uint64_t>n)
            return
        m = self.ctx.map(<object>mid)
        if mid != self.checked_id:
            check_inner(m, "traffic_accounting", 16)
            if not m.view.writable:
                raise PermissionError(f"traffic_accounting: stats map {mid} is read-only for workers")
            self.checked_id = mid
        if m.view.n_copies > 1:
            # relaxed: the journal's map id; written while no event is in flight
            shm_store_relaxed(&L.j_map, mid)
            with nogil:
                apply_per_worker(&m.view, &recs[0, 0], n, self.copy, L)
        else:
            shm_store_relaxed(&L.j_map, mid)
            with nogil:
                apply_shared(&m.view, &recs[0, 0], n, L)


class _Program:
    """``program(ctx, batch)``; the worker calls ``bind(ctx)`` once instead."""
    counts_applied = True

    def bind(self, ctx):
        return TrafficAccounting(ctx)

    def __call__(self, ctx, batch):
        bound = ctx.state.get("traffic_accounting")
        if bound is None:
            bound = ctx.state["traffic_accounting"] = TrafficAccounting(ctx)
        bound(ctx, batch)


program = _Program()
