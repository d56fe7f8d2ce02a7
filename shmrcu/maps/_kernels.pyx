# cython: language_level=3
"""Map kernels: nogil, C level, every map operation on a ``map_view``.

Hash maps: lock-free open addressing in shared memory
------------------------------------------------------
A hash map is ``capacity`` slots (a power of two, at least twice max_entries),
probed linearly from ``hash & mask``.  Each slot starts with a control word
``ctl = tag << 32 | generation << 8 | state`` (layout in _maplayout.h).

* Lookup walks from the home slot, acquire-loading ``ctl``; a LIVE slot whose
  tag and key match is the answer, an EMPTY slot ends the search.  Lookups
  never write and never wait.
* Insert claims the first slot on the probe path that is EMPTY or a tombstone
  whose grace period is over, with a CAS to CLAIMED (a new generation), then
  reserves room (``count`` below ``max_entries``).  A reservation is only held
  while its slot is visibly CLAIMED/PENDING and is given back before the slot
  turns TOMB, so an insert that finds the count full tells "really full" from
  "inserts in flight" by scanning for such slots (E2BIG only for the first).
  It writes the key
  and the value, stores PENDING (seq_cst), and scans the probe path for another
  inserter of the same key: the two PENDING stores and the two scans form a
  Dekker pair, so of two concurrent inserters at least one sees the other.
  The rule -- yield to a LIVE copy, or to a PENDING copy nearer home; wait for
  a PENDING copy further from home to decide -- leaves exactly one LIVE copy.
  Waits only ever point away from home, so they cannot form a cycle.  The
  winner stores LIVE with release: key and value are visible before the key is.
* Delete CASes LIVE to DELETING, records ``retire_epoch = global_epoch + 1``
  (loaded after the CAS) and stores TOMB (release).  Any reader that saw the
  slot LIVE entered its section at an epoch <= the loaded one, so once
  ``completed_epoch >= retire_epoch`` none can still look at the slot, and an
  insert may recycle it: a reader never sees a slot change its key under it.
  Tombstones that are still waiting count against nothing: ``max_entries``
  live keys always fit because capacity >= 2 * max_entries.  When only waiting
  tombstones are left, the insert polls the readers without blocking
  (poll_readers) and, if they have all moved on, recycles them; otherwise it
  returns -EAGAIN and the Python layer synchronizes and retries (when not
  inside a section itself).  Deletes made from Python advance the global epoch
  so that later sections never hold their tombstones.

Values are written in place: a single aligned u64 is read and written as one
word, multi-field values may be seen half-updated (as in BPF without spin
locks).  ``add`` is an atomic fetch-add on a shared copy and a plain
owner-only add on a per-worker copy.

Where the code is: the read side (hashing, the probe loop ``hash_find``, ``mv_find``,
``mv_value``) is ``cdef inline`` in ``_kernels.pxd`` so that it inlines into every module that
cimports it (``MapCore`` in ``_maps.pyx``, the built-in programs); the write side (slot claim,
insert, delete, the reader poll) and the batch loops are below.
"""
cimport cython
from libc.errno cimport ENOENT, EEXIST, E2BIG, EINVAL, EPERM, EAGAIN, EINTR, EBUSY
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy, memcmp, memset

from shmrcu.core._layout cimport (control_header, worker_slot, SHMRCU_SECTIONS_MEMBARRIER,
                             SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED, shm_membarrier, shm_load_acquire, shm_load_relaxed, shm_load_seq_cst,
                             shm_store_release, shm_store_relaxed, shm_store_seq_cst, shm_xchg_seq_cst,
                             shm_fetch_add_relaxed, shm_cas_acq_rel, shm_cas_seq_cst, shm_cpu_relax,
                             shm_fence_seq_cst, shm_monotonic_ns)
from shmrcu.maps._maplayout cimport *
from shmrcu.core._epoch cimport updater_membarrier

cdef extern from "<sched.h>" nogil:
    int sched_yield()

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



# ---------------------------------------------------------------------------
# hashing and small helpers


