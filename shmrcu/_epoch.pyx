# cython: language_level=3
"""Epoch-based RCU across processes, in one shared-memory control segment.

The problem
-----------
A controller process replaces a pointer (an inner map id in an outer map)
while reader processes may still be using what the old pointer named.  Before
the controller may clear, reuse or free the old object it must know that every
reader that could have seen the old pointer has finished with it.  That wait
is a *grace period*.

The epoch
---------
The control segment holds one 64-bit ``global_epoch`` (it starts at 1 and only
grows; 2^64 increments never happen) and one ``worker_slot`` per registered
reader.  A slot's epoch word ``ctr`` says what the reader may hold:

* ``ctr == 0``: offline, or outside any read-side section: it holds nothing;
* ``ctr == e > 0``: online; it may hold references it took since it last
  observed the global epoch to be ``e``.

Readers
-------
Two styles share the slots.  *QSBR* readers (pool workers) stay online and,
between batches, copy the global epoch into ``ctr``: a load and, only when the
epoch moved, a store -- nothing inside the batch.  *Section* readers (any
process) store the global epoch into ``ctr`` when they enter the outermost
section and store 0 when they leave it.  Going online (or entering) must
order the store of ``ctr`` before the reader's first load of protected data --
store->load order, which only a full fence gives (we use a seq_cst ``xchg``).
In *membarrier* mode the reader skips that fence and the updater forces one on
every CPU running a registered process with ``membarrier(GLOBAL_EXPEDITED)``.

Grace periods
-------------
``synchronize`` fences, loads the epoch ``e0``, advances it to ``e0 + 1`` (a
CAS that may lose to a concurrent updater -- any advance after our fenced load
serves us just as well) and waits until every slot is ``0`` or ``>= e0 + 1``.  Why this is
enough: the updater unpublished the old pointer before the seq_cst advance.  A
reader whose ``ctr >= e0 + 1`` loaded that epoch with acquire, so it loads the
new pointer.  A reader that was offline when the updater looked is ordered by
the Dekker pair (reader: store ctr, fence, load pointer; updater: store
pointer, fence, load ctr): at least one sees the other's store, and it was not
the updater, so the reader sees the new pointer.  A reader at an older epoch
may still hold the old pointer and is waited for.

Callers share grace periods: ``completed_epoch`` records the highest target
known to have elapsed, so a caller whose target is covered returns at once, and
two concurrent callers advancing the epoch wait for one scan, not two.  Tokens
(``start_grace_period`` / ``poll_grace_period``) expose the same targets
without blocking, like DPDK's rte_rcu_qsbr_start/check.

Dead and stuck readers
----------------------
A reader is a process that can die inside a section.  Each slot's owner holds
an OFD byte-range lock on the control segment's file (byte = slot index);
the kernel drops it when the owner dies, whatever the signal, and a reused PID
cannot forge it.  A waiter that finds a slot lagging for a while probes the
lock; a dead owner's slot is reclaimed (ctr = 0, state FREE) and no longer
waited for.  A live but stuck reader makes ``synchronize(timeout=...)`` raise
``GracePeriodTimeout`` naming the slot, pid, epoch lag and time stalled.

Waiting spins briefly (a busy reader on the other core advances within
microseconds), then sleeps on a futex in the control segment with
growing timeouts capped at 1 ms, so a stalled reader never makes the waiter
burn a core.  A QSBR reader whose epoch advances while someone sleeps bumps
the futex and wakes them (once per grace period: the common path of
``quiescent`` stays two loads), so a waiter on a long batch wakes when the
batch ends, not at its next timeout.

Every atomic below carries a one-line reason for its memory order.
"""
cimport cython
from libc.stdint cimport uint32_t, int32_t, uint64_t, int64_t
from libc.string cimport memset, strncpy
from posix.unistd cimport getpid
from shmrcu._layout cimport *
from shmrcu._segment cimport Mapping

import os
import time

from .errors import CorruptSegment, GracePeriodTimeout, NoFreeSlot, ReaderClosed, StalledSlot

