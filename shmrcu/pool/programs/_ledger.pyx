# cython: language_level=3
"""Access to one worker's ledger entry (layout and journal protocol: _ledger.h)."""
from libc.stdint cimport uint64_t
from shmrcu.core._layout cimport shm_load_relaxed, shm_store_relaxed
from shmrcu.maps._maps cimport MapCore
from shmrcu.maps._kernels cimport mv_value

FORMAT = SHMRCU_LEDGER_FORMAT.decode()
FIELDS = ("applied", "batches", "dropped", "hits", "misses", "j_seq", "j_map", "j_offset",
          "j_packets", "j_bytes", "uncertain", "incarnation", "pid", "slot")
assert sizeof(pool_ledger) == 128


cdef class Ledger:
    """``Ledger(ledger_map, worker_id)``: the entry of pool worker ``worker_id``."""

    def __cinit__(self, MapCore ledger_map, int index):
        if ledger_map.view.value_size != sizeof(pool_ledger):
            raise ValueError(f"ledger map values are {ledger_map.view.value_size} bytes, "
                             f"expected {sizeof(pool_ledger)}")
        if not 0 <= index < <int>ledger_map.view.max_entries:
            raise IndexError(f"ledger entry {index} out of range")
        self.map = ledger_map
        self.index = index
        self.p = <pool_ledger*>mv_value(&ledger_map.view, index, 0)

    @property
    def address(self):
        return <size_t>self.p

    cdef int alive(self) except -1:
        if self.map.closed:
            raise ValueError("the ledger's map is closed (runtime closed or destroyed)")
        return 0

    def read(self):
        """A snapshot of every field as a dict."""
        self.alive()
        cdef uint64_t* w = <uint64_t*>self.p
        # relaxed: statistics; every field is one aligned word
        return {name: shm_load_relaxed(&w[i]) for i, name in enumerate(FIELDS)}

    @property
    def applied(self):
        self.alive()
        # relaxed: only the owner writes it; readers want a recent value
        return shm_load_relaxed(&self.p.applied)

    def add(self, uint64_t applied, uint64_t batches=1):
        """Count ``applied`` events and ``batches`` batches (owner only)."""
        self.alive()
        # relaxed load+store: the owner is the only writer (no RMW needed); the
        # atomic access keeps concurrent readers from seeing torn words
        shm_store_relaxed(&self.p.applied, shm_load_relaxed(&self.p.applied) + applied)
        shm_store_relaxed(&self.p.batches, shm_load_relaxed(&self.p.batches) + batches)

    def set(self, str field, uint64_t value):
        self.alive()
        # relaxed: owner/pool bookkeeping fields, read only for statistics or
        # after the writer's death (when waitpid has ordered everything)
        shm_store_relaxed(&(<uint64_t*>self.p)[FIELDS.index(field)], value)

    def in_flight(self):
        """True when the journal says an event was being applied."""
        self.alive()
        return shm_load_relaxed(&self.p.j_seq) == shm_load_relaxed(&self.p.applied) + 1

    def recover(self, MapCore target):
        """After the owner died: finish or undo its in-flight event (see _ledger.h).

        ``target`` is the map named by ``j_map`` (None when it is gone: the
        event is then counted as uncertain).  Returns "none", "forward",
        "back" or "uncertain"."""
        cdef pool_ledger* L = self.p
        cdef uint64_t* f
        self.alive()
        if L.j_seq != L.applied + 1:
            return "none"
        if target is None or target.view.n_copies <= 1 or \
                L.j_offset + 16 > <uint64_t>target.view.hdr.total_size:
            # a shared map's atomic add cannot be told apart from other workers' adds
            L.uncertain += 1
            L.j_seq = L.applied
            return "uncertain"
        f = <uint64_t*>(target.view.base + L.j_offset)
        if f[0] == L.j_packets + 1:
            L.applied = L.j_seq            # the packets store landed: the event is in the map
            L.j_seq = L.applied
            return "forward"
        f[1] = L.j_bytes                   # packets not written: undo a bytes store that may have been
        L.j_seq = L.applied
        return "back"