cdef uint64_t mv_hash(const void* key, uint32_t n) noexcept nogil:
    return hash_bytes(<const char*>key, n)


# A writer waiting on another writer's half-finished insert gives up after this
# long: the other writer may have died between claiming a slot and publishing it.
cdef uint64_t STALLED_INSERT_NS = 1000000000

cdef inline bint backoff(uint32_t* spins, uint64_t* since) noexcept nogil:
    """Spin, then yield; True once we have waited STALLED_INSERT_NS (give up: -EBUSY)."""
    cdef uint64_t now
    spins[0] += 1
    if spins[0] < 128:
        shm_cpu_relax()
        return False
    sched_yield()
    if spins[0] & 63 == 0:
        now = shm_monotonic_ns()
        if since[0] == 0:
            since[0] = now
        elif now - since[0] > STALLED_INSERT_NS:
            return True
    return False


# ---------------------------------------------------------------------------
# hash kernels


cdef int64_t claim_slot(map_view* m, uint64_t home, uint64_t tag, uint64_t completed,
                        uint64_t* claimed_ctl) noexcept nogil:
    """CAS the first EMPTY slot, or tombstone whose grace period is over, on the
    probe path to CLAIMED (new generation).  -1 if there is none."""
    cdef uint64_t i = home
    cdef uint64_t n, ctl, st, retire, want
    cdef char* s
    for n in range(m.capacity):
        s = slot_at(m, i)
        # acquire: a tombstone's retire_epoch (stored before TOMB) is visible to us
        ctl = shm_load_acquire(<uint64_t*>s)
        while True:
            st = ctl & STATE_MASK
            if st == S_TOMB:
                # relaxed: ordered after the acquire load of ctl above
                retire = shm_load_relaxed(<uint64_t*>(s + 8))
                if retire > completed:
                    break
            elif st != S_EMPTY:
                break
            want = (tag << 32) | ((ctl + SHMRCU_SLOT_GEN_STEP) & SHMRCU_SLOT_GEN_MASK) | S_CLAIMED
            # acq_rel CAS: makes the slot ours before we write it, and orders our
            # writes after the previous owner's (the generation defeats ABA)
            if shm_cas_acq_rel(<uint64_t*>s, ctl, want):
                claimed_ctl[0] = want
                return <int64_t>i
            ctl = shm_load_acquire(<uint64_t*>s)
        i = (i + 1) & m.mask
    return -1


cdef uint64_t poll_readers(map_view* m) noexcept nogil:
    """Non-blocking grace-period check for an insert that found no free slot.

    Advances the global epoch (so sections that start from now on do not hold
    today's tombstones) and scans the worker slots: every reader is offline or
    at an epoch >= the smallest online one, so that epoch has elapsed; it is
    recorded in completed_epoch (CAS to a larger value only) and returned.  An
    inserter inside a section that began before the deletes cannot get past
    itself here: it gets -EAGAIN and its caller reports MapFull."""
    cdef control_header* c = m.ctl
    cdef worker_slot* slots = <worker_slot*>((<char*>c) + c.slots_offset)
    cdef uint64_t g, low, ctr, done
    cdef uint32_t i
    # seq_cst: the deletes that made the tombstones precede this advance, and the
    # advance precedes the scan below (as in start_grace_period)
    shm_fence_seq_cst()
    g = shm_load_seq_cst(&c.global_epoch)
    shm_cas_seq_cst(&c.global_epoch, g, g + 1)
    low = g + 1
    # membarrier mode: after the advance and before the scan (as in wait()), so a
    # fence-skipping reader's ctr store is visible to the scan or it sees the advance
    if c.sections_mode == SHMRCU_SECTIONS_MEMBARRIER and updater_membarrier(c) < 0:
        return 0                  # readers skip fences and we cannot force them: no verdict
    for i in range(c.max_workers):
        # seq_cst: the Dekker pair with a reader's ctr store + fence (see _epoch.pyx)
        ctr = shm_load_seq_cst(&slots[i].ctr)
        if ctr != 0 and ctr < low:
            low = ctr
    # acquire: a fresh value to retry the CAS against
    done = shm_load_acquire(&c.completed_epoch)
    while done < low:
        # acq_rel CAS: publishes "epoch low elapsed" after the scan's loads
        if shm_cas_acq_rel(&c.completed_epoch, done, low):
            break
        done = shm_load_acquire(&c.completed_epoch)
    return low