# ---- layout facts exported to Python (single source: _layout.h) ------------
LAYOUT = {
    "magic": SHMRCU_MAGIC,
    "version": SHMRCU_LAYOUT_VERSION,
    "header_size": sizeof(control_header),
    "slot_size": sizeof(worker_slot),
    "cache_line": SHMRCU_CACHE_LINE,
    "name_max": SHMRCU_NAME_MAX,
    "gp_recent": SHMRCU_GP_RECENT,
    "lock_controller": SHMRCU_LOCK_CONTROLLER,
}
SECTIONS_FENCE = SHMRCU_SECTIONS_FENCE
SECTIONS_MEMBARRIER = SHMRCU_SECTIONS_MEMBARRIER

cdef uint64_t STATUS_MASK = 0xff
cdef uint64_t GENERATION_STEP = 0x100
cdef inline uint64_t slot_status(uint64_t state) noexcept nogil:
    return state & STATUS_MASK
cdef inline uint64_t next_free_state(uint64_t state) noexcept nogil:
    return (state & ~STATUS_MASK) + GENERATION_STEP + SHMRCU_SLOT_FREE

# Test-only: a synchronize that does not wait.  The torture test flips it in
# the controller process to prove that it detects a broken grace period.
cdef bint _skip_wait = False

def _set_broken_synchronize(bint broken):
    """TEST ONLY: make synchronize() return without waiting for readers."""
    global _skip_wait
    _skip_wait = broken

# membarrier: registration is per process and happens once.
cdef int _membarrier_state = 0   # 0 unknown, 1 registered, -1 unavailable

