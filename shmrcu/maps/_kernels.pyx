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

Whole values
------------
A value of at most 8 bytes is one padded word, stored and loaded as one: it is
always seen whole.  A longer value of a hash map (and of an array created with
``whole_values=True``, the counterpart of BPF_F_LOCK) lives in a *cell*:
``[word][buffer 0][buffer 1]`` with ``word = version << 32 | writer id``; the
value is buffer ``version & 1`` (layout in _maplayout.h).  A writer id is one
attached process's (a counter in the control header, never reused: no pid).

* A writer claims the cell: CAS the word from ``(v, 0)`` to ``(v, its id)``.
  It writes the new value into the *other* buffer, ``(v + 1) & 1``, which no
  reader is reading as current, and publishes with a CAS to ``(v + 1, 0)``
  (release: the buffer is complete before anyone sees the new version).  Writers
  of one cell are serialized by the claim; an update of a hash key re-checks,
  once it holds the claim, that the slot still holds the key it found (the
  generation in ``ctl``), else it lets go and starts over.
* A reader never waits for a writer: it loads the word (acquire), copies the
  current buffer, fences (acquire) and re-loads the word.  The copy is whole
  unless a writer can have written that buffer meanwhile, i.e. unless the
  version moved twice, or once with a next writer already claiming
  (``cell_copy_whole``); then it copies again.  Readers never write, so they
  need no lock and take none (lock-free, not wait-free: a stream of updates to
  one large value can make a reader copy several times).
* A writer that dies holding the claim leaves ``(v, its id)``: buffer ``v & 1``
  is untouched, so readers keep copying the old value, whole.  The next writer,
  seeing the claim held, asks whether that id's *writer mark* is held -- an OFD
  lock byte on the control segment that the attached process holds and the
  kernel drops at its death (_layout.h) -- and if it is not, takes the claim
  over with a CAS: the key stays updatable.  A probe that fails counts as
  "alive": a wrong "dead" would let two writers into one buffer.  A live
  writer that holds a claim over 1 s makes other writers give up with -EBUSY
  (a stopped process, say).  A writer that lets a claim go without publishing
  (its key was deleted meanwhile) moves the version on by two: the current
  buffer stays, and readers that overlapped a dead writer's half write to the
  spare buffer copy again.
* Versions are 32 bits: a reader would have to stall inside one copy for 2^32
  updates of that one value to be fooled.
