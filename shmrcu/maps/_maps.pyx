# cython: language_level=3
"""The map handle core (Python level): ``MapCore``, the dict-like face of every map kind.

Conversions between Python objects and the packed keys/values of a map, error mapping and
the section checks; the work itself is done by the nogil kernels of ``_kernels`` (the
algorithm essay is at the top of ``_kernels.pyx``; the read side is inlined from
``_kernels.pxd``).  The batch methods are ``MapBatch`` (``_batch.pyx``), and the
kind-specific handle classes live in ``shmrcu.maps``.
"""
cimport cython
import time
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
from shmrcu.maps._kernels cimport *

ANY = SHMRCU_ANY
NOEXIST = SHMRCU_NOEXIST
EXIST = SHMRCU_EXIST
KIND_ARRAY = SHMRCU_MAP_ARRAY
KIND_HASH = SHMRCU_MAP_HASH
KIND_PER_WORKER_ARRAY = SHMRCU_MAP_PER_WORKER_ARRAY
KIND_PER_WORKER_HASH = SHMRCU_MAP_PER_WORKER_HASH
KIND_ARRAY_OF_MAPS = SHMRCU_MAP_ARRAY_OF_MAPS
KIND_HASH_OF_MAPS = SHMRCU_MAP_HASH_OF_MAPS
KIND_LPM_TRIE = SHMRCU_MAP_LPM_TRIE
F_WORKER_READONLY = SHMRCU_MAP_F_WORKER_READONLY
F_WHOLE_VALUES = SHMRCU_MAP_F_WHOLE_VALUES
STATE_LIVE = SHMRCU_MAP_LIVE
STATE_RETIRED = SHMRCU_MAP_RETIRED
STATE_FREED = SHMRCU_MAP_FREED
NAME_MAX = SHMRCU_MAP_NAME_MAX
HEADER_SIZE = sizeof(map_header)
LAYOUT = {"magic": SHMRCU_MAP_MAGIC, "version": SHMRCU_MAP_LAYOUT_VERSION,
          "header_size": sizeof(map_header), "slot_header": SHMRCU_SLOT_HDR,
          "cell_header": SHMRCU_CELL_HDR}


# ---------------------------------------------------------------------------
# the handle core: dict-like access from Python

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
        self.view.cells = shmrcu_map_has_cells(h)
        self.view.probe_fd = control.check_fd
        self.view.writer_id = control.writer_id
        self.view.buf_stride = <uint32_t>shmrcu_round_up(h.value_size, 8)
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

    def _close_mapping(self, double wait_s=0.0):
        """Unmap (this process only).  The handle raises MapClosed afterwards.  While
        threads of this process run batches on it, wait up to ``wait_s`` (the GIL is
        released only while sleeping: no batch can start between the last look at
        ``busy`` and the unmap), then EBUSY."""
        deadline = time.monotonic() + wait_s
        while self.busy:
            if time.monotonic() >= deadline:
                raise ShmrcuError(f"map {self.label()} is in use by {self.busy} batch operation(s) "
                                  "of other threads: cannot unmap it under them", errno=EBUSY)
            time.sleep(0.001)
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
            if self.control is not None:
                (<ControlBlock>self.control).check_not_destroyed()   # unmapped because destroyed?
            raise MapClosed(f"map {self.id} is closed in this process (freed, or its runtime closed)")
        # acquire: the state is advisory for handles (the mapping stays valid until this
        # process unmaps it after a local grace period); acquire so that a FREED set by a
        # destroy shows the runtime's destroyed flag, stored before it, too
        if shm_load_acquire(&self.view.hdr.state) == <uint64_t>SHMRCU_MAP_FREED:
            (<ControlBlock>self.control).check_not_destroyed()   # RuntimeDestroyed says more
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
        """Entry ``e``'s value (copy ``copy``), whole where the map promises it (mv_read)."""
        cdef uint64_t word
        cdef object b
        if self.view.value_size <= 8:
            mv_read(&self.view, <uint64_t>e, copy, &word)
            if self.value_int:
                return unpack_int(<const char*>&word, self.value_signed, self.view.value_size)
            return self.value_struct.unpack(PyBytes_FromStringAndSize(<const char*>&word,
                                                                      self.view.value_size))
        b = PyBytes_FromStringAndSize(NULL, self.view.value_size)
        mv_read(&self.view, <uint64_t>e, copy, PyBytes_AS_STRING(b))
        return self.value_struct.unpack(b)

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
            raise ShmrcuError(f"write of key {key!r} to map {self.label()} waited over 1 s on "
                              "another writer that claimed its slot or value and never finished: "
                              "a stopped or hung writer process (a dead one's value claim is taken "
                              "over; a dead one's half insert is not: rebuild the map and swap it in)",
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
        # a key that can never match the format raises, as m[key] does: in a
        # blocklist a False would read "never blocked"
        kb = self.key_bytes(key, &small)
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
                    rc = mv_write_at(&self.view, <uint64_t>e, c, NULL)
                    if rc < 0:
                        self.raise_rc(rc, key)

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
        elif self.view.cells:         # each value goes to zeros whole
            for c in range(self.view.n_copies):
                for i in range(self.view.capacity):
                    if mv_write_at(&self.view, i, c, NULL) < 0:
                        self.raise_rc(-EBUSY, i)
        else:
            for c in range(self.view.n_copies):
                memset(value_at(&self.view, 0, c), 0, self.view.copy_stride)

    def per_worker(self, key):
        """Per-worker maps: the list of every worker slot's copy of ``key``'s value."""
        cdef int64_t e = self.entry_of(key)
        return [self.read_value(e, c) for c in range(self.view.n_copies)]

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
        return (not self.closed) and bool(self.view.writable)

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

    @property
    def version(self):
        """The map's version word: 0 until set (``outer.replace`` numbers the tables it
        builds 1, 2, ...); any process reads it, writers set it with ``m.version = n``."""
        self.check(False)
        # acquire: pairs with the setter's release (what it versions was written first)
        return shm_load_acquire(&self.view.hdr.version)

    @version.setter
    def version(self, uint64_t value):
        self.check(True)
        # release: the contents written before are visible to whoever sees this version
        shm_store_release(&self.view.hdr.version, value)

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