cdef bint insert_in_flight(map_view* m) noexcept nogil:
    """Is any insert between its reservation and its verdict (a CLAIMED / PENDING slot)?

    Only asked when the map looks full, so the full scan costs nothing on the
    common path."""
    cdef uint64_t i, st
    for i in range(m.capacity):
        # acquire: as in claim_slot
        st = shm_load_acquire(<uint64_t*>slot_at(m, i)) & STATE_MASK
        if st == S_CLAIMED or st == S_PENDING:
            return True
    return False

cdef inline void release_claim(char* s, uint64_t ctl) noexcept nogil:
    """Free a slot we claimed but never published: nobody saw it as a key, so it is
    reusable at once (retire_epoch 0)."""
    # relaxed: published by the release store of TOMB below
    shm_store_relaxed(<uint64_t*>(s + 8), 0)
    # release: retire_epoch is written before the slot reads TOMB
    shm_store_release(<uint64_t*>s, (ctl & ~STATE_MASK) | S_TOMB)

cdef int64_t full_or_retry(map_view* m, const char* key, uint64_t h) noexcept nogil:
    """The count says full.  Unless reservations of inserts still in flight fill it
    -- one may be of this very key (then we update it), or may yield to a
    concurrent insert of its own key and give its reservation back -- it is."""
    # The scan comes first: an insert it does not see in flight has finished,
    # so the lookup after it finds the key if that insert was of this key.
    if insert_in_flight(m) or hash_find(m, key, h, NULL) >= 0:
        return RETRY
    # acquire (after the scan): an inserter gives its reservation back before its
    # slot turns TOMB; if the scan saw that TOMB, we see the smaller count here
    if shm_load_acquire(&m.hdr.count) < m.max_entries:
        return RETRY
    return -E2BIG

cdef int64_t give_up_insert(map_view* m, char* s, uint64_t pending) noexcept nogil:
    """Abandon our PENDING slot (nobody saw it as the key) and report -EBUSY."""
    # relaxed: giving back our reservation while the slot still looks in flight
    shm_fetch_add_relaxed(&m.hdr.count, <uint64_t>-1)
    release_claim(s, pending)
    return -EBUSY

