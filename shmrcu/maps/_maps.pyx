# cython: language_level=3
"""Map kernels (nogil, C level) and the map handle core (Python level).

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
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport ENOENT, EEXIST, E2BIG, EINVAL, EPERM, EAGAIN, EINTR, EBUSY
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy, memcmp, memset

from shmrcu.core._layout cimport (control_header, worker_slot, SHMRCU_SECTIONS_MEMBARRIER,
                             SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED, shm_membarrier, shm_load_acquire, shm_load_relaxed, shm_load_seq_cst,
                             shm_store_release, shm_store_relaxed, shm_store_seq_cst, shm_xchg_seq_cst,
                             shm_fetch_add_relaxed, shm_cas_acq_rel, shm_cas_seq_cst, shm_cpu_relax,
                             shm_fence_seq_cst, shm_monotonic_ns)
from shmrcu.maps._maplayout cimport *
from shmrcu.core._segment cimport Mapping
from shmrcu.core._epoch cimport ControlBlock, Reader, updater_membarrier
from shmrcu.core._epoch import thread_online as _thread_online

from ..errors import (IndexOutOfRange, KeyExists, KeyNotFound, MapClosed, MapFull,
                     ReadOnlyMap, ReaderClosed, ShmrcuError, UnsupportedOperation)

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

# Python-visible constants (from _maplayout.h, never restated)
ANY = SHMRCU_ANY
NOEXIST = SHMRCU_NOEXIST
EXIST = SHMRCU_EXIST
KIND_ARRAY = SHMRCU_MAP_ARRAY
KIND_HASH = SHMRCU_MAP_HASH
KIND_PER_WORKER_ARRAY = SHMRCU_MAP_PER_WORKER_ARRAY
KIND_PER_WORKER_HASH = SHMRCU_MAP_PER_WORKER_HASH
KIND_ARRAY_OF_MAPS = SHMRCU_MAP_ARRAY_OF_MAPS
KIND_HASH_OF_MAPS = SHMRCU_MAP_HASH_OF_MAPS
F_WORKER_READONLY = SHMRCU_MAP_F_WORKER_READONLY
STATE_LIVE = SHMRCU_MAP_LIVE
STATE_RETIRED = SHMRCU_MAP_RETIRED
STATE_FREED = SHMRCU_MAP_FREED
NAME_MAX = SHMRCU_MAP_NAME_MAX
HEADER_SIZE = sizeof(map_header)
LAYOUT = {"magic": SHMRCU_MAP_MAGIC, "version": SHMRCU_MAP_LAYOUT_VERSION,
          "header_size": sizeof(map_header), "slot_header": SHMRCU_SLOT_HDR}

cdef extern from *:
    """
    #define STATE_MASK SHMRCU_SLOT_STATE_MASK
    #define S_EMPTY SHMRCU_SLOT_EMPTY
    #define S_CLAIMED SHMRCU_SLOT_CLAIMED
    #define S_PENDING SHMRCU_SLOT_PENDING
    #define S_LIVE SHMRCU_SLOT_LIVE
    #define S_DELETING SHMRCU_SLOT_DELETING
    #define S_TOMB SHMRCU_SLOT_TOMB
    """
    uint64_t STATE_MASK, S_EMPTY, S_CLAIMED, S_PENDING, S_LIVE, S_DELETING, S_TOMB

cdef enum:
    RETRY = -10000                # internal: an insert yielded to a concurrent insert of its key
    PREFETCH_AHEAD = 16           # batch lookups: slots requested ahead of use (power of two)


# ---------------------------------------------------------------------------
# hashing and small helpers

cdef inline uint64_t fmix64(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h

cdef inline uint64_t hash_bytes(const char* key, uint32_t n) noexcept nogil:
    """Multiplicative (Fibonacci) hashing: the slot comes from the high bits
    (home_of), the tag from both halves (tag_of).  A key of up to 8 bytes costs
    one multiply; longer keys are folded 8 bytes at a time first."""
    cdef uint64_t h = n * 0x9e3779b97f4a7c15ULL
    cdef uint64_t w
    cdef uint32_t i = 0
    while n - i > 8:
        memcpy(&w, key + i, 8)
        h = (h ^ w) * 0xff51afd7ed558ccdULL
        h = (h << 31) | (h >> 33)
        i += 8
    w = 0
    memcpy(&w, key + i, n - i)
    return (h ^ w) * 0x9e3779b97f4a7c15ULL

cdef inline uint64_t home_of(map_view* m, uint64_t h) noexcept nogil:
    return h >> m.shift

cdef inline uint64_t tag_of(uint64_t h) noexcept nogil:
    return (h ^ (h >> 32)) & 0xffffffffULL

cdef uint64_t mv_hash(const void* key, uint32_t n) noexcept nogil:
    return hash_bytes(<const char*>key, n)

cdef inline bint key_eq(const char* slot_key, const char* key, uint32_t n) noexcept nogil:
    cdef uint64_t a, b
    cdef uint32_t c, d
    if n == 8:
        memcpy(&b, key, 8)
        return (<const uint64_t*>slot_key)[0] == b
    if n == 4:
        memcpy(&d, key, 4)
        return (<const uint32_t*>slot_key)[0] == d
    return memcmp(slot_key, key, n) == 0

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

cdef inline char* slot_at(map_view* m, uint64_t i) noexcept nogil:
    return m.slots + i * m.slot_size

cdef inline char* value_at(map_view* m, uint64_t e, uint32_t copy) noexcept nogil:
    return m.values + copy * m.copy_stride + e * m.value_stride

cdef char* mv_value(map_view* m, uint64_t e, uint32_t copy) noexcept nogil:
    return value_at(m, e, copy)

cdef inline void write_value(char* dst, const void* src, uint32_t n) noexcept nogil:
    if n == 8:
        # relaxed: a lone u64 value is replaced as one word (no torn reads); it
        # orders nothing else
        shm_store_relaxed(<uint64_t*>dst, (<const uint64_t*>src)[0])
    else:
        memcpy(dst, src, n)

cdef inline int64_t array_index(map_view* m, const void* key) noexcept nogil:
    cdef uint32_t idx
    memcpy(&idx, key, 4)
    if idx >= m.max_entries:
        return -E2BIG
    return idx


# ---------------------------------------------------------------------------
# hash kernels

cdef inline int64_t hash_find_n(map_view* m, const char* key, uint64_t h, uint64_t* seen,
                                uint32_t key_size) noexcept nogil:
    """The probe loop; ``key_size`` is a constant where callers specialise it."""
    cdef uint64_t tag = tag_of(h)
    cdef uint64_t i = home_of(m, h)
    cdef uint64_t n, ctl, st
    cdef char* s
    for n in range(m.capacity):
        s = slot_at(m, i)
        # acquire: pairs with the inserter's release store of LIVE, so the key
        # and value written before it are visible once we see LIVE
        ctl = shm_load_acquire(<uint64_t*>s)
        st = ctl & STATE_MASK
        if st == S_LIVE:
            if (ctl >> 32) == tag and key_eq(s + SHMRCU_SLOT_HDR, key, key_size):
                if seen != NULL:
                    seen[0] = ctl
                return <int64_t>i
        elif st == S_EMPTY:
            return -ENOENT
        i = (i + 1) & m.mask
    return -ENOENT

cdef inline int64_t hash_find(map_view* m, const char* key, uint64_t h, uint64_t* seen) noexcept nogil:
    return hash_find_n(m, key, h, seen, m.key_size)

cdef inline uint64_t probe_distance(map_view* m, uint64_t home, uint64_t i) noexcept nogil:
    return (i - home) & m.mask

cdef inline int64_t claim_slot(map_view* m, uint64_t home, uint64_t tag, uint64_t completed,
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

cdef inline void advance_epoch(map_view* m) noexcept nogil:
    """After deletes from Python: start a grace period (no wait), so sections that
    begin from now on do not hold the new tombstones and an insert's poll_readers
    can recycle them as soon as the older sections end."""
    # seq_cst: the deletes precede the advance (as in start_grace_period); losing
    # the CAS to another advance serves us as well
    cdef uint64_t g = shm_load_seq_cst(&m.ctl.global_epoch)
    shm_cas_seq_cst(&m.ctl.global_epoch, g, g + 1)

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

cdef int64_t mv_find(map_view* m, const void* key) noexcept nogil:
    cdef int64_t e
    if m.is_hash:
        return hash_find(m, <const char*>key, hash_bytes(<const char*>key, m.key_size), NULL)
    e = array_index(m, key)
    # acquire: pairs with the seq_cst exchange that stored the inner id
    if e >= 0 and m.kind == SHMRCU_MAP_ARRAY_OF_MAPS and \
            shm_load_acquire(<uint64_t*>value_at(m, <uint64_t>e, 0)) == 0:
        return -ENOENT
    return e

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

cdef inline uint64_t add_at(map_view* m, int64_t e, uint32_t copy, uint32_t offset,
                            uint64_t delta) noexcept nogil:
    """Add to one u64 field of entry ``e``; returns the new value."""
    cdef uint64_t* p = <uint64_t*>(value_at(m, <uint64_t>e, copy) + offset)
    cdef uint64_t v
    if m.n_copies > 1:
        # relaxed load/store: a per-worker copy has one writer, its owner; the
        # atomic access only keeps a summing reader from seeing a torn word
        v = shm_load_relaxed(p) + delta
        shm_store_relaxed(p, v)
        return v
    # relaxed fetch_add: exact sums need atomicity only, a counter orders nothing
    return shm_fetch_add_relaxed(p, delta) + delta

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


# ---------------------------------------------------------------------------
# the handle core: dict-like access from Python

try:
    import numpy as _np
except ImportError:                # numpy is optional: batches then fill bytearrays
    _np = None


cdef inline int pack_int(object obj, bint signed, uint32_t size, uint64_t* out) except -1:
    cdef int64_t s
    cdef uint64_t u
    if signed:
        s = obj
        if size < 8 and not (-(<int64_t>1 << (size * 8 - 1)) <= s < (<int64_t>1 << (size * 8 - 1))):
            raise OverflowError(f"{obj!r} does not fit a signed {size}-byte field")
        u = <uint64_t>s
    else:
        u = obj
        if size < 8 and u >> (size * 8):
            raise OverflowError(f"{obj!r} does not fit an unsigned {size}-byte field")
    out[0] = 0
    if size == 8:
        out[0] = u
    elif size == 4:
        (<uint32_t*>out)[0] = <uint32_t>u
    elif size == 2:
        (<uint16_t*>out)[0] = <uint16_t>u
    else:
        (<uint8_t*>out)[0] = <uint8_t>u
    return 0

cdef inline object unpack_int(const char* p, bint signed, uint32_t size):
    if size == 8:
        # relaxed: one word, see write_value
        if signed:
            return <int64_t>shm_load_relaxed(<uint64_t*>p)
        return shm_load_relaxed(<uint64_t*>p)
    if size == 4:
        return (<const int32_t*>p)[0] if signed else (<const uint32_t*>p)[0]
    if size == 2:
        return (<const int16_t*>p)[0] if signed else (<const uint16_t*>p)[0]
    return (<const int8_t*>p)[0] if signed else (<const uint8_t*>p)[0]


cdef inline const char* buf_ptr(object packed, uint64_t* small):
    """Where a packed key/value is: ``small`` for ints packed in place, else the bytes."""
    return <const char*>small if packed is None else <const char*>PyBytes_AS_STRING(packed)

cdef inline object as_bytes_view(object buf, bint writable, str what):
    cdef object mv = memoryview(buf)
    if not mv.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous buffer")
    if writable and mv.readonly:
        raise ValueError(f"{what} must be a writable buffer")
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv


cdef class MapCore:
    """Common core of every map handle; the kind-specific classes live in ``shmrcu.maps``.

    One handle per map and process (``rt.map()`` returns the cached one).  Every
    operation checks that the handle is open and the map not freed."""

    def __cinit__(self, *args, **kwargs):
        self.closed = True

    def _attach(self, runtime, ControlBlock control, Mapping mapping, uint64_t map_id,
                key_format, value_format, dict info):
        """Bind this handle to a validated mapping (called once by shmrcu.maps)."""
        cdef map_header* h = <map_header*>mapping.addr
        self.runtime = runtime
        self.control = control
        self.mapping = mapping
        self.id = map_id
        self.view.base = mapping.addr
        self.view.hdr = h
        self.view.ctl = control.hdr
        self.view.kind = h.kind
        self.view.key_size = h.key_size
        self.view.key_stride = h.key_stride
        self.view.value_size = h.value_size
        self.view.n_copies = h.n_copies
        self.view.max_entries = h.max_entries
        self.view.capacity = h.capacity
        self.view.mask = h.capacity - 1
        self.view.slots = mapping.addr + h.slots_offset
        self.view.slot_size = h.slot_size
        self.view.values = mapping.addr + h.values_offset
        self.view.value_stride = h.value_stride
        self.view.copy_stride = h.copy_stride
        self.view.is_hash = shmrcu_kind_is_hash(h.kind)
        lg = 0
        while self.view.is_hash and (<uint64_t>1 << lg) < h.capacity:
            lg += 1
        self.view.shift = 64 - lg            # hash capacities are powers of two >= 8
        self.view.writable = mapping.writable
        self.key_struct = key_format
        self.value_struct = value_format
        self.key_fields = key_format.nfields
        self.value_fields = value_format.nfields
        self.key_int = key_format.single_int
        self.key_signed = self.key_int and key_format.signed
        self.value_int = value_format.single_int
        self.value_signed = self.value_int and value_format.signed
        self.u64_offsets = value_format.u64_offsets
        self.info = info
        self.fast = (self.key_int and self.value_int and h.n_copies == 1
                     and h.kind != SHMRCU_MAP_ARRAY_OF_MAPS and h.kind != SHMRCU_MAP_HASH_OF_MAPS)
        self.inherited = False
        self.closed = False

    def _close_mapping(self):
        """Unmap (this process only).  The handle raises MapClosed afterwards."""
        self.inherited = False
        if self.closed:
            return
        self.closed = True
        self.fast = False
        memset(&self.view, 0, sizeof(map_view))
        if self.mapping is not None:
            self.mapping.close()
        self.mapping = None

    def _disown(self):
        """Forked child: the mapping is not ours (MADV_DONTFORK already dropped it).
        Closed without munmap; the next use re-maps it through the re-attached runtime."""
        self.closed = True
        self.inherited = True
        self.fast = False
        self.mapping = None
        self.control = None
        self.view.base = self.view.slots = self.view.values = NULL
        self.view.hdr = NULL
        self.view.ctl = NULL

    cdef int check(self, bint write) except -1:
        if self.closed:
            if self.inherited:
                self.runtime._rebind_inherited(self)    # re-maps, or raises why not
                return self.check(write)
            raise MapClosed(f"map {self.id} is closed in this process (freed, or its runtime closed)")
        # relaxed: the state is advisory for handles; the mapping itself stays
        # valid until this process unmaps it at a quiescent point (drop_freed)
        if shm_load_relaxed(&self.view.hdr.state) == <uint64_t>SHMRCU_MAP_FREED:
            raise MapClosed(f"map {self.id} was freed by the controller")
        if write and not self.view.writable:
            raise ReadOnlyMap(f"map {self.id} is worker_readonly: only the controller may write it")
        return 0

    cdef int copy_index(self) except -2:
        """The worker slot whose copy this process writes (-1: no reader here)."""
        cdef int idx
        r = self.runtime.current_reader
        if r is None:
            return -1
        idx = r.index
        if idx < 0 or <uint32_t>idx >= self.view.n_copies:
            raise ShmrcuError(f"reader slot {idx} has no copy in map {self.id}")
        return idx

    # -- conversions --------------------------------------------------------
    cdef object key_bytes(self, object key, uint64_t* small):
        """Packed key: into ``small`` (returns None) for int keys, else a bytes object."""
        if self.key_int:
            pack_int(key, self.key_signed, self.view.key_size, small)
            return None
        try:
            return self.key_struct.pack(key)
        except Exception as e:
            raise TypeError(f"key {key!r} does not match format {self.key_struct.text!r}: {e}") from None

    cdef object value_bytes(self, object value, uint64_t* small):
        if self.value_int:
            pack_int(value, self.value_signed, self.view.value_size, small)
            return None
        try:
            return self.value_struct.pack(value)
        except Exception as e:
            raise TypeError(f"value {value!r} does not match format {self.value_struct.text!r}: {e}") from None

    cdef object read_value(self, int64_t e, uint32_t copy):
        cdef const char* p = value_at(&self.view, <uint64_t>e, copy)
        if self.value_int:
            return unpack_int(p, self.value_signed, self.view.value_size)
        return self.value_struct.unpack(PyBytes_FromStringAndSize(p, self.view.value_size))

    cdef object read_sum(self, int64_t e):
        """Per-worker maps: the field-wise sum of every copy (integers wrap as C)."""
        cdef uint32_t c
        cdef uint64_t acc = 0
        if self.value_int and self.view.value_size == 8:
            for c in range(self.view.n_copies):
                acc += shm_load_relaxed(<uint64_t*>value_at(&self.view, <uint64_t>e, c))
            return <int64_t>acc if self.value_signed else acc
        if self.value_int:
            return sum(self.read_value(e, c) for c in range(self.view.n_copies))
        totals = [0] * self.value_fields
        for c in range(self.view.n_copies):
            for j, v in enumerate(self.read_value(e, c)):
                totals[j] += v
        return tuple(totals)

    cdef object read_key(self, uint64_t i):
        cdef const char* p
        if not self.view.is_hash:
            return i
        p = slot_at(&self.view, i) + SHMRCU_SLOT_HDR
        if self.key_int:
            return unpack_int(p, self.key_signed, self.view.key_size)
        return self.key_struct.unpack(PyBytes_FromStringAndSize(p, self.view.key_size))

    cdef int64_t entry_of(self, object key) except -1:
        """The entry index of ``key`` for a read, or the map's error for it."""
        cdef uint64_t small
        self.check(False)
        kb = self.key_bytes(key, &small)
        cdef int64_t e = mv_find(&self.view, buf_ptr(kb, &small))
        if e < 0:
            self.raise_rc(<int>e, key)
        return e

    cdef int raise_rc(self, int rc, object key) except -1:
        if rc == -ENOENT:
            raise KeyNotFound(key)
        if rc == -EEXIST:
            raise KeyExists(f"key {key!r} already exists in map {self.label()}")
        if rc == -E2BIG:
            if self.view.is_hash:
                raise MapFull(f"map {self.label()} is full: {self.view.max_entries} entries")
            raise IndexOutOfRange(f"index {key!r} out of range for map {self.label()} "
                                  f"of {self.view.max_entries} entries")
        if rc == -EAGAIN:
            raise MapFull(f"map {self.label()} has no free slot until deleted slots pass a grace "
                          f"period: call rt.synchronize() outside read-side sections")
        if rc == -EPERM:
            raise ReadOnlyMap(f"map {self.label()} is worker_readonly: only the controller may write it")
        if rc == -EINVAL:
            raise UnsupportedOperation(f"operation not supported on {self.label()} for key {key!r}")
        if rc == -EBUSY:
            raise ShmrcuError(f"insert of key {key!r} into map {self.label()} waited over 1 s on a "
                              "slot another writer claimed but never published (did a writer "
                              "process die mid-insert?); rebuild the map and swap it in",
                              errno=EBUSY)
        raise ShmrcuError(f"map {self.label()}: error {-rc} for key {key!r}", errno=-rc)

    cdef str label(self):
        n = self.info.get("name")
        return f"{n!r} (id {self.id})" if n else f"id {self.id}"

    # -- dict protocol --------------------------------------------------------
    def __getitem__(self, key):
        cdef uint64_t small
        cdef int64_t e
        cdef object kb
        if self.fast:
            # the hot path: one integer key, one integer value, one copy.  relaxed:
            # the state is advisory, as in check()
            if shm_load_relaxed(&self.view.hdr.state) != <uint64_t>SHMRCU_MAP_FREED:
                pack_int(key, self.key_signed, self.view.key_size, &small)
                e = mv_find(&self.view, &small)
                if e >= 0:
                    return unpack_int(value_at(&self.view, <uint64_t>e, 0), self.value_signed,
                                      self.view.value_size)
        self.check(False)
        kb = self.key_bytes(key, &small)
        e = mv_find(&self.view, buf_ptr(kb, &small))
        if e < 0:
            self.raise_rc(<int>e, key)
        if self.view.n_copies > 1:
            return self.read_sum(e)
        return self.read_value(e, 0)

    def lookup(self, key, Reader reader):
        """``m[key]`` inside a read-side section of its own on ``reader``: one call
        instead of ``with reader.section(): m[key]`` (same guarantees)."""
        cdef uint64_t small
        cdef int64_t e
        reader.check_usable()
        if self.fast:
            pack_int(key, self.key_signed, self.view.key_size, &small)   # may run Python code
            reader.enter()
            # inside the section: a free seen now cannot be unmapped under us (local grace)
            if self.closed or shm_load_relaxed(&self.view.hdr.state) == <uint64_t>SHMRCU_MAP_FREED:
                reader.exit()
                self.check(False)                  # MapClosed, with the reason
            e = mv_find(&self.view, &small)
            if e >= 0:
                v = unpack_int(value_at(&self.view, <uint64_t>e, 0), self.value_signed, self.view.value_size)
                reader.exit()
                return v
            reader.exit()
        reader.enter()
        try:
            return self[key]
        finally:
            reader.exit()

    def get(self, key, default=None):
        cdef uint64_t small
        cdef int64_t e
        cdef object kb
        self.check(False)
        kb = self.key_bytes(key, &small)
        e = mv_find(&self.view, buf_ptr(kb, &small))
        if e < 0:
            if e == -ENOENT:
                return default
            self.raise_rc(<int>e, key)
        if self.view.n_copies > 1:
            return self.read_sum(e)
        return self.read_value(e, 0)

    def __contains__(self, key):
        cdef uint64_t small
        cdef int64_t e
        cdef object kb
        self.check(False)
        try:
            kb = self.key_bytes(key, &small)
        except (TypeError, OverflowError):
            return False
        e = mv_find(&self.view, buf_ptr(kb, &small))
        return e >= 0

    def __setitem__(self, key, value):
        self.update(key, value, SHMRCU_ANY)

    def update(self, key, value, uint64_t flags=SHMRCU_ANY):
        """Set ``key`` to ``value`` with BPF ``flags``: ANY, NOEXIST (KeyExists if present),
        EXIST (KeyError if absent).  Per-worker maps: this process's reader's copy
        (without a reader -- the controller -- copy 0 gets ``value``, the others 0)."""
        cdef uint64_t ksmall, vsmall
        cdef object kb, vb
        cdef int rc
        cdef int copy = 0
        cdef uint32_t c
        cdef int64_t e
        self.check(True)
        if self.view.kind == SHMRCU_MAP_ARRAY_OF_MAPS or self.view.kind == SHMRCU_MAP_HASH_OF_MAPS:
            raise TypeError("outer maps take map objects: use outer[key] = inner_map")
        if self.view.n_copies > 1:
            copy = self.copy_index()
        kb = self.key_bytes(key, &ksmall)
        vb = self.value_bytes(value, &vsmall)
        rc = self.run_update(buf_ptr(kb, &ksmall),
                             buf_ptr(vb, &vsmall), flags, copy if copy >= 0 else 0)
        if rc < 0:
            self.raise_rc(rc, key)
        if copy < 0:                  # controller write of a per-worker map: the sum is `value`
            e = mv_find(&self.view, buf_ptr(kb, &ksmall))
            if e >= 0:
                for c in range(1, self.view.n_copies):
                    memset(value_at(&self.view, <uint64_t>e, c), 0, self.view.value_size)

    cdef int run_update(self, const void* key, const void* value, uint64_t flags, uint32_t copy) except? -1:
        """mv_update, plus one grace period and a retry when only waiting tombstones are left."""
        cdef int rc = mv_update(&self.view, key, value, flags, copy)
        if rc == -EAGAIN and self.may_synchronize():
            self.runtime.synchronize()
            rc = mv_update(&self.view, key, value, flags, copy)
        return rc

    def may_synchronize(self):
        """True when the calling thread holds no reader online or in a section: a
        synchronize would wait for itself, or (QSBR) end a batch that still holds this map."""
        return not _thread_online()

    def __delitem__(self, key):
        cdef uint64_t small
        cdef object kb
        cdef int rc
        self.check(True)
        kb = self.key_bytes(key, &small)
        rc = mv_delete(&self.view, buf_ptr(kb, &small))
        if rc < 0:
            self.raise_rc(rc, key)
        if self.view.is_hash:
            advance_epoch(&self.view)

    def add(self, key, delta=1):
        """Atomically add ``delta`` to ``key``'s u64 field(s) and return the new value.

        ``delta`` is an int for a single-field value, else a tuple with one delta per
        field (0 for fields that are not u64).  A missing hash key is inserted as 0
        first.  Per-worker maps add to this process's reader's copy (owner-only)."""
        cdef uint64_t ksmall, res = 0, d
        cdef object kb
        cdef int rc
        cdef int copy = 0
        cdef int64_t e
        cdef bint created
        self.check(True)
        if self.view.n_copies > 1:
            copy = self.copy_index()
            if copy < 0:
                raise ShmrcuError(f"map {self.label()} is per-worker: add() needs a registered "
                                  f"reader in this process (rt.reader())")
        kb = self.key_bytes(key, &ksmall)
        offsets = self.u64_offsets
        if self.value_fields == 1:
            deltas = (delta,)
        else:
            deltas = tuple(delta)
            if len(deltas) != self.value_fields:
                raise ValueError(f"add() needs {self.value_fields} deltas for value format "
                                 f"{self.value_struct.text!r}, got {len(deltas)}")
        for j in range(self.value_fields):
            if offsets[j] < 0 and deltas[j]:
                raise UnsupportedOperation(f"field {j} of value format {self.value_struct.text!r} "
                                           f"is not a u64: add() needs 'Q' or 'q' fields")
        if self.value_fields == 1:
            d = <uint64_t>(<int64_t>delta) if delta < 0 else <uint64_t>delta
            rc = mv_add_u64(&self.view, buf_ptr(kb, &ksmall), offsets[0], d, copy, &res)
            if rc == -EAGAIN and self.may_synchronize():
                self.runtime.synchronize()
                rc = mv_add_u64(&self.view, buf_ptr(kb, &ksmall), offsets[0], d, copy, &res)
            if rc < 0:
                self.raise_rc(rc, key)
        else:
            # one upsert, then every field into that entry: a delete between two fields
            # must not make the second field re-insert the key as (0, delta)
            if self.view.kind == SHMRCU_MAP_ARRAY_OF_MAPS or self.view.kind == SHMRCU_MAP_HASH_OF_MAPS:
                self.raise_rc(-EINVAL, key)
            e = mv_upsert(&self.view, buf_ptr(kb, &ksmall), NULL, copy, &created)
            if e == -EAGAIN and self.may_synchronize():
                self.runtime.synchronize()
                e = mv_upsert(&self.view, buf_ptr(kb, &ksmall), NULL, copy, &created)
            if e < 0:
                self.raise_rc(<int>e, key)
            for j in range(self.value_fields):
                dj = deltas[j]
                if offsets[j] < 0 or not dj:
                    continue
                d = <uint64_t>(<int64_t>dj) if dj < 0 else <uint64_t>dj
                add_at(&self.view, e, copy, offsets[j], d)
        e = mv_find(&self.view, buf_ptr(kb, &ksmall))
        if e < 0:
            return None               # deleted concurrently
        return self.read_value(e, copy)

    def __len__(self):
        self.check(False)
        if self.view.is_hash:
            # relaxed: a snapshot; concurrent inserts may be counted a moment early
            return min(shm_load_relaxed(&self.view.hdr.count), self.view.max_entries)
        if self.view.kind == SHMRCU_MAP_ARRAY_OF_MAPS:
            return len(self._entries())
        return self.view.max_entries

    def _entries(self):
        """Indices of present entries (hash slots that are LIVE; set outer-array slots)."""
        cdef uint64_t i
        cdef list out = []
        self.check(False)
        if self.view.is_hash:
            for i in range(self.view.capacity):
                # acquire: as in lookups
                if (shm_load_acquire(<uint64_t*>slot_at(&self.view, i)) & STATE_MASK) == S_LIVE:
                    out.append(i)
        elif self.view.kind == SHMRCU_MAP_ARRAY_OF_MAPS:
            for i in range(self.view.capacity):
                # acquire: pairs with the exchange that stored the id
                if shm_load_acquire(<uint64_t*>value_at(&self.view, i, 0)) != 0:
                    out.append(i)
        else:
            out = list(range(self.view.capacity))
        return out

    def keys(self):
        """A snapshot list of the keys."""
        return [self.read_key(i) for i in self._entries()]

    def values(self):
        return [v for _, v in self.items()]

    def items(self):
        """A snapshot list of (key, value) pairs."""
        cdef uint64_t i
        out = []
        for i in self._entries():
            if self.view.n_copies > 1:
                v = self.read_sum(i)
            else:
                v = self.read_value(i, 0)
            out.append((self.read_key(i), v))
        return out

    def __iter__(self):
        return iter(self.keys())

    def clear(self):
        """Delete every key (arrays: zero every value)."""
        cdef uint64_t i
        cdef uint32_t c
        self.check(True)
        if self.view.is_hash:
            for i in self._entries():
                p = PyBytes_FromStringAndSize(slot_at(&self.view, i) + SHMRCU_SLOT_HDR, self.view.key_size)
                mv_delete(&self.view, <const char*>p)
            advance_epoch(&self.view)
        elif self.view.kind == SHMRCU_MAP_ARRAY_OF_MAPS:
            for i in self._entries():
                self._swap_index(i, 0)
        else:
            for c in range(self.view.n_copies):
                memset(value_at(&self.view, 0, c), 0, self.view.copy_stride)

    def per_worker(self, key):
        """Per-worker maps: the list of every worker slot's copy of ``key``'s value."""
        cdef int64_t e = self.entry_of(key)
        return [self.read_value(e, c) for c in range(self.view.n_copies)]

    def _test_abandon_insert(self, key):
        """TEST ONLY: claim a slot for ``key``, write it, mark it PENDING and stop
        there -- what a writer killed in the middle of an insert leaves behind."""
        cdef uint64_t small, h, ctl = 0
        cdef int64_t mine
        self.check(True)
        if not self.view.is_hash:
            raise UnsupportedOperation("only hash maps have inserts to abandon")
        kb = self.key_bytes(key, &small)
        h = hash_bytes(buf_ptr(kb, &small), self.view.key_size)
        # relaxed: a real insert reserves its place in the live count first
        shm_fetch_add_relaxed(&self.view.hdr.count, 1)
        mine = claim_slot(&self.view, home_of(&self.view, h), tag_of(h),
                          shm_load_acquire(&self.view.ctl.completed_epoch), &ctl)
        if mine < 0:
            raise MapFull("no slot to abandon")
        memcpy(slot_at(&self.view, <uint64_t>mine) + SHMRCU_SLOT_HDR, buf_ptr(kb, &small),
               self.view.key_size)
        # seq_cst: as hash_insert's PENDING store
        shm_store_seq_cst(<uint64_t*>slot_at(&self.view, <uint64_t>mine),
                          (ctl & ~STATE_MASK) | S_PENDING)
        return mine

    # -- outer maps: inner ids ------------------------------------------------
    def _lookup_id(self, key):
        """The inner map id at ``key`` (KeyError if empty)."""
        cdef int64_t e = self.entry_of(key)
        # acquire: pairs with the exchange that stored the id
        return shm_load_acquire(<uint64_t*>value_at(&self.view, <uint64_t>e, 0))

    def _swap_id(self, key, uint64_t new_id, uint64_t flags=SHMRCU_ANY):
        """Store ``new_id`` at ``key`` with one atomic exchange; returns the old id (0: none).
        ``new_id == 0`` deletes."""
        cdef uint64_t small, old = 0
        cdef object kb
        cdef int rc
        self.check(True)
        kb = self.key_bytes(key, &small)
        if new_id == 0:
            rc = mv_swap_id(&self.view, buf_ptr(kb, &small), 0,
                            SHMRCU_EXIST, &old)
            if rc == 0 and self.view.is_hash:
                advance_epoch(&self.view)
        else:
            rc = mv_swap_id(&self.view, buf_ptr(kb, &small), new_id, flags, &old)
            if rc == -EAGAIN and self.may_synchronize():
                self.runtime.synchronize()
                rc = mv_swap_id(&self.view, buf_ptr(kb, &small), new_id, flags, &old)
        if rc < 0:
            self.raise_rc(rc, key)
        return old

    def _swap_index(self, uint64_t i, uint64_t new_id):
        # seq_cst exchange: as in mv_swap_id
        return shm_xchg_seq_cst(<uint64_t*>value_at(&self.view, i, 0), new_id)

    def _ids(self):
        """Every inner id referenced by this outer map (for the controller's checks)."""
        cdef uint64_t i
        out = []
        for i in self._entries():
            # acquire: as in _lookup_id
            v = shm_load_acquire(<uint64_t*>value_at(&self.view, i, 0))
            if v:
                out.append(v)
        return out

    # -- batches ----------------------------------------------------------------
    def lookup_batch(self, keys, out=None, *, int threads=1):
        """Look up every key of the buffer ``keys`` (packed keys, e.g. a numpy array whose
        itemsize is the key size) without the GIL; values go to ``out`` (allocated when
        None: a numpy array for one-integer values if numpy is there, else a bytearray).
        Returns ``out``.  Stops at the first missing key: the error has ``.count``, the
        number of keys looked up before it.  ``threads > 1`` splits a large batch
        (>= 16384 keys per thread) over that many threads, all inside the caller's
        read-side section."""
        cdef const uint8_t[::1] kv
        cdef uint8_t[::1] ov
        cdef Py_ssize_t n, done
        cdef int rc = 0
        cdef uint32_t osize
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

    def update_batch(self, keys, values, uint64_t flags=SHMRCU_ANY):
        """Set every key of ``keys`` to the matching packed value of ``values`` (buffers),
        without the GIL.  Returns the count; stops at the first error (``.count``)."""
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
                                     <const char*>&vv[done * self.view.value_size], n - done, flags,
                                     <uint32_t>copy, &rc)
        if rc < 0:
            self.batch_error(rc, kv, done)
        return n

    def delete_batch(self, keys):
        """Delete every key of the buffer ``keys`` without the GIL.  Returns the count;
        stops at the first error (``.count``)."""
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

    # -- facts ------------------------------------------------------------------
    @property
    def kind_code(self):
        return self.view.kind

    @property
    def max_entries(self):
        return self.view.max_entries

    @property
    def capacity(self):
        return self.view.capacity

    @property
    def n_copies(self):
        return self.view.n_copies

    @property
    def writable(self):
        return (not self.closed) and self.view.writable

    @property
    def key_format(self):
        return self.key_struct.text

    @property
    def value_format(self):
        return self.value_struct.text

    @property
    def state_code(self):
        if self.closed and self.inherited:
            self.check(False)
        if self.closed:
            return SHMRCU_MAP_FREED
        # acquire: pairs with the controller's release store of the state
        return shm_load_acquire(&self.view.hdr.state)

    def _set_state(self, uint64_t state):
        """Controller hook: move the map to LIVE / RETIRED / FREED (recording the epoch)."""
        if self.closed:
            raise MapClosed(f"map {self.id} is closed in this process")
        if state < <uint64_t>SHMRCU_MAP_LIVE or state > <uint64_t>SHMRCU_MAP_FREED:
            raise ValueError(f"unknown map state {state}")
        if not self.view.writable:
            raise ReadOnlyMap(f"map {self.id} is mapped read-only here")
        # relaxed: the epoch is informational, published by the release store below
        shm_store_relaxed(&self.view.hdr.state_epoch, shm_load_acquire(&self.view.ctl.global_epoch))
        # release: a handle that acquire-loads the new state sees the epoch too
        shm_store_release(&self.view.hdr.state, state)

    def stats(self):
        """Slot census: live, tombstones (waiting / reusable), empty, in-flight inserts."""
        cdef uint64_t i, ctl, st, live = 0, waiting = 0, reusable = 0, empty = 0, busy = 0
        cdef uint64_t completed
        self.check(False)
        if not self.view.is_hash:
            return {"capacity": self.view.capacity, "live": len(self)}
        # acquire: as in hash_insert
        completed = shm_load_acquire(&self.view.ctl.completed_epoch)
        for i in range(self.view.capacity):
            # acquire: as in lookups
            ctl = shm_load_acquire(<uint64_t*>slot_at(&self.view, i))
            st = ctl & STATE_MASK
            if st == S_LIVE:
                live += 1
            elif st == S_EMPTY:
                empty += 1
            elif st == S_TOMB:
                if shm_load_relaxed(<uint64_t*>(slot_at(&self.view, i) + 8)) > completed:
                    waiting += 1
                else:
                    reusable += 1
            else:
                busy += 1
        return {"capacity": self.view.capacity, "live": live, "empty": empty,
                "tombstones_waiting": waiting, "tombstones_reusable": reusable, "in_flight": busy}