def membarrier_register():
    """Register this process for GLOBAL_EXPEDITED membarriers; False if unavailable."""
    global _membarrier_state
    if _membarrier_state == 0:
        r = shm_membarrier(SHM_MEMBARRIER_CMD_QUERY)
        if r > 0 and (r & SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED) and \
                shm_membarrier(SHM_MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0:
            _membarrier_state = 1
        else:
            _membarrier_state = -1
    return _membarrier_state == 1

def kernel_synchronize_rcu():
    """membarrier(MEMBARRIER_CMD_GLOBAL): the kernel's own grace period (benchmarks)."""
    cdef int r
    with nogil:
        r = shm_membarrier(SHM_MEMBARRIER_CMD_GLOBAL)
    if r < 0:
        raise OSError(-r, "membarrier(MEMBARRIER_CMD_GLOBAL) failed: " + os.strerror(-r))

# Adaptive waiting: spin, then sleep on the futex 20us doubling to 1ms.  No
# sched_yield phase: on a box whose cores are all busy with pinned workers, a
# yield gives the CPU away for a whole scheduler slice (milliseconds).
cdef int SPIN_ROUNDS = 500
cdef uint64_t NAP_MIN_NS = 20000
cdef uint64_t NAP_MAX_NS = 1000000
# A lagging slot's owner is probed for death after this long, then this often.
cdef uint64_t DEAD_PROBE_NS = 1000000


cdef class ControlBlock:
    """The control segment of one runtime, as seen by this process."""

    def __cinit__(self, Mapping mapping, int check_fd):
        self.mapping = mapping
        self.hdr = <control_header*>mapping.addr
        self.slots = NULL
        self.check_fd = check_fd

    # -- creation and validation -------------------------------------------
    @staticmethod
    def segment_size(int max_workers):
        cdef size_t raw = sizeof(control_header) + <size_t>max_workers * sizeof(worker_slot)
        page = 4096
        return (raw + page - 1) // page * page

    def initialize(self, str name, int max_workers, int sections_mode, int mode):
        """Write a fresh header (creator only); the magic goes last."""
        cdef control_header* h = self.hdr
        memset(h, 0, self.mapping.size)
        h.layout_version = SHMRCU_LAYOUT_VERSION
        h.header_size = sizeof(control_header)
        h.total_size = self.mapping.size
        h.max_workers = max_workers
        h.slot_size = sizeof(worker_slot)
        h.slots_offset = sizeof(control_header)
        h.sections_mode = sections_mode
        h.creator_pid = getpid()
        h.mode = mode
        h.created_unix_ns = time.time_ns()
        raw = name.encode()
        strncpy(h.name, raw, SHMRCU_NAME_MAX)
        h.global_epoch = 1
        h.completed_epoch = 0
        h.next_map_id = 1
        # release: attachers that see the magic see the whole header above
        shm_store_release(&h.magic, SHMRCU_MAGIC)
        self.slots = <worker_slot*>(<char*>h + h.slots_offset)

    def validate(self, str expected_name, double wait_s=1.0):
        """Check the header against the real segment; raise CorruptSegment."""
        cdef control_header* h = self.hdr
        cdef size_t real = self.mapping.size
        where = f"control segment of runtime {expected_name!r}"
        if real < sizeof(control_header):
            raise CorruptSegment(f"{where} is truncated: {real} bytes, the header alone needs "
                                 f"{sizeof(control_header)}")
        deadline = time.monotonic() + wait_s
        # acquire: pairs with the creator's release of the magic
        while shm_load_acquire(&h.magic) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)   # a creator may still be writing the header
        magic = shm_load_acquire(&h.magic)
        if magic != SHMRCU_MAGIC:
            raise CorruptSegment(f"{where} has bad magic {magic:#018x} (expected {SHMRCU_MAGIC:#018x}): "
                                 "not a shmrcu segment, or overwritten")
        if h.layout_version != SHMRCU_LAYOUT_VERSION:
            raise CorruptSegment(f"{where} has layout version {h.layout_version}, this shmrcu "
                                 f"speaks {SHMRCU_LAYOUT_VERSION}: use a matching shmrcu version")
        if h.header_size != sizeof(control_header) or h.slot_size != sizeof(worker_slot) \
                or h.slots_offset != sizeof(control_header):
            raise CorruptSegment(f"{where} has header/slot sizes {h.header_size}/{h.slot_size}/"
                                 f"{h.slots_offset}, expected {sizeof(control_header)}/"
                                 f"{sizeof(worker_slot)}/{sizeof(control_header)}")
        if h.total_size != real:
            raise CorruptSegment(f"{where} says it is {h.total_size} bytes but is {real} "
                                 "(truncated or resized)")
        if h.max_workers < 1 or h.slots_offset + <size_t>h.max_workers * h.slot_size > real:
            raise CorruptSegment(f"{where} claims {h.max_workers} worker slots, which do not fit "
                                 f"in {real} bytes")
        if h.sections_mode not in (SHMRCU_SECTIONS_FENCE, SHMRCU_SECTIONS_MEMBARRIER):
            raise CorruptSegment(f"{where} has unknown sections mode {h.sections_mode}")
        stored = (<bytes>h.name).decode(errors="replace")
        if stored != expected_name:
            raise CorruptSegment(f"{where} records the name {stored!r}")
        self.slots = <worker_slot*>(<char*>h + h.slots_offset)

    # -- header facts ---------------------------------------------------------
    @property
    def max_workers(self):
        return self.hdr.max_workers

    @property
    def sections_mode(self):
        return self.hdr.sections_mode

    @property
    def mode(self):
        return self.hdr.mode

    @property
    def creator_pid(self):
        return self.hdr.creator_pid

    @property
    def global_epoch(self):
        # acquire: callers compare it with slot epochs they load afterwards
        return shm_load_acquire(&self.hdr.global_epoch)

    @property
    def completed_epoch(self):
        # acquire: a caller that sees a target completed may free what it retired
        return shm_load_acquire(&self.hdr.completed_epoch)

    def allocate_map_id(self):
        """A fresh map id: ids grow and are never reused."""
        # relaxed: uniqueness needs only atomicity; nothing is published by it
        return shm_fetch_add_relaxed(&self.hdr.next_map_id, 1)

    def bump_freed_generation(self):
        # release: readers that see the new generation see the map states written before
        return shm_fetch_add_seq_cst(&self.hdr.freed_generation, 1) + 1

    @property
    def freed_generation(self):
        # acquire: pairs with bump_freed_generation
        return shm_load_acquire(&self.hdr.freed_generation)

    def stats(self):
        cdef control_header* h = self.hdr
        cdef uint64_t head = shm_load_acquire(&h.gp_recent_head)
        n = min(head, SHMRCU_GP_RECENT)
        recent = sorted(h.gp_recent_ns[(head - 1 - i) % SHMRCU_GP_RECENT] for i in range(n))
        def pct(q):
            return recent[min(len(recent) - 1, int(q * len(recent)))] / 1000.0 if recent else None
        return {
            "global_epoch": shm_load_acquire(&h.global_epoch),
            "completed_epoch": shm_load_acquire(&h.completed_epoch),
            "grace_periods": shm_load_relaxed(&h.grace_periods),
            "gp_wait_ns_total": shm_load_relaxed(&h.gp_wait_ns_total),
            "gp_p50_us": pct(0.50),
            "gp_p99_us": pct(0.99),
            "slots_reclaimed": shm_load_relaxed(&h.slots_reclaimed),
            "membarrier_fallbacks": shm_load_relaxed(&h.membarrier_fallbacks),
            "controller_pid": shm_load_relaxed(&h.controller_pid),
        }

    def slot_info(self, int index):
        """A snapshot of one slot (None if free)."""
        self._check_index(index)
        cdef worker_slot* s = &self.slots[index]
        # acquire: the owner's fields were written before it published ACTIVE
        cdef uint64_t state = shm_load_acquire(&s.state)
        if slot_status(state) != SHMRCU_SLOT_ACTIVE:
            return None
        ctr = shm_load_acquire(&s.ctr)
        g = shm_load_acquire(&self.hdr.global_epoch)
        return {
            "slot": index, "pid": s.pid, "worker_id": s.worker_id, "epoch": ctr,
            "online": ctr != 0, "epoch_lag": (g - ctr) if ctr else 0,
            "events": s.events, "batches": s.batches, "quiescent_states": s.quiescent_states,
            "last_advance_ns": s.last_advance_ns, "restarts": s.restarts,
            # acquire: pairs with mark_freed_seen's release (the munmaps came first)
            "freed_seen": shm_load_acquire(&s.freed_seen),
            "alive": shm_ofd_held(self.check_fd, SHMRCU_LOCK_SLOT_BASE + index) == 1,
        }

    def readers(self):
        return [i for i in (self.slot_info(k) for k in range(self.hdr.max_workers)) if i]

    def _check_index(self, int index):
        if self.slots == NULL:
            raise ReaderClosed("control block not validated")
        if not 0 <= index < <int>self.hdr.max_workers:
            raise IndexError(f"slot {index} out of range 0..{self.hdr.max_workers - 1}")

    # -- controller lease ------------------------------------------------------
    def try_lease(self):
        """Take the controller lease (an OFD lock the kernel drops at our death).

        Returns 0 on success, else the pid recorded by the current holder."""
        cdef int r = shm_ofd_lock(self.check_fd, SHMRCU_LOCK_CONTROLLER)
        if r == 0:
            # relaxed: informational; the lock itself is the lease
            shm_store_relaxed(&self.hdr.controller_pid, getpid())
            # relaxed: counts takeovers, read for statistics only
            shm_fetch_add_relaxed(&self.hdr.controller_epoch, 1)
            return 0
        if r in (-11, -13):   # EAGAIN / EACCES: someone else holds it
            return shm_load_relaxed(&self.hdr.controller_pid) or -1
        raise OSError(-r, "controller lease: " + os.strerror(-r))

    def release_lease(self):
        shm_store_relaxed(&self.hdr.controller_pid, 0)
        shm_ofd_unlock(self.check_fd, SHMRCU_LOCK_CONTROLLER)

    def controller_alive(self):
        """True if some open file description holds the controller lease."""
        return shm_ofd_held(self.check_fd, SHMRCU_LOCK_CONTROLLER) == 1

    # -- slots ---------------------------------------------------------------
    def claim_slot(self, int lock_fd, int worker_id=-1):
        """Take a free slot for this process; its OFD lock goes on ``lock_fd``."""
        for attempt in range(3):
            index = self._try_claim(lock_fd, worker_id)
            if index >= 0:
                return index
            # maybe dead owners hold every slot: reclaim them and look again
            reclaimed = 0
            for i in range(self.hdr.max_workers):
                reclaimed += self.reclaim_if_dead(i)
            if not reclaimed:
                time.sleep(0.001 * attempt)
        raise NoFreeSlot(f"all {self.hdr.max_workers} worker slots of runtime "
                         f"{(<bytes>self.hdr.name).decode(errors="replace")!r} are in use "
                         "(max_workers); close idle readers or create the runtime with a larger max_workers")

    cdef int _try_claim(self, int lock_fd, int worker_id) except -2:
        cdef worker_slot* s
        cdef uint64_t state, claiming, active
        cdef int i
        for i in range(<int>self.hdr.max_workers):
            s = &self.slots[i]
            # acquire: a FREE we observe comes after the previous owner's last writes
            state = shm_load_acquire(&s.state)
            if slot_status(state) != SHMRCU_SLOT_FREE:
                continue
            claiming = (state & ~STATUS_MASK) | SHMRCU_SLOT_CLAIMING
            # acq_rel CAS: exactly one claimer wins the slot
            if not shm_cas_acq_rel(&s.state, state, claiming):
                continue
            if shm_ofd_lock(lock_fd, SHMRCU_LOCK_SLOT_BASE + i) != 0:
                # a reclaimer holds the byte for a moment: give the slot back
                shm_cas_acq_rel(&s.state, claiming, state)
                continue
            # relaxed: published by the release CAS to ACTIVE below
            shm_store_relaxed(&s.ctr, 0)
            s.pid = getpid()
            s.worker_id = worker_id
            s.attach_unix_ns = time.time_ns()
            s.events = s.batches = s.quiescent_states = s.freed_seen = s.restarts = 0
            s.last_advance_ns = shm_monotonic_ns()
            s.freed_seen = shm_load_acquire(&self.hdr.freed_generation)
            active = (state & ~STATUS_MASK) | SHMRCU_SLOT_ACTIVE
            # acq_rel: publishes the fields above; fails if a reclaimer took a stuck CLAIMING
            if not shm_cas_acq_rel(&s.state, claiming, active):
                shm_ofd_unlock(lock_fd, SHMRCU_LOCK_SLOT_BASE + i)
                continue
            return i
        return -1

    def release_slot(self, int index, int lock_fd):
        """Give a slot back (its owner, at close)."""
        self._check_index(index)
        cdef worker_slot* s = &self.slots[index]
        # acquire: we compare against the state we published ourselves
        cdef uint64_t state = shm_load_acquire(&s.state)
        # release: our reads are over before a waiter sees 0
        shm_store_release(&s.ctr, 0)
        shm_ofd_unlock(lock_fd, SHMRCU_LOCK_SLOT_BASE + index)
        if slot_status(state) == SHMRCU_SLOT_ACTIVE:
            # acq_rel: fails harmlessly if a reclaimer already freed it
            shm_cas_acq_rel(&s.state, state, next_free_state(state))

    cdef bint reclaim_if_dead(self, int index) noexcept nogil:
        """Free a slot whose owner died (its OFD lock is gone). True if reclaimed."""
        cdef worker_slot* s = &self.slots[index]
        # acquire: see the owner's published state before probing its lock
        cdef uint64_t state = shm_load_acquire(&s.state)
        cdef uint64_t status = slot_status(state)
        cdef bint reclaimed = False
        if status == SHMRCU_SLOT_FREE:
            return False
        if shm_ofd_held(self.check_fd, SHMRCU_LOCK_SLOT_BASE + index) != 0:
            return False            # owner alive (or probe failed: assume alive)
        # hold the byte ourselves so no claimer can slip in while we free it
        if shm_ofd_lock(self.check_fd, SHMRCU_LOCK_SLOT_BASE + index) != 0:
            return False
        # acquire: re-read under the lock; a changed state means someone else acted
        if shm_load_acquire(&s.state) == state:
            # release: the slot no longer holds anything; waiters may pass it
            shm_store_release(&s.ctr, 0)
            # acq_rel: one reclaimer wins; the owner's own release CAS then fails harmlessly
            if shm_cas_acq_rel(&s.state, state, next_free_state(state)):
                # relaxed: statistics only
                shm_fetch_add_relaxed(&self.hdr.slots_reclaimed, 1)
                reclaimed = True
        shm_ofd_unlock(self.check_fd, SHMRCU_LOCK_SLOT_BASE + index)
        return reclaimed

    def reclaim_dead(self):
        """Reclaim every slot whose owner died; returns how many."""
        n = 0
        for i in range(self.hdr.max_workers):
            n += self.reclaim_if_dead(i)
        return n

    # -- grace periods -------------------------------------------------------
    def start_grace_period(self):
        """Begin a grace period and return its token (the target epoch)."""
        # full fence: the caller's unpublishing stores are visible before we read e0.
        # Without it a store still in our store buffer could trail another updater's
        # advance to e0 + 1, and a reader at e0 + 1 could still load the old pointer.
        shm_fence_seq_cst()
        # seq_cst: one total order with the advances of concurrent updaters
        cdef uint64_t e0 = shm_load_seq_cst(&self.hdr.global_epoch)
        # seq_cst CAS: losing to a concurrent advance is fine -- it came after our
        # load, hence after our stores; it also orders the advance before our scan
        shm_cas_seq_cst(&self.hdr.global_epoch, e0, e0 + 1)
        return e0 + 1

    def poll_grace_period(self, uint64_t token):
        """True if the grace period ``token`` has elapsed (never blocks)."""
        if token <= shm_load_acquire(&self.hdr.completed_epoch):
            return True
        if self._membarrier():
            pass
        cdef int i
        cdef uint64_t c
        for i in range(<int>self.hdr.max_workers):
            # acquire: pairs with the reader's release store of 0 / a newer epoch
            c = shm_load_acquire(&self.slots[i].ctr)
            if c != 0 and c < token:
                return False
        self._complete(token, 0)
        return True

    def synchronize(self, timeout=None):
        """Wait for a full grace period; GracePeriodTimeout after ``timeout`` s."""
        token = self.start_grace_period()
        self.wait(token, -1.0 if timeout is None else float(timeout))

    def wait_grace_period(self, uint64_t token, timeout=None):
        if token > shm_load_acquire(&self.hdr.global_epoch):
            raise ValueError(f"grace-period token {token} was never started")
        self.wait(token, -1.0 if timeout is None else float(timeout))

    cdef bint _membarrier(self):
        """In membarrier mode, force a full fence on every registered reader's CPU."""
        if self.hdr.sections_mode != SHMRCU_SECTIONS_MEMBARRIER:
            return False
        cdef int r
        with nogil:
            r = shm_membarrier(SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED)
        if r < 0:
            # readers that could not register use fences themselves; count it
            shm_fetch_add_relaxed(&self.hdr.membarrier_fallbacks, 1)
            return False
        return True

    cdef void _complete(self, uint64_t token, uint64_t waited_ns) noexcept nogil:
        cdef control_header* h = self.hdr
        # acquire: a fresh value to retry the CAS against
        cdef uint64_t done = shm_load_acquire(&h.completed_epoch)
        while done < token:
            # acq_rel CAS: publishes "target elapsed" after our scan's acquire loads
            if shm_cas_acq_rel(&h.completed_epoch, done, token):
                # relaxed: statistics only
                shm_fetch_add_relaxed(&h.grace_periods, 1)
                shm_fetch_add_relaxed(&h.gp_wait_ns_total, waited_ns)
                if waited_ns > 0xffffffffULL:
                    waited_ns = 0xffffffffULL
                h.gp_recent_ns[shm_fetch_add_relaxed(&h.gp_recent_head, 1) % <uint64_t>SHMRCU_GP_RECENT] = \
                    <uint32_t>waited_ns
                return
            done = shm_load_acquire(&h.completed_epoch)

    cdef int wait(self, uint64_t token, double timeout) except -1:
        cdef uint64_t t0 = shm_monotonic_ns()
        cdef uint64_t deadline = 0 if timeout < 0 else t0 + <uint64_t>(timeout * 1e9)
        cdef int i, lagging = -1
        if _skip_wait:
            return 0
        self._membarrier()
        with nogil:
            lagging = self._wait_slots(token, t0, deadline)
        if lagging < 0:
            return 0
        self._raise_timeout(token, t0)
        return -1

    cdef int _wait_slots(self, uint64_t token, uint64_t t0, uint64_t deadline) noexcept nogil:
        """Wait slot by slot; -1 when the grace period elapsed, else a lagging slot."""
        cdef control_header* h = self.hdr
        cdef worker_slot* s
        cdef uint64_t c, now, nap, next_probe
        cdef int i, rounds
        for i in range(<int>h.max_workers):
            s = &self.slots[i]
            rounds = 0
            nap = NAP_MIN_NS
            next_probe = 0
            while True:
                # acquire: pairs with the reader's release of 0 / a newer epoch, so
                # its reads of the old data happen before whatever we do next
                c = shm_load_acquire(&s.ctr)
                if c == 0 or c >= token:
                    break
                # acquire: another waiter finished a covering grace period
                if shm_load_acquire(&h.completed_epoch) >= token:
                    return -1
                rounds += 1
                if rounds < SPIN_ROUNDS:
                    shm_cpu_relax()
                    continue
                now = shm_monotonic_ns()
                if deadline and now >= deadline:
                    return i
                if now - t0 >= DEAD_PROBE_NS and now >= next_probe:
                    next_probe = now + 10 * DEAD_PROBE_NS
                    if self.reclaim_if_dead(i):
                        break
                if self._sleep(s, token, nap, deadline, now):
                    break
                if nap < NAP_MAX_NS:
                    nap *= 2
        self._complete(token, shm_monotonic_ns() - t0)
        return -1

    cdef bint _sleep(self, worker_slot* s, uint64_t token, uint64_t nap, uint64_t deadline,
                     uint64_t now) noexcept nogil:
        """Sleep on the futex until a reader advances (it wakes us) or ``nap`` passes.

        True if the slot no longer holds the grace period up."""
        cdef control_header* h = self.hdr
        cdef uint32_t seq
        cdef uint64_t c
        cdef bint done
        if deadline and deadline - now < nap:
            nap = deadline - now
        # seq_cst: announce the sleeper before the last look at ctr (pairs with the
        # reader's fence between its ctr store and its load of gp_waiters)
        shm_fetch_add_seq_cst32(&h.gp_waiters, 1)
        # acquire: any bump after this value makes FUTEX_WAIT return at once
        seq = shm_load_acquire32(&h.gp_futex)
        # acquire: as in the polling loop
        c = shm_load_acquire(&s.ctr)
        done = c == 0 or c >= token
        if not done:
            shm_futex_wait(&h.gp_futex, seq, nap)
            c = shm_load_acquire(&s.ctr)
            done = c == 0 or c >= token
        # seq_cst: readers stop waking once no one sleeps
        shm_fetch_sub_seq_cst32(&h.gp_waiters, 1)
        return done

    def _raise_timeout(self, uint64_t token, uint64_t t0):
        now = shm_monotonic_ns()
        g = shm_load_acquire(&self.hdr.global_epoch)
        stalled = []
        for i in range(self.hdr.max_workers):
            s = &self.slots[i]
            c = shm_load_acquire(&s.ctr)
            if c == 0 or c >= token or self.reclaim_if_dead(i):
                continue
            since = max(now - t0, now - s.last_advance_ns if s.last_advance_ns else 0)
            stalled.append(StalledSlot(slot=i, pid=s.pid, epoch=c, epoch_lag=g - c,
                                       seconds=since / 1e9))
        if not stalled:     # everyone advanced between the deadline and this scan
            self._complete(token, now - t0)
            return
        raise GracePeriodTimeout(
            f"grace period (epoch {token}) not complete after {(now - t0) / 1e9:.3f}s; "
            f"{len(stalled)} reader(s) still in a read-side section or not quiescent", stalled)