# Claim a slot for ``key`` (not found LIVE by the caller), write it, resolve
# races with concurrent inserters of the same key and publish it.
cdef int64_t hash_insert(map_view* m, const char* key, uint64_t h, const void* init,
                         uint32_t copy) noexcept nogil:
    cdef uint64_t tag = tag_of(h)
    cdef uint64_t home = home_of(m, h)
    cdef uint64_t i, n, ctl, ctl2, st, completed, mine_ctl = 0, pending, retire
    cdef int64_t mine = -1
    cdef char* s
    cdef char* o
    cdef uint32_t c, spins = 0
    cdef uint64_t since = 0
    cdef bint contender
    # Claim first, reserve second: a reservation is only ever held while our
    # CLAIMED/PENDING slot is visible (and is given back before the slot turns
    # TOMB), so an inserter that finds the map full can tell "really full" from
    # "reservations of inserts in flight" by looking at the slots.
    # acquire: pairs with the grace-period waiter's acq_rel CAS of completed_epoch,
    # so the readers it waited for are done with tombstones retired before it
    completed = shm_load_acquire(&m.ctl.completed_epoch)
    mine = claim_slot(m, home, tag, completed, &mine_ctl)
    if mine < 0 and poll_readers(m) > completed:
        # the readers have all moved on since: tombstones they held are free now
        mine = claim_slot(m, home, tag, shm_load_acquire(&m.ctl.completed_epoch), &mine_ctl)
    if mine < 0:
        # relaxed: a budget check only
        if shm_load_relaxed(&m.hdr.count) >= m.max_entries:
            return full_or_retry(m, key, h)
        return -EAGAIN            # only tombstones inside their grace period are left
    s = slot_at(m, <uint64_t>mine)
    # relaxed: the live count is a budget; the atomic RMW alone keeps it exact
    if shm_fetch_add_relaxed(&m.hdr.count, 1) >= m.max_entries:
        # relaxed: giving back our reservation (before the slot stops looking in flight)
        shm_fetch_add_relaxed(&m.hdr.count, <uint64_t>-1)
        release_claim(s, mine_ctl)
        return full_or_retry(m, key, h)

    memset(s + SHMRCU_SLOT_HDR, 0, m.key_stride)
    memcpy(s + SHMRCU_SLOT_HDR, key, m.key_size)
    for c in range(m.n_copies):
        memset(value_at(m, <uint64_t>mine, c), 0, m.value_size)
    if init != NULL:
        memcpy(value_at(m, <uint64_t>mine, copy), init, m.value_size)
    pending = (mine_ctl & ~STATE_MASK) | S_PENDING
    # seq_cst: this store and the scan's seq_cst loads below are one half of a
    # Dekker pair with any concurrent inserter of the same key
    shm_store_seq_cst(<uint64_t*>s, pending)

    i = home
    for n in range(m.capacity):
        if i != <uint64_t>mine:
            o = slot_at(m, i)
            # seq_cst: the other half of the Dekker pair (see the PENDING store)
            ctl = shm_load_seq_cst(<uint64_t*>o)
            while True:
                st = ctl & STATE_MASK
                if st == S_EMPTY or (ctl >> 32) != tag or st == S_TOMB or st == S_DELETING:
                    break
                if st == S_CLAIMED:
                    # its owner is copying a key in (straight-line code): wait for it
                    if backoff(&spins, &since):
                        return give_up_insert(m, s, pending)
                    ctl = shm_load_seq_cst(<uint64_t*>o)
                    continue
                contender = key_eq(o + SHMRCU_SLOT_HDR, key, m.key_size)
                # seq_cst fence: the key bytes are read before ctl is re-read, so a
                # slot recycled while we compared shows a new generation
                shm_fence_seq_cst()
                ctl2 = shm_load_seq_cst(<uint64_t*>o)
                if ctl2 != ctl:
                    ctl = ctl2
                    continue
                if not contender:
                    break
                if st == S_LIVE or probe_distance(m, home, i) < probe_distance(m, home, <uint64_t>mine):
                    # yield: give the reservation back while our slot still looks
                    # in flight (relaxed: the count is a budget), then free the slot
                    shm_fetch_add_relaxed(&m.hdr.count, <uint64_t>-1)
                    release_claim(s, pending)
                    return RETRY
                # a PENDING copy further from home: wait until its inserter decides
                if backoff(&spins, &since):
                    return give_up_insert(m, s, pending)
                ctl = shm_load_seq_cst(<uint64_t*>o)
            if (ctl & STATE_MASK) == S_EMPTY:
                break
        i = (i + 1) & m.mask
    # release: key and value are complete before any lookup can see LIVE
    shm_store_release(<uint64_t*>s, (pending & ~STATE_MASK) | S_LIVE)
    return mine

cdef int64_t mv_upsert(map_view* m, const void* key, const void* init, uint32_t copy,
                       bint* created) noexcept nogil:
    cdef uint64_t h
    cdef int64_t e
    cdef uint32_t spins = 0
    cdef uint64_t since = 0
    created[0] = False
    if not m.is_hash:
        return array_index(m, key)
    if not m.writable:
        return -EPERM
    h = hash_bytes(<const char*>key, m.key_size)
    while True:
        e = hash_find(m, <const char*>key, h, NULL)
        if e >= 0:
            return e
        e = hash_insert(m, <const char*>key, h, init, copy)
        if e != RETRY:
            if e >= 0:
                created[0] = True
            return e
        if backoff(&spins, &since):
            return -EBUSY

