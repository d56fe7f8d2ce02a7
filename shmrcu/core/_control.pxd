# ControlSegment: the control header and reader slots of a runtime (see _control.pyx);
# ControlBlock (_epoch.pxd) adds the grace periods.
from libc.stdint cimport uint32_t, uint64_t
from shmrcu.core._layout cimport control_header, worker_slot, SHMRCU_SLOT_FREE

# A slot's state word: generation << 8 | status (FREE / CLAIMING / ACTIVE, _layout.h).
cdef inline uint64_t slot_status(uint64_t state) noexcept nogil:
    return state & <uint64_t>0xff

# The FREE state that follows ``state``: a new generation, so a stale CAS fails.
cdef inline uint64_t next_free_state(uint64_t state) noexcept nogil:
    return (state & ~(<uint64_t>0xff)) + <uint64_t>0x100 + SHMRCU_SLOT_FREE

cdef class ControlSegment:
    cdef control_header* hdr     # NULL once disowned in a forked child, or detached
    cdef worker_slot* slots
    cdef object mapping          # keeps the mmap alive
    cdef int check_fd            # runtime's own OFD: probes other owners' slot locks
    cdef bytes lock_path         # the segment's file: reclaimers open their own description
    cdef char* lock_path_c
    cdef readonly int owner_pid
    cdef bint detached           # closed: hdr is NULL, uses raise ReaderClosed
    cdef readonly uint32_t writer_id   # this process's writer id on the runtime (0: none)
    cdef object mark_key         # the writer mark it counts on (hold/drop_writer_mark)
    cdef object __weakref__
    cdef int usable(self) except -1
    cdef int check_not_destroyed(self) except -1
    cdef bint reclaim_if_dead(self, int index) noexcept nogil
    cdef int _try_claim(self, int lock_fd, int worker_id, uint64_t freed_seen) except -2
