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

Reclaiming is exclusive: the reclaimer opens a description of its own and
takes the slot's byte through it, so two reclaimers -- in two processes or two
threads of one -- and a new claimer exclude each other (OFD locks taken through
one shared description would not), and it writes the slot only if the state
word, generation included, is the one it found dead.

Processes, threads, fork
------------------------
A slot belongs to one thread of one process: a ``Reader`` records both, and
its sections refuse any other thread.  A ``fork()`` child disowns every reader
and control block it inherited (the at-fork hooks of shmrcu.core.segment): their
memory is not mapped in the child (MADV_DONTFORK), their lock descriptors are
closed -- never unlocked, so the locks stay the parent's -- and using them
raises ``InheritedAcrossFork``.

A wait from a thread inside its own section would wait for itself: ``wait``
raises ``SelfDeadlock`` (lockdep's rule).  A thread whose QSBR reader is
online reports a quiescent state by going offline for the wait, and comes
back online after it (liburcu-qsbr's synchronize_rcu does the same).  Waits
sleep in short slices without the GIL and check for signals between them, so
Ctrl-C interrupts any wait within a slice.

membarrier failures never shorten a grace period: an updater whose expedited
membarrier fails falls back to MEMBARRIER_CMD_GLOBAL (slow but complete), and
raises OSError if that fails too.

Where the code is: the slots themselves -- header validation, claiming, giving back,
reclaiming a dead owner's slot, the controller lease -- are ``ControlSegment`` in
_control.pyx; ``ControlBlock`` below adds the grace periods (start, poll, wait) and
``Reader`` the read side; the inline reader fast paths are in _epoch.pxd.

Every atomic carries a one-line reason for its memory order.
"""
cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint32_t, int32_t, uint64_t, int64_t
from posix.unistd cimport getpid
from shmrcu.core._layout cimport *
from shmrcu.core._segment cimport Mapping
from shmrcu.core._control cimport ControlSegment, slot_status, next_free_state

import errno as _errno
import os
import threading
import time
import weakref

from . import segment as _seg
from ..errors import (GracePeriodTimeout, InheritedAcrossFork, ReaderClosed, SelfDeadlock,
                     ShmrcuError, StalledSlot)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()

cdef extern from *:
    """
    /* Readers of this thread that are online or inside a section (a hint that lets
     * a grace-period wait skip its self-deadlock check in one TLS load). */
    static __thread unsigned int shmrcu_tls_online = 0;
    static inline void shmrcu_tls_online_inc(void) { shmrcu_tls_online++; }
    static inline void shmrcu_tls_online_dec(void) { if (shmrcu_tls_online) shmrcu_tls_online--; }
    """
    unsigned int shmrcu_tls_online
    void shmrcu_tls_online_inc() nogil
    void shmrcu_tls_online_dec() nogil

def thread_online():
    """True if the calling thread may have a reader online or inside a section (one
    thread-local load; a hint: exact per runtime with ControlBlock.prepare_wait)."""
    return shmrcu_tls_online != 0


def thread_reader():
    """The calling thread's reader that is online or inside a section (None if none)."""
    cdef Reader r
    if not shmrcu_tls_online:
        return None
    for ref in getattr(_thread, "readers", ()):
        r = ref()
        if r is not None and not r.closed and (r.depth or r.qsbr_online):
            return r
    return None


# Readers of this process, which a fork() child must disown (see shmrcu.core.segment;
# control segments are disowned by _control).
_readers = weakref.WeakSet()
# Per thread: the readers it made (weak references), for the self-deadlock check.
_thread = threading.local()


def _disown_after_fork():
    cdef Reader r
    for r in list(_readers):
        r.disown()
    _readers.clear()
    _thread.__dict__.clear()     # the child's only thread is not the parent's


_seg.at_fork_in_child(_disown_after_fork)

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


# Test-only: a synchronize that does not wait.  The torture test flips it in
# the controller process to prove that it detects a broken grace period.
cdef bint _skip_wait = False

def _set_broken_synchronize(bint broken):
    """TEST ONLY: make synchronize() return without waiting for readers."""
    global _skip_wait
    _skip_wait = broken

# membarrier: registration is per process and happens once.
cdef int _membarrier_state = 0   # 0 unknown, 1 registered, -1 unavailable

# Test-only: make the updater's membarrier calls fail with these errnos.
cdef int _fail_expedited = 0
cdef int _fail_global = 0

def _set_membarrier_failure(int expedited_errno, int global_errno=0):
    """TEST ONLY: updater-side membarrier(GLOBAL_EXPEDITED) (and GLOBAL) fail with these errnos."""
    global _fail_expedited, _fail_global
    _fail_expedited = expedited_errno
    _fail_global = global_errno

cdef int updater_membarrier(control_header* hdr) noexcept nogil:
    """Force a full fence on every CPU that runs a registered (fence-skipping) reader.

    0 on success, else -errno.  Falls back to MEMBARRIER_CMD_GLOBAL (every CPU,
    through a scheduler grace period: slow, but it covers readers that skip fences)
    when the expedited command fails -- never returns 0 without a fence."""
    cdef int r = -_fail_expedited if _fail_expedited else shm_membarrier(SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED)
    if r >= 0:
        return 0
    # relaxed: statistics only
    shm_fetch_add_relaxed(&hdr.membarrier_fallbacks, 1)
    r = -_fail_global if _fail_global else shm_membarrier(SHM_MEMBARRIER_CMD_GLOBAL)
    return 0 if r >= 0 else r

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
# A wait gives the GIL back and checks for signals (Ctrl-C) this often.
cdef uint64_t SIGNAL_SLICE_NS = 20000000


cdef class ControlBlock(ControlSegment):
    """The control segment of one runtime, as seen by this process: the slots and
    header of ControlSegment (_control.pyx), plus grace periods."""

    def begin_close(self, double timeout=5.0):
        """Runtime.close(): make waits of other threads give up (ReaderClosed, within one
        signal slice), and wait for them to leave before the segment is unmapped."""
        self.closing = True
        deadline = time.monotonic() + timeout
        while self.waiters and time.monotonic() < deadline:
            time.sleep(0.001)
        if self.waiters:
            self.closing = False
            raise ShmrcuError(f"{self.waiters} thread(s) still wait for a grace period of this "
                              "runtime: cannot close it under them", errno=_errno.EBUSY)

    def local_readers_past(self, uint64_t token):
        """True when every slot owned by this process is offline or at ``token`` or later:
        a grace period over this process's own readers (it gates unmapping freed maps).
        Never blocks."""
        self.usable()
        cdef uint32_t pid = getpid()
        cdef worker_slot* s
        cdef uint64_t c
        cdef int i, r
        if self.hdr.sections_mode == SHMRCU_SECTIONS_MEMBARRIER:
            r = updater_membarrier(self.hdr)     # our fence-skipping readers' ctr stores land
            if r < 0:
                raise OSError(-r, "membarrier failed: " + os.strerror(-r))
        for i in range(<int>self.hdr.max_workers):
            s = &self.slots[i]
            # acquire: an ACTIVE state publishes the owner's pid
            if slot_status(shm_load_acquire(&s.state)) != SHMRCU_SLOT_ACTIVE or s.pid != pid:
                continue
            # seq_cst: the Dekker pair with a section's ctr store + fence (as in poll)
            c = shm_load_seq_cst(&s.ctr)
            if c != 0 and c < token:
                return False
        return True

    # -- grace periods -------------------------------------------------------
    def start_grace_period(self):
        """Begin a grace period and return its token (the target epoch)."""
        self.usable()
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

    cdef int check_token(self, uint64_t token) except -1:
        """A token is a target some start_grace_period returned: never above the epoch."""
        # acquire: any token handed out is <= the epoch its advance stored
        if token > shm_load_acquire(&self.hdr.global_epoch):
            raise ValueError(f"grace-period token {token} was never started (the global epoch is "
                             f"{shm_load_acquire(&self.hdr.global_epoch)}): pass a token that "
                             "start_grace_period() returned")
        return 0

    def poll_grace_period(self, uint64_t token):
        """True if the grace period ``token`` has elapsed (never waits for readers)."""
        self.usable()
        self.check_token(token)
        if token <= shm_load_acquire(&self.hdr.completed_epoch):
            return True
        # membarrier mode: the token's advance is behind us (start_grace_period), so
        # the barrier comes after it and before the scan, as in wait()
        self.membarrier_or_raise()
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
        self.usable()
        self.check_token(token)
        self.wait(token, -1.0 if timeout is None else float(timeout))

    cdef int membarrier_or_raise(self) except -1:
        """In membarrier mode, force a full fence on every registered reader's CPU."""
        if self.hdr.sections_mode != SHMRCU_SECTIONS_MEMBARRIER:
            return 0
        cdef int r
        with nogil:
            r = updater_membarrier(self.hdr)
        if r < 0:
            raise OSError(-r, "membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) and its fallback "
                              "membarrier(MEMBARRIER_CMD_GLOBAL) failed: "
                              f"{os.strerror(-r)}; readers of this runtime skip fences, so no "
                              "grace period can be proven (create the runtime with sections='fence')")
        return 0

    cdef list thread_qsbr_readers(self):
        """This thread's QSBR-online readers of this runtime, to take offline for a wait.

        SelfDeadlock if one of them is inside a section: the wait would wait for it."""
        online = []
        ident = self.identity
        cdef Reader r
        for ref in getattr(_thread, "readers", ()):
            r = ref()
            if r is None or r.closed or not (r.depth or r.qsbr_online):
                continue
            if r.control is not self and r.control.identity != ident:
                continue
            if r.depth:
                raise SelfDeadlock(
                    f"grace-period wait from inside a read-side section (reader slot {r.index}) of "
                    "this thread: it would wait for itself. Leave the section first, or update "
                    "with sync=False and synchronize after the section")
            online.append(r)
        return online

    def prepare_wait(self):
        """Before a blocking wait of this thread (barrier, wait_unreferenced): raise
        SelfDeadlock from inside a section; else the QSBR-online readers of this thread,
        which the caller takes offline for the wait and back online after it."""
        self.usable()
        return self.thread_qsbr_readers() if shmrcu_tls_online else []

    cdef int wait(self, uint64_t token, double timeout) except -1:
        self.usable()
        cdef uint64_t t0 = shm_monotonic_ns()
        cdef uint64_t deadline = 0 if timeout < 0 else t0 + <uint64_t>(timeout * 1e9)
        cdef uint64_t slice_end
        cdef int lagging = -1
        cdef list offline_for_wait = None
        cdef Reader r
        if shmrcu_tls_online:
            offline_for_wait = self.thread_qsbr_readers()
            for r in offline_for_wait:
                r.offline()          # our quiescent state: we hold nothing while we wait
        self.waiters += 1            # close() waits for us before it unmaps
        try:
            if _skip_wait:
                return 0
            self.membarrier_or_raise()
            while True:
                slice_end = shm_monotonic_ns() + SIGNAL_SLICE_NS
                if deadline and deadline < slice_end:
                    slice_end = deadline
                with nogil:
                    lagging = self._wait_slots(token, t0, slice_end)
                if lagging < 0:
                    return 0
                if deadline and shm_monotonic_ns() >= deadline:
                    break
                PyErr_CheckSignals()         # Ctrl-C: KeyboardInterrupt within one slice
                if self.closing:
                    raise ReaderClosed("runtime closed by another thread during a grace-period wait")
            self._raise_timeout(token, t0)
            return 0
        finally:
            self.waiters -= 1
            if offline_for_wait:
                for r in offline_for_wait:
                    if not r.closed:
                        r.online()

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
        if self.reader == NULL:
            raise ReaderClosed("reader is closed")
        (<Reader>self.reader).check_usable()
        (<Reader>self.reader).enter()
        if shm_load_relaxed(&(<Reader>self.reader).hdr.destroyed_unix_ns):
            # relaxed: a once-set flag (see ControlSegment.check_not_destroyed)
            (<Reader>self.reader).exit()
            (<Reader>self.reader).control.check_not_destroyed()
        return <Reader>self.reader

    def __exit__(self, exc_type, exc, tb):
        # A section entered in the parent and left in a forked child ends nothing:
        # the disowned reader's depth is 0, so exit() is a no-op.
        if self.reader != NULL:
            (<Reader>self.reader).exit()
        return False


@cython.no_gc_clear       # __dealloc__ still needs `control` to give the slot back
cdef class Reader:
    """A registered reader: one worker slot, explicit sections and QSBR.

    A reader belongs to the thread that made it (one Reader per thread) and to
    its process: a forked child's copy raises ``InheritedAcrossFork``.  Example::

        with rt.reader() as r:
            with r.section():
                value = table[key]
    """

    def __cinit__(self, ControlBlock control, int lock_fd, int worker_id=-1, freed_seen=None):
        self.closed = True
        self.control = control
        control.usable()
        self.hdr = control.hdr
        self.lock_fd = lock_fd
        self.index = control.claim_slot(lock_fd, worker_id, freed_seen)
        self.slot = &control.slots[self.index]
        self.depth = 0
        self.qsbr_online = False
        self.fence = True
        self.owner_pid = getpid()
        self.owner_thread = pthread_self()
        self.inherited = False
        if control.hdr.sections_mode == SHMRCU_SECTIONS_MEMBARRIER and membarrier_register():
            self.fence = False
        section = _Section()               # reused: `with r.section():` allocates nothing
        section.reader = <void*>self
        self.section_cm = section
        self.closed = False
        _readers.add(self)
        refs = getattr(_thread, "readers", None)
        if refs is None:
            refs = _thread.readers = []
        refs[:] = [x for x in refs if x() is not None]
        refs.append(weakref.ref(self))

    cdef int check_usable(self) except -1:
        """Raise unless this thread of this process may use the reader now."""
        if self.closed:
            if self.inherited:
                raise InheritedAcrossFork(
                    f"reader (slot {self.index}) was created in pid {self.owner_pid} and inherited "
                    f"by fork(): its slot is the parent's. Make a reader in this process: rt.reader()")
            raise ReaderClosed("reader is closed")
        if pthread_self() != self.owner_thread:
            raise ShmrcuError(f"reader (slot {self.index}) belongs to another thread: readers are "
                              "per thread; make one with rt.reader() in each thread that reads",
                              errno=_errno.EPERM)
        return 0

    def disown(self):
        """Forked child: forget the parent's slot (never release, never unlock it)."""
        self.closed = True
        self.inherited = True
        self.sections += 1
        self.depth = 0
        self.qsbr_online = False
        self.slot = NULL
        self.hdr = NULL
        self.lock_fd = -1                  # closed by the at-fork hook, locks kept by the parent

    cdef void enter(self) noexcept nogil:
        if self.depth == 0 and not self.qsbr_online:
            rcu_online(self.hdr, self.slot, self.fence)
            shmrcu_tls_online_inc()
        self.depth += 1

    cdef void exit(self) noexcept nogil:
        if self.depth > 0:
            self.depth -= 1
            if self.depth == 0 and not self.qsbr_online:
                rcu_offline(self.slot)
                shmrcu_tls_online_dec()
                self.sections += 1

    def section(self):
        """A read-side critical section (context manager, nestable)."""
        return self.section_cm

    def _check_open(self):
        self.check_usable()

    def online(self):
        """QSBR: announce this reader online (it may now hold references)."""
        self.check_usable()
        self.control.check_not_destroyed()
        if not self.qsbr_online:
            if self.depth == 0:
                rcu_online(self.hdr, self.slot, self.fence)
                shmrcu_tls_online_inc()
            self.qsbr_online = True

    def offline(self):
        """QSBR: announce this reader offline (holds nothing; never waited for)."""
        self.check_usable()
        if self.depth:
            raise RuntimeError("offline() inside a read-side section")
        if self.qsbr_online:
            rcu_offline(self.slot)
            shmrcu_tls_online_dec()
            self.qsbr_online = False
            self.sections += 1

    def quiescent(self):
        """QSBR: report a quiescent state (drops every reference taken before)."""
        self.check_usable()
        if self.depth:
            raise RuntimeError("quiescent() inside a read-side section would end it early")
        if not self.qsbr_online:
            raise RuntimeError("quiescent() on an offline reader: call online() first")
        rcu_quiescent(self.hdr, self.slot)
        self.slot.quiescent_states += 1
        self.sections += 1
        self.control.check_not_destroyed()      # a quiescent point notices a destroyed runtime

    def publish(self, uint64_t events, uint64_t batches=1):
        """Add to this slot's counters and stamp the last-advance time (pool workers)."""
        if self.closed:
            self.check_usable()
        # relaxed: counters are only read for statistics; single writer
        shm_store_relaxed(&self.slot.events, self.slot.events + events)
        shm_store_relaxed(&self.slot.batches, self.slot.batches + batches)
        shm_store_relaxed(&self.slot.last_advance_ns, shm_monotonic_ns())

    def mark_freed_seen(self, uint64_t generation):
        """Tell the controller's barrier this process dropped maps freed up to ``generation``."""
        if self.closed:
            return
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
        if self.closed:
            self.check_usable()
        # relaxed: our own word
        return shm_load_relaxed(&self.slot.ctr)

    @property
    def uses_fence(self):
        return self.fence

    @property
    def inherited_across_fork(self):
        return self.inherited

    def owned_by_caller(self):
        """True when the calling thread is the one that made this reader."""
        return pthread_self() == self.owner_thread

    def close(self):
        """Release the slot (offline first).  Idempotent; in a forked child's copy, a no-op."""
        if self.closed:
            return
        if (self.depth or self.qsbr_online) and pthread_self() != self.owner_thread:
            raise ShmrcuError(f"reader (slot {self.index}) is online or inside a section of its own "
                              "thread: closing it from another thread would end that section early",
                              errno=_errno.EBUSY)
        if self.depth or self.qsbr_online:
            shmrcu_tls_online_dec()
        self.depth = 0
        self.qsbr_online = False
        self.closed = True
        self.sections += 1
        self.control.release_slot(self.index, self.lock_fd)
        _seg.close_owned_fd(self.lock_fd)
        _readers.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __dealloc__(self):
        if self.section_cm is not None:
            (<_Section>self.section_cm).reader = NULL
        # a reader dropped without close(): give the slot back rather than leak it
        # (never in a forked child: disown() marked the parent's reader closed)
        if not self.closed and self.control is not None and self.owner_pid == getpid():
            self.closed = True
            self.control.release_slot(self.index, self.lock_fd)
            _seg.close_owned_fd(self.lock_fd)