cdef int hash_delete(map_view* m, const char* key, uint64_t* old_id) noexcept nogil:
    cdef uint64_t h = hash_bytes(key, m.key_size)
    cdef uint64_t ctl = 0, ep
    cdef int64_t e
    cdef char* s
    while True:
        e = hash_find(m, key, h, &ctl)
        if e < 0:
            return <int>e
        s = slot_at(m, <uint64_t>e)
        # seq_cst CAS: the delete is ordered before our load of the global epoch
        # (and fails if the slot changed since the lookup saw it LIVE)
        if shm_cas_seq_cst(<uint64_t*>s, ctl, (ctl & ~STATE_MASK) | S_DELETING):
            break
    if old_id != NULL:
        # seq_cst exchange with 0: takes the id out, so a concurrent exchange-update
        # (a CAS from a non-zero id) either landed first -- we report its id -- or
        # fails and retries; acquire half pairs with the store that published the id
        old_id[0] = shm_xchg_seq_cst(<uint64_t*>value_at(m, <uint64_t>e, 0), 0)
    # seq_cst: a reader that saw the slot LIVE entered its section at an epoch <= this
    ep = shm_load_seq_cst(&m.ctl.global_epoch) + 1
    # relaxed: published by the release store of TOMB just below
    shm_store_relaxed(<uint64_t*>(s + 8), ep)
    # release: retire_epoch is visible before anyone can see TOMB and judge reuse
    shm_store_release(<uint64_t*>s, (ctl & ~STATE_MASK) | S_TOMB)
    # relaxed: the count is a budget (see hash_insert)
    shm_fetch_add_relaxed(&m.hdr.count, <uint64_t>-1)
    return 0


# ---------------------------------------------------------------------------
# the exported kernels


cdef int mv_update(map_view* m, const void* key, const void* value, uint64_t flags,
                   uint32_t copy) noexcept nogil:
    cdef int64_t e
    cdef uint64_t h, old
    cdef uint32_t spins = 0
    cdef uint64_t since = 0
    if flags > <uint64_t>SHMRCU_EXIST:
        return -EINVAL
    if not m.writable:
        return -EPERM
    if m.kind == SHMRCU_MAP_ARRAY_OF_MAPS or m.kind == SHMRCU_MAP_HASH_OF_MAPS:
        return mv_swap_id(m, key, (<const uint64_t*>value)[0], flags, &old)
    if not m.is_hash:
        e = array_index(m, key)
        if e < 0:
            return <int>e
        if flags == <uint64_t>SHMRCU_NOEXIST:
            return -EEXIST            # every array index always exists (BPF)
        write_value(value_at(m, <uint64_t>e, copy), value, m.value_size)
        return 0
    h = hash_bytes(<const char*>key, m.key_size)
    while True:
        e = hash_find(m, <const char*>key, h, NULL)
        if e >= 0:
            if flags == <uint64_t>SHMRCU_NOEXIST:
                return -EEXIST
            write_value(value_at(m, <uint64_t>e, copy), value, m.value_size)
            return 0
        if flags == <uint64_t>SHMRCU_EXIST:
            return -ENOENT
        e = hash_insert(m, <const char*>key, h, value, copy)
        if e != RETRY:
            return <int>e if e < 0 else 0
        if backoff(&spins, &since):
            return -EBUSY

cdef int mv_delete(map_view* m, const void* key) noexcept nogil:
    cdef int64_t e
    cdef uint64_t old
    if not m.writable:
        return -EPERM
    if m.is_hash:
        return hash_delete(m, <const char*>key, NULL)
    if m.kind == SHMRCU_MAP_ARRAY_OF_MAPS:
        return mv_swap_id(m, key, 0, SHMRCU_EXIST, &old)
    e = array_index(m, key)
    return <int>e if e < 0 else -EINVAL   # array entries cannot be deleted (BPF)