cdef class _Section:
    """``with reader.section():`` -- reusable, nestable.

    Holds its reader by a borrowed pointer (no reference cycle, so a dropped
    reader is freed at once); the reader clears it when it goes away."""
    cdef void* reader

    def __enter__(self):
        if self.reader == NULL or (<Reader>self.reader).closed:
            raise ReaderClosed("reader is closed")
        (<Reader>self.reader).enter()
        return <Reader>self.reader

    def __exit__(self, exc_type, exc, tb):
        if self.reader != NULL:
            (<Reader>self.reader).exit()
        return False


@cython.no_gc_clear       # __dealloc__ still needs `control` to give the slot back
cdef class Reader:
    """A registered reader: one worker slot, explicit sections and QSBR.

    Not thread-safe: use one Reader per thread.  Example::

        with rt.reader() as r:
            with r.section():
                value = table[key]
    """

    def __cinit__(self, ControlBlock control, int lock_fd, int worker_id=-1):
        self.closed = True
        self.control = control
        self.hdr = control.hdr
        self.lock_fd = lock_fd
        self.index = control.claim_slot(lock_fd, worker_id)
        self.slot = &control.slots[self.index]
        self.depth = 0
        self.qsbr_online = False
        self.fence = True
        if control.hdr.sections_mode == SHMRCU_SECTIONS_MEMBARRIER and membarrier_register():
            self.fence = False
        section = _Section()               # reused: `with r.section():` allocates nothing
        section.reader = <void*>self
        self.section_cm = section
        self.closed = False

    cdef void enter(self) noexcept nogil:
        if self.depth == 0 and not self.qsbr_online:
            rcu_online(self.hdr, self.slot, self.fence)
        self.depth += 1

    cdef void exit(self) noexcept nogil:
        if self.depth > 0:
            self.depth -= 1
            if self.depth == 0 and not self.qsbr_online:
                rcu_offline(self.slot)

    def section(self):
        """A read-side critical section (context manager, nestable)."""
        return self.section_cm

    def _check_open(self):
        if self.closed:
            raise ReaderClosed("reader is closed")

    def online(self):
        """QSBR: announce this reader online (it may now hold references)."""
        self._check_open()
        if not self.qsbr_online:
            if self.depth == 0:
                rcu_online(self.hdr, self.slot, self.fence)
            self.qsbr_online = True

    def offline(self):
        """QSBR: announce this reader offline (holds nothing; never waited for)."""
        self._check_open()
        if self.depth:
            raise RuntimeError("offline() inside a read-side section")
        if self.qsbr_online:
            rcu_offline(self.slot)
            self.qsbr_online = False

    def quiescent(self):
        """QSBR: report a quiescent state (drops every reference taken before)."""
        self._check_open()
        if self.depth:
            raise RuntimeError("quiescent() inside a read-side section would end it early")
        if not self.qsbr_online:
            raise RuntimeError("quiescent() on an offline reader: call online() first")
        rcu_quiescent(self.hdr, self.slot)
        self.slot.quiescent_states += 1

    def publish(self, uint64_t events, uint64_t batches=1):
        """Add to this slot's counters and stamp the last-advance time (pool workers)."""
        # relaxed: counters are only read for statistics; single writer
        shm_store_relaxed(&self.slot.events, self.slot.events + events)
        shm_store_relaxed(&self.slot.batches, self.slot.batches + batches)
        shm_store_relaxed(&self.slot.last_advance_ns, shm_monotonic_ns())

    def mark_freed_seen(self, uint64_t generation):
        """Tell the controller's barrier this process dropped maps freed up to ``generation``."""
        # release: our munmap()s happen before the barrier sees the new generation
        shm_store_release(&self.slot.freed_seen, generation)

    @property
    def slot_index(self):
        return self.index

    @property
    def is_online(self):
        return self.qsbr_online or self.depth > 0

    @property
    def epoch(self):
        # relaxed: our own word
        return shm_load_relaxed(&self.slot.ctr)

    @property
    def uses_fence(self):
        return self.fence

    def close(self):
        """Release the slot (offline first).  Idempotent."""
        if self.closed:
            return
        self.depth = 0
        self.qsbr_online = False
        self.control.release_slot(self.index, self.lock_fd)
        os.close(self.lock_fd)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __dealloc__(self):
        if self.section_cm is not None:
            (<_Section>self.section_cm).reader = NULL
        # a reader dropped without close(): give the slot back rather than leak it
        if not self.closed and self.control is not None:
            self.control.release_slot(self.index, self.lock_fd)
            os.close(self.lock_fd)
