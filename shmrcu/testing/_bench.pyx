# cython: language_level=3
"""nogil loops that time the RCU reader primitives (bench/ and `shmrcu bench`)."""
from libc.stdint cimport uint64_t
from shmrcu.core._layout cimport shm_monotonic_ns, shm_load_relaxed, control_header, worker_slot
from shmrcu.core._epoch cimport Reader, rcu_online, rcu_offline, rcu_quiescent


def quiescent_loop(Reader reader, uint64_t n):
    """n QSBR quiescent states in a nogil loop; returns elapsed ns."""
    cdef uint64_t i, t0, t1
    # locals: the atomics' compiler barriers would otherwise reload them from the object
    cdef control_header* hdr = reader.hdr
    cdef worker_slot* slot = reader.slot
    with nogil:
        rcu_online(hdr, slot, reader.fence)
        t0 = shm_monotonic_ns()
        for i in range(n):
            rcu_quiescent(hdr, slot)
        t1 = shm_monotonic_ns()
        rcu_offline(slot)
    return t1 - t0


def section_loop(Reader reader, uint64_t n):
    """n section enter+exit pairs in a nogil loop (the reader's fence mode); elapsed ns."""
    cdef uint64_t i, t0, t1
    cdef bint fence = reader.fence
    cdef control_header* hdr = reader.hdr
    cdef worker_slot* slot = reader.slot
    with nogil:
        t0 = shm_monotonic_ns()
        for i in range(n):
            rcu_online(hdr, slot, fence)
            rcu_offline(slot)
        t1 = shm_monotonic_ns()
    return t1 - t0


def busy_reader(Reader reader, const unsigned char[::1] stop, bint qsbr, uint64_t batch):
    """Keep a reader busy (QSBR batches or short sections) until stop[0] != 0."""
    cdef uint64_t i, n = 0
    cdef volatile uint64_t sink = 0
    with nogil:
        if qsbr:
            rcu_online(reader.hdr, reader.slot, reader.fence)
        while (<volatile unsigned char*>&stop[0])[0] == 0:
            if qsbr:
                for i in range(batch):
                    sink += i
                rcu_quiescent(reader.hdr, reader.slot)
            else:
                rcu_online(reader.hdr, reader.slot, reader.fence)
                for i in range(batch):
                    sink += i
                rcu_offline(reader.slot)
            n += 1
        if qsbr:
            rcu_offline(reader.slot)
    return n