cdef int mv_add_u64(map_view* m, const void* key, uint32_t offset, uint64_t delta,
                    uint32_t copy, uint64_t* result) noexcept nogil:
    cdef bint created
    cdef int64_t e
    cdef uint64_t v
    if not m.writable:
        return -EPERM
    if offset % 8 != 0 or offset + 8 > m.value_size or \
            m.kind == SHMRCU_MAP_ARRAY_OF_MAPS or m.kind == SHMRCU_MAP_HASH_OF_MAPS:
        return -EINVAL
    e = mv_upsert(m, key, NULL, copy, &created)
    if e < 0:
        return <int>e
    v = add_at(m, e, copy, offset, delta)
    if result != NULL:
        result[0] = v
    return 0

cdef int mv_swap_id(map_view* m, const void* key, uint64_t new_id, uint64_t flags,
                    uint64_t* old) noexcept nogil:
    cdef int64_t e
    cdef uint64_t h, cur
    cdef uint64_t* p
    cdef uint32_t spins = 0
    cdef uint64_t since = 0
    old[0] = 0
    if not m.writable:
        return -EPERM
    if m.kind != SHMRCU_MAP_ARRAY_OF_MAPS and m.kind != SHMRCU_MAP_HASH_OF_MAPS:
        return -EINVAL
    if m.kind == SHMRCU_MAP_ARRAY_OF_MAPS:
        e = array_index(m, key)
        if e < 0:
            return <int>e
        p = <uint64_t*>value_at(m, <uint64_t>e, 0)
        while True:
            # acquire: pairs with the exchange that stored the current id
            cur = shm_load_acquire(p)
            if flags == <uint64_t>SHMRCU_NOEXIST and cur != 0:
                return -EEXIST
            if flags == <uint64_t>SHMRCU_EXIST and cur == 0:
                return -ENOENT
            # seq_cst CAS: an exchange of the inner id -- release publishes the
            # inner map's contents to readers; seq_cst orders it before the epoch
            # advance of the grace period that follows a swap
            if shm_cas_seq_cst(p, cur, new_id):
                old[0] = cur
                return 0
    if new_id == 0:
        return hash_delete(m, <const char*>key, old)
    h = hash_bytes(<const char*>key, m.key_size)
    while True:
        e = hash_find(m, <const char*>key, h, NULL)
        if e >= 0:
            if flags == <uint64_t>SHMRCU_NOEXIST:
                return -EEXIST
            p = <uint64_t*>value_at(m, <uint64_t>e, 0)
            # acquire: the id we are about to replace (and report) is the current one
            cur = shm_load_acquire(p)
            # A LIVE outer entry never holds 0: 0 means a delete took the id out (its
            # exchange with 0, see hash_delete) and the key is going away.  Replacing
            # with a CAS from a non-zero id makes each id come back exactly once: to
            # us, to a concurrent exchanger, or to the delete -- never to two of them.
            # seq_cst CAS: release publishes the new inner map to readers that
            # acquire-load the id; seq_cst orders it before a following grace period
            if cur != 0 and shm_cas_seq_cst(p, cur, new_id):
                old[0] = cur
                return 0
            if backoff(&spins, &since):
                return -EBUSY
            continue
        if flags == <uint64_t>SHMRCU_EXIST:
            return -ENOENT
        e = hash_insert(m, <const char*>key, h, &new_id, 0)
        if e != RETRY:
            return <int>e if e < 0 else 0
        if backoff(&spins, &since):
            return -EBUSY

cdef uint64_t mv_lookup_id(map_view* m, const void* key) noexcept nogil:
    cdef int64_t e = mv_find(m, key)
    if e < 0:
        return 0
    # acquire: pairs with the seq_cst exchange that stored the id, so the inner
    # map it names is fully built when we use it
    return shm_load_acquire(<uint64_t*>value_at(m, <uint64_t>e, 0))


# ---------------------------------------------------------------------------
# batch kernels (run without the GIL; stop at the first error)

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
            memcpy(out + i * vs, value_at(&v, <uint64_t>e, 0), vs)
    return n

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
            memcpy(out + i * vs, value_at(m, <uint64_t>e, 0), vs)
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