* ``add`` adds in place to the current buffer with an atomic fetch-add per u64
  field: each field's add is atomic; a multi-field add is one add per field, so
  a reader may see some of its fields added and not yet the others.  An add that
  races with an update of the same key lands in the buffer that update replaces
  (as if it came before it) or in the one it is filling (after it, if the
  update's copy of that field came first; the add's return value may then show
  the update's value before it is published).
* ``mv_value`` returns the current buffer: a program may use the pointer for a
  batch while nobody updates the key; ``mv_read`` copies a whole value out.

Arrays without ``whole_values`` keep their values in place, as BPF arrays do: a
multi-field value may be seen half-written.

Where the code is: the read side (hashing, the probe loop ``hash_find``, ``mv_find``,
``mv_value``) is ``cdef inline`` in ``_kernels.pxd`` so that it inlines into every module that
cimports it (``MapCore`` in ``_maps.pyx``, the built-in programs); the write side (slot claim,
insert, delete, the reader poll, the cell writer) is below; the batch loops are in ``_batch.pyx``.
"""
cimport cython
from libc.errno cimport ENOENT, EEXIST, E2BIG, EINVAL, EPERM, EAGAIN, EINTR, EBUSY
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy, memcmp, memset

from shmrcu.core._layout cimport (control_header, worker_slot, SHMRCU_SECTIONS_MEMBARRIER,
                             SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED, shm_membarrier, shm_load_acquire, shm_load_relaxed, shm_load_seq_cst,
                             shm_store_release, shm_store_relaxed, shm_store_seq_cst, shm_xchg_seq_cst,
                             shm_fetch_add_relaxed, shm_cas_acq_rel, shm_cas_seq_cst, shm_cpu_relax,
                             shm_fence_release, shm_compiler_barrier, shm_ofd_held,
                             SHMRCU_LOCK_WRITER_BASE,
                             shm_fence_seq_cst, shm_monotonic_ns)
from shmrcu.maps._maplayout cimport *
from shmrcu.core._epoch cimport updater_membarrier

cdef extern from "<sched.h>" nogil:
    int sched_yield()



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
# whole-value cells (the protocol is in the essay above)

cdef bint _torn_writes = False

def _set_torn_writes(bint torn):
    """TEST ONLY: write multi-field values in place, field by field, without the
    cell protocol, so the whole-value tests can show they catch torn reads."""
    global _torn_writes
    _torn_writes = torn

cdef void torn_write(char* buf, const void* src, uint32_t n) noexcept nogil:
    """TEST ONLY: the unprotected write -- one 8-byte field at a time, in place."""
    cdef uint32_t j = 0
    cdef uint64_t w = 0
    while j < n:
        if src != NULL:
            memcpy(&w, <const char*>src + j, min(8, n - j))
        # relaxed: each field on its own, which is exactly what readers must not see
        shm_store_relaxed(<uint64_t*>(buf + j), w)
        shm_compiler_barrier()
        j += 8

cdef inline bint claim_cell(map_view* m, char* cell, uint64_t* word) noexcept nogil:
    """Try once to claim a cell whose word we loaded as ``word[0]`` (free, or held
    by a dead writer); on failure ``word[0]`` is the fresh word."""
    cdef uint64_t w = word[0]
    cdef uint64_t mine = (w & 0xffffffff00000000ULL) | m.writer_id
    # acq_rel CAS: makes the cell ours, and orders our writes after the previous
    # writer's (whose publish we acquire)
    if shm_cas_acq_rel(<uint64_t*>cell, w, mine):
        word[0] = mine
        return True
    # acquire: as any load of the word
    word[0] = shm_load_acquire(<uint64_t*>cell)
    return False

cdef bint owner_gone(map_view* m, uint32_t owner) noexcept nogil:
    """Is the writer ``owner`` that holds a claim gone (slow path only)?  Its writer
    mark tells (_layout.h): a writer id is one attached process's, never reused."""
    cdef int r
    if owner == m.writer_id:
        return False              # a thread of this very process is writing
    r = shm_ofd_held(m.probe_fd, SHMRCU_LOCK_WRITER_BASE + <int64_t>owner)
    return r == 0                 # held, or the probe failed: alive (never guess "dead")

cdef int cell_write(map_view* m, char* cell, const void* src, const uint64_t* slot,
                    uint64_t seen) noexcept nogil:
    """Write a whole value (``src`` NULL: zeros) into a cell.  ``slot``/``seen``: the
    hash slot's ctl as the caller found it LIVE (re-checked once we hold the claim;
    RETRY if it changed), or NULL.  0, RETRY, or -EBUSY."""
    if m.writer_id == 0:
        return -EBUSY             # a view without a writer id (never bound to a runtime)
    return cell_write_claimed(m, cell, src, slot, seen)

cdef int cell_write_claimed(map_view* m, char* cell, const void* src, const uint64_t* slot,
                            uint64_t seen) noexcept nogil:
    cdef uint64_t w, done
    cdef uint32_t owner, last_owner = 0, spins = 0
    cdef uint64_t since = 0
    cdef char* buf
    if _torn_writes:                  # test switch: in place, field by field, no protocol
        torn_write(cell_buffer(m, cell, shm_load_acquire(<uint64_t*>cell)), src, m.value_size)
        return 0
    # acquire: the previous writer's publish (and its buffer) are visible to us
    w = shm_load_acquire(<uint64_t*>cell)
    while True:
        owner = <uint32_t>w
        if owner == 0 or (spins >= 128 and spins & 63 == 0 and owner_gone(m, owner)):
            if claim_cell(m, cell, &w):
                break
            continue
        if owner != last_owner:       # a new writer holds it: the stall clock starts over
            last_owner = owner
            spins = 0
            since = 0
        if backoff(&spins, &since):
            if owner_gone(m, owner) and claim_cell(m, cell, &w):
                break
            return -EBUSY
        # acquire: as above
        w = shm_load_acquire(<uint64_t*>cell)
    # release fence: the claim is visible before any of our buffer stores (a reader
    # that copies a half-written buffer then sees the claim in its re-check)
    shm_fence_release()
    # acquire: the slot still holds the key we found (else a delete, and maybe a new
    # insert, happened since: let go and let the caller look again)
    if slot != NULL and shm_load_acquire(slot) != seen:
        # Give the claim back at version + 2: the current buffer stays the same, but a
        # claim we took over from a dead writer may have left half a value in the spare
        # buffer, which a reader that started before (at version - 1) may be copying --
        # its re-check must not see "one version later, no writer".  seq_cst CAS: as
        # the publish below.
        if shm_cas_seq_cst(<uint64_t*>cell, w, ((w >> 32) + 2) << 32):
            return RETRY
        return -EBUSY
    buf = cell + SHMRCU_CELL_HDR + (((w >> 32) + 1) & 1) * m.buf_stride
    if src == NULL:
        memset(buf, 0, m.value_size)
    else:
        memcpy(buf, src, m.value_size)
    done = ((w >> 32) + 1) << 32
    # release CAS: the new buffer is complete before a reader sees the new version;
    # a CAS (not a store) because a claim can only be lost to a writer who judged
    # us dead, and then we must not publish over it
    if shm_cas_seq_cst(<uint64_t*>cell, w, done):
        return 0
    return -EBUSY

cdef int mv_write_at(map_view* m, uint64_t e, uint32_t copy, const void* value) noexcept nogil:
    cdef char* cell = value_at(m, e, copy)
    cdef uint64_t zero = 0
    if m.cells:
        return cell_write(m, cell, value, NULL, 0)
    if value == NULL:
        if m.value_size <= 8:
            write_value(cell, &zero, m.value_size)
        else:
            memset(cell, 0, m.value_size)
    else:
        write_value(cell, value, m.value_size)
    return 0


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
        # cells: through the protocol even here -- a writer that found this slot's
        # previous key may still hold a claim on the cell
        if mv_write_at(m, <uint64_t>mine, c, init if (init != NULL and c == copy) else NULL) < 0:
            return give_up_insert(m, s, mine_ctl)
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
    cdef int r
    cdef uint64_t h, old, seen = 0
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
        return mv_write_at(m, <uint64_t>e, copy, value)
    h = hash_bytes(<const char*>key, m.key_size)
    while True:
        # the slot's ctl as found matters only to a cell write (its re-check)
        e = hash_find(m, <const char*>key, h, &seen if m.cells else NULL)
        if e >= 0:
            if flags == <uint64_t>SHMRCU_NOEXIST:
                return -EEXIST
            if not m.cells:
                write_value(value_at(m, <uint64_t>e, copy), value, m.value_size)
                return 0
            r = cell_write(m, value_at(m, <uint64_t>e, copy), value,
                           <uint64_t*>slot_at(m, <uint64_t>e), seen)
            if r != RETRY:
                return r
            continue                  # the key was deleted (maybe re-inserted) meanwhile
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
