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
from shmrcu.core._layout cimport (shm_load_acquire, shm_load_relaxed, shm_store_release,
                             shm_store_relaxed)
from shmrcu.core._epoch cimport Reader, rcu_online, rcu_offline, rcu_quiescent
from shmrcu.core._segment cimport Mapping

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


# ---------------------------------------------------------------------------
# The torture matrix (tests/test_torture_matrix.py, bench/soak_torture.py).
#
# A reader checks, in every read-side section (or QSBR batch), three things
# protected by three different grace-period users of the same runtime:
#   * the "main" area, updated with update_once + synchronize();
#   * the "polled" area, updated with update_once + start/poll_grace_period;
#   * the inner map named by slot 0 of an outer array_of_maps, which the
#     controller keeps creating, swapping in, retiring and (in the background)
#     freeing; after the free the test poisons the map through its own mapping
#     (poison_if_freed), so a reader that still holds it sees the poison.
# Inner maps are resolved by id as a worker would: the outer slot is read
# without the GIL; a new id is mapped (rt.map) with the GIL, inside the section.

from shmrcu.core._layout cimport control_header, shm_load_acquire
from shmrcu.maps._maps cimport MapCore
from shmrcu.maps._kernels cimport map_view, mv_lookup_id, mv_value
from shmrcu.maps._maplayout cimport map_header, SHMRCU_MAP_FREED
from libc.stdint cimport uint32_t

DEF INNER_CHECKS = 4         # values of the inner map checked per read
DEF HOUSEKEEP_EVERY = 256    # reads between two looks at freed_generation
DEF KEEP_HANDLES = 8         # recently resolved inner handles kept referenced

INNER_ENTRIES = 64           # inner maps: array, key "I", value "Q", this many entries
MAP_POISON = 0xdeaddeaddeaddead


cdef inline uint64_t inner_bad(map_view* v, uint64_t stamp, uint64_t n) noexcept nogil:
    """Violations seen in inner map ``v`` (every value must be its id ``stamp``)."""
    cdef uint64_t bad = 0, i
    cdef int j
    if v.base == NULL:        # the handle was closed (unmapped) while we hold it
        return 1
    # relaxed: a freed state seen while holding the map is itself the violation
    if shm_load_relaxed(&v.hdr.state) == <uint64_t>SHMRCU_MAP_FREED:
        bad += 1
    for j in range(INNER_CHECKS):
        i = (n + <uint64_t>j * 17) % v.max_entries
        # relaxed: contents were published by the outer slot's exchange (acquire-loaded)
        if shm_load_relaxed(<uint64_t*>mv_value(v, i, 0)) != stamp:
            bad += 1
    return bad


cdef map_view* resolve_view(uint64_t map_id, object resolve, list keep, list errors) noexcept nogil:
    """Map inner map ``map_id`` in this process (with the GIL); NULL on error."""
    with gil:
        try:
            m = resolve(map_id)
            if not isinstance(m, MapCore) or (<MapCore>m).closed or (<MapCore>m).id != map_id:
                raise RuntimeError(f"resolve({map_id}) gave {m!r}")
        except BaseException as exc:
            if len(errors) < 5:
                errors.append(f"{type(exc).__name__}: {exc}")
            return NULL
        keep.append(m)
        if len(keep) > KEEP_HANDLES:
            del keep[0]
        return &(<MapCore>m).view


cdef struct inner_track:
    uint64_t cur_id          # the inner map id mapped in cur_v
    map_view* cur_v
    uint64_t switches        # times the outer slot named a new map
    uint64_t resolve_errors


cdef inline uint64_t track_inner(map_view* ov, uint32_t* key0, inner_track* t, object resolve,
                                 list keep, list errors) noexcept nogil:
    """The inner id in the outer slot now, mapped in ``t.cur_v``; 0 if empty or unresolvable."""
    cdef uint64_t map_id = mv_lookup_id(ov, key0)
    cdef map_view* v
    if map_id != 0 and map_id != t.cur_id:
        v = resolve_view(map_id, resolve, keep, errors)
        if v == NULL:
            t.resolve_errors += 1
            return 0
        t.cur_id = map_id
        t.cur_v = v
        t.switches += 1
    return map_id


