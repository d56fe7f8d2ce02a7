# cython: language_level=3
"""Built-in program ``route_lookup``: look every event's key up in the live table.

``routes[0]`` (an array_of_maps, name from ``args["routes"]``) names the
current routing table, a hash keyed by u32; each event's first field (uid) is
looked up and the worker counts hits and misses in its ledger.  The table is
resolved once per batch (valid until the worker's quiescent state) and the
lookups run without the GIL.  Lookups have no side effect, so the applied
count is committed once per batch.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from shmrcu.core._layout cimport shm_load_relaxed, shm_store_relaxed
from shmrcu.maps._maps cimport MapCore
from shmrcu.maps._kernels cimport map_view, mv_find
from shmrcu.pool.programs._ledger cimport Ledger, pool_ledger
from shmrcu.pool.programs._common cimport inner_id

from shmrcu.pool.programs._resolve import check_inner, outer_map


cdef void lookup_all(map_view* m, const uint32_t* rec, Py_ssize_t n,
                     uint64_t* hits, uint64_t* misses) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t key
    cdef uint64_t h = 0
    for i in range(n):
        key = rec[2 * i]
        if mv_find(m, &key) >= 0:
            h += 1
    hits[0] = h
    misses[0] = <uint64_t>n - h


cdef class RouteLookup:
    counts_applied = True
    cdef MapCore routes
    cdef Ledger ledger
    cdef uint32_t key
    cdef uint64_t checked_id
    cdef object ctx

    def __init__(self, ctx):
        self.ctx = ctx
        self.routes = outer_map(ctx, "routes", "routes", "route_lookup")
        self.key = ctx.args.get("routes_key", 0)
        self.ledger = ctx.ledger
        self.checked_id = 0

    def __call__(self, ctx, batch):
        cdef const uint32_t[:, ::1] recs = batch
        cdef Py_ssize_t n = recs.shape[0]
        cdef pool_ledger* L = self.ledger.p
        cdef uint64_t hits = 0, misses = 0, mid
        cdef MapCore m
        if n == 0:
            return
        mid = inner_id(&self.routes.view, self.key)
        if mid == 0:
            misses = n                 # no table: every lookup misses
        else:
            m = self.ctx.map(<object>mid)
            if mid != self.checked_id:
                check_inner(m, "route_lookup", 0)
                self.checked_id = mid
            with nogil:
                lookup_all(&m.view, &recs[0, 0], n, &hits, &misses)
        # relaxed: owner-only ledger words (statistics), see _ledger.h
        shm_store_relaxed(&L.hits, shm_load_relaxed(&L.hits) + hits)
        shm_store_relaxed(&L.misses, shm_load_relaxed(&L.misses) + misses)
        shm_store_relaxed(&L.applied, shm_load_relaxed(&L.applied) + <uint64_t>n)


class _Program:
    counts_applied = True

    def bind(self, ctx):
        return RouteLookup(ctx)

    def __call__(self, ctx, batch):
        bound = ctx.state.get("route_lookup")
        if bound is None:
            bound = ctx.state["route_lookup"] = RouteLookup(ctx)
        bound(ctx, batch)


program = _Program()
