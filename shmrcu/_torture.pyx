# cython: language_level=3
"""Grace-period torture, after liburcu's rcutorture.

An updater keeps replacing the "current" element of a small pool: it fills a
fresh element, publishes it, waits for a grace period, then *poisons* the old
one.  Readers (QSBR and explicit sections, in other processes) keep loading the
current element and checking it, over and over while they may still hold it.
A reader that ever sees poison held an element past the grace period that
should have protected it: a violation.  With a synchronize that does not wait,
violations appear at once -- the suite checks both outcomes.
"""
from libc.stdint cimport uint64_t
from shmrcu._layout cimport (shm_load_acquire, shm_load_relaxed, shm_store_release,
                             shm_store_relaxed)
from shmrcu._epoch cimport Reader, rcu_online, rcu_offline, rcu_quiescent
from shmrcu._segment cimport Mapping

DEF POOL = 16
DEF PAYLOAD = 6
DEF HOLD_CHECKS = 8          # re-checks of one element while it is held
DEF QSBR_BATCH = 64          # reads between two quiescent states

cdef struct torture_elem:
    uint64_t seq             # generation stamped by the updater when it fills the element
    uint64_t poison          # 1 once the updater considers the element freed
    uint64_t payload[PAYLOAD]

cdef struct torture_area:
    uint64_t current         # index of the published element
    uint64_t stop            # readers stop when it is 1
    uint64_t _pad[6]
    torture_elem elems[POOL]

AREA_SIZE = sizeof(torture_area)


cdef inline bint elem_bad(torture_elem* e) noexcept nogil:
    # relaxed: a torn or poisoned view is exactly what we are looking for
    cdef uint64_t seq = shm_load_relaxed(&e.seq)
    if shm_load_relaxed(&e.poison):
        return True
    cdef int k
    for k in range(PAYLOAD):
        if shm_load_relaxed(&e.payload[k]) != seq:
            return True
    return False


cdef inline torture_elem* load_current(torture_area* a) noexcept nogil:
    # acquire: pairs with the updater's release publish; the element's fill is visible
    return &a.elems[shm_load_acquire(&a.current) % POOL]


def init_area(Mapping m):
    cdef torture_area* a = <torture_area*>m.addr
    cdef int k
    for k in range(PAYLOAD):
        a.elems[0].payload[k] = 1
    a.elems[0].seq = 1
    for k in range(1, POOL):
        a.elems[k].poison = 1
    shm_store_release(&a.current, 0)


def read_loop(Reader reader, Mapping m, uint64_t reads, bint qsbr):
    """Run ``reads`` checked reads; return (reads_done, violations)."""
    cdef torture_area* a = <torture_area*>m.addr
    cdef torture_elem* e
    cdef torture_elem* held
    cdef uint64_t n = 0, bad = 0
    cdef int k
    with nogil:
        if qsbr:
            rcu_online(reader.hdr, reader.slot, reader.fence)
        while n < reads and not shm_load_relaxed(&a.stop):
            if qsbr:
                # QSBR: references live across a whole batch, until the quiescent state
                held = load_current(a)
                for k in range(QSBR_BATCH):
                    e = load_current(a)
                    bad += elem_bad(e) + elem_bad(held)
                    n += 1
                rcu_quiescent(reader.hdr, reader.slot)
            else:
                rcu_online(reader.hdr, reader.slot, reader.fence)
                e = load_current(a)
                for k in range(HOLD_CHECKS):
                    bad += elem_bad(e)
                rcu_offline(reader.slot)
                n += 1
        if qsbr:
            rcu_offline(reader.slot)
    return n, bad


def update_once(Mapping m, uint64_t seq, object synchronize):
    """Fill a free element with ``seq``, publish it, synchronize(), poison the old one."""
    cdef torture_area* a = <torture_area*>m.addr
    cdef uint64_t old = shm_load_relaxed(&a.current) % POOL
    cdef uint64_t new = seq % POOL
    cdef torture_elem* e
    cdef int k
    if new == old:
        new = (new + 1) % POOL
    e = &a.elems[new]
    # relaxed: published by the release store of `current` below
    shm_store_relaxed(&e.seq, seq)
    for k in range(PAYLOAD):
        shm_store_relaxed(&e.payload[k], seq)
    shm_store_relaxed(&e.poison, 0)
    # release: readers that load the new index see the filled element
    shm_store_release(&a.current, new)
    synchronize()
    e = &a.elems[old]
    # relaxed: after a correct grace period no reader looks at it any more
    shm_store_relaxed(&e.poison, 1)
    for k in range(PAYLOAD):
        shm_store_relaxed(&e.payload[k], 0xdeaddeaddeaddead)


def set_stop(Mapping m):
    # release: nothing to publish but the flag itself; readers poll it relaxed
    shm_store_release(&(<torture_area*>m.addr).stop, 1)
