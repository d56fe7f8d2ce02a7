# C-level RCU reader API for Cython code (map kernels, built-in programs).
# The algorithm and the reasons for each memory order are in _epoch.pyx.
from libc.stdint cimport uint64_t
from shmrcu.core._control cimport ControlSegment
from shmrcu.core._layout cimport (control_header, worker_slot, shm_load_acquire, shm_load_relaxed,
                             shm_store_release, shm_store_relaxed, shm_store_full_fence,
                             shm_compiler_barrier, shm_fence_seq_cst, shm_load_relaxed32,
                             shm_fetch_add_seq_cst32, shm_futex_wake_all)

# Go online / enter an outermost read-side section.  `fence` is 0 only for a
# reader whose process registered for membarrier in a membarrier runtime.
cdef inline void rcu_online(control_header* hdr, worker_slot* slot, bint fence) noexcept nogil:
    # acquire: our later reads see everything published before the epoch we observe
    cdef uint64_t e = shm_load_acquire(&hdr.global_epoch)
    if fence:
        # store + full fence: the store must be visible to a synchronize() before we
        # read any RCU-protected pointer (store->load order; see shm_store_full_fence)
        shm_store_full_fence(&slot.ctr, e)
    else:
        # membarrier mode: synchronize's membarrier() supplies the fence on our CPU
        shm_store_relaxed(&slot.ctr, e)
        shm_compiler_barrier()

# Leave the outermost section / go offline: we hold no references any more.
cdef inline void rcu_offline(worker_slot* slot) noexcept nogil:
    # release: our reads of protected data complete before the waiter sees 0 and frees
    shm_store_release(&slot.ctr, 0)

# QSBR quiescent state of an online reader: references from before are dropped.
cdef inline void rcu_quiescent(control_header* hdr, worker_slot* slot) noexcept nogil:
    # acquire: pairs with synchronize's seq_cst increment, so reads after this
    # point see whatever was unpublished before that epoch began
    cdef uint64_t e = shm_load_acquire(&hdr.global_epoch)
    # relaxed: only this reader writes its own ctr
    if shm_load_relaxed(&slot.ctr) != e:
        # release: our earlier reads complete before a waiter sees the new epoch
        shm_store_release(&slot.ctr, e)
        rcu_wake_waiters(hdr)

# Slow path, once per grace period per reader: wake synchronize() callers that
# went to sleep on the futex instead of polling our slot.
cdef inline void rcu_wake_waiters(control_header* hdr) noexcept nogil:
    # full fence: our ctr store is visible before we look for sleepers; paired with
    # the waiter's seq_cst waiters++ before its last look at ctr, no wake-up is lost
    shm_fence_seq_cst()
    # relaxed: ordered by the fence above
    if shm_load_relaxed32(&hdr.gp_waiters):
        # seq_cst: a waiter that read the old futex value fails its FUTEX_WAIT at once
        shm_fetch_add_seq_cst32(&hdr.gp_futex, 1)
        shm_futex_wake_all(&hdr.gp_futex)

# The updater's membarrier (with its fallback and the test-only failure switch):
# 0, or -errno when no barrier could be issued.
cdef int updater_membarrier(control_header* hdr) noexcept nogil

cdef class ControlBlock(ControlSegment):
    cdef readonly int waiters    # threads of this process inside wait() (GIL-protected)
    cdef bint closing            # Runtime.close() in progress: waits give up
    cdef int check_token(self, uint64_t token) except -1
    cdef int membarrier_or_raise(self) except -1
    cdef list thread_qsbr_readers(self)
    cdef int wait(self, uint64_t target, double timeout) except -1
    cdef void _complete(self, uint64_t token, uint64_t waited_ns) noexcept nogil
    cdef int _wait_slots(self, uint64_t token, uint64_t t0, uint64_t deadline) noexcept nogil
    cdef bint _sleep(self, worker_slot* s, uint64_t token, uint64_t nap, uint64_t deadline,
                     uint64_t now) noexcept nogil

cdef class Reader:
    cdef control_header* hdr
    cdef worker_slot* slot
    cdef readonly int index
    cdef readonly int depth       # nesting depth of explicit sections (process-local)
    cdef readonly unsigned long long sections   # read-side sections ended (and quiescent states)
    cdef bint qsbr_online
    cdef bint fence
    cdef int lock_fd
    cdef readonly bint closed
    cdef readonly int owner_pid   # the process that claimed the slot
    cdef unsigned long owner_thread   # pthread_self() of the thread that owns it
    cdef bint inherited           # a fork() child's copy: closed, never releases the slot
    cdef ControlBlock control
    cdef object section_cm
    cdef object __weakref__
    cdef int check_usable(self) except -1
    cdef void enter(self) noexcept nogil
    cdef void exit(self) noexcept nogil