def matrix_read_loop(Reader reader, Mapping main, Mapping polled, MapCore outer, uint64_t reads,
                     bint qsbr, bint stop_on_bad, object resolve, object housekeep):
    """Run ``reads`` checked reads of the three protected objects; return a dict of counts.

    ``resolve(id)`` maps an inner map (``rt.map``); ``housekeep()`` drops freed maps
    (``rt.housekeeping``) and is called outside sections / at quiescent states when
    the runtime's freed generation moved (``stale_acks`` counts the calls after
    which this reader's slot still had not acknowledged it).  Sections use the reader's own enter/exit
    (so the process knows the reader is inside one); QSBR runs online() ..
    offline() with a quiescent state every QSBR_BATCH reads and holds the first
    objects of a batch across it.  With ``stop_on_bad`` the first violation in the
    main area stops every reader (the area's stop flag)."""
    if main.closed or polled.closed:
        raise ValueError("torture area is not mapped in this process")
    if outer.closed:
        raise ValueError("outer map is not mapped in this process")
    reader._check_open()
    cdef torture_area* a = <torture_area*>main.addr
    cdef torture_area* b = <torture_area*>polled.addr
    cdef control_header* hdr = reader.hdr
    cdef map_view* ov = &outer.view
    cdef uint32_t key0 = 0
    cdef uint64_t n = 0, bad_main = 0, bad_poll = 0, bad_map = 0, empty = 0
    cdef uint64_t housekeeps = 0, stale_acks = 0, gen_seen, map_id, held_id
    cdef inner_track t
    cdef map_view* held_v = NULL
    cdef torture_elem* e
    cdef torture_elem* e2
    cdef torture_elem* h1
    cdef torture_elem* h2
    cdef int k
    cdef list keep = []
    cdef list errors = []
    t.cur_id = 0
    t.cur_v = NULL
    t.switches = 0
    t.resolve_errors = 0
    # What this reader's slot last acknowledged (not the current generation: maps
    # freed between the claim of the slot and now must be dropped too, or a
    # barrier() waits for this reader until the next free).  relaxed: our own slot
    gen_seen = shm_load_relaxed(&reader.slot.freed_seen)
    if qsbr:
        reader.online()
    with nogil:
        while n < reads and not shm_load_relaxed(&a.stop):
            if qsbr:
                # references taken here live across the whole batch
                h1 = load_current(a)
                h2 = load_current(b)
                held_id = track_inner(ov, &key0, &t, resolve, keep, errors)
                held_v = t.cur_v
                for k in range(QSBR_BATCH):
                    e = load_current(a)
                    e2 = load_current(b)
                    bad_main += elem_bad(e) + elem_bad(h1)
                    bad_poll += elem_bad(e2) + elem_bad(h2)
                    map_id = track_inner(ov, &key0, &t, resolve, keep, errors)
                    if map_id == 0:
                        empty += 1
                    else:
                        bad_map += inner_bad(t.cur_v, t.cur_id, n)
                    if held_id != 0:
                        bad_map += inner_bad(held_v, held_id, n + 1)
                    n += 1
                rcu_quiescent(hdr, reader.slot)
            else:
                reader.enter()
                e = load_current(a)
                e2 = load_current(b)
                map_id = track_inner(ov, &key0, &t, resolve, keep, errors)
                for k in range(HOLD_CHECKS):
                    bad_main += elem_bad(e)
                    bad_poll += elem_bad(e2)
                if map_id == 0:
                    empty += 1
                else:
                    bad_map += inner_bad(t.cur_v, t.cur_id, n)
                reader.exit()
                n += 1
            if bad_main and stop_on_bad:
                # release: nothing to publish but the flag; readers poll it relaxed
                shm_store_release(&a.stop, 1)
                break
            # outside any section / right after a quiescent state: drop freed maps
            if n % HOUSEKEEP_EVERY < (QSBR_BATCH if qsbr else 1) and \
                    shm_load_acquire(&hdr.freed_generation) != gen_seen:
                # acquire: as above
                gen_seen = shm_load_acquire(&hdr.freed_generation)
                with gil:
                    housekeep()
                housekeeps += 1
                # relaxed: our own slot.  Diagnostic only: housekeeping ran for this
                # process and still did not acknowledge ``gen_seen`` for this reader
                if shm_load_relaxed(&reader.slot.freed_seen) < gen_seen:
                    stale_acks += 1
    if qsbr:
        reader.offline()
    return {"reads": n, "bad_main": bad_main, "bad_poll": bad_poll, "bad_map": bad_map,
            "empty": empty, "switches": t.switches, "housekeeps": housekeeps, "stale_acks": stale_acks,
            "resolve_errors": t.resolve_errors, "errors": errors}


def fill_inner(MapCore m, uint64_t stamp):
    """Controller: set every value of a fresh inner map to ``stamp`` (its id)."""
    if m.closed:
        raise ValueError("map is closed")
    cdef uint64_t i
    for i in range(m.view.max_entries):
        # relaxed: published by the release (seq_cst) exchange into the outer slot
        shm_store_relaxed(<uint64_t*>mv_value(&m.view, i, 0), stamp)


def poison_if_freed(Mapping m):
    """Controller, through its own mapping of an inner map's segment: once the map is
    freed (its grace period elapsed), overwrite every value with MAP_POISON.  True if done."""
    if m.closed:
        raise ValueError("mapping is closed")
    cdef map_header* h = <map_header*>m.addr
    cdef uint64_t i
    # acquire: the free (state store) happened after the grace period the map waited for
    if shm_load_acquire(&h.state) != <uint64_t>SHMRCU_MAP_FREED:
        return False
    for i in range(h.max_entries):
        # relaxed: after a correct grace period no reader looks at these any more
        shm_store_relaxed(<uint64_t*>(m.addr + h.values_offset + i * h.value_stride),
                          0xdeaddeaddeaddead)
    return True
