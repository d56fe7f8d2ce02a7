# C-level map kernels for Cython code (built-in programs, the controller).
#
# Every kernel is nogil and returns 0 / an entry index on success or -errno
# (the BPF error) on failure, so a program can run a whole batch without the
# GIL.  A map_view is a process-local description of one mapped map segment;
# MapCore.view (_maps.pxd) holds it for every open map handle.
#
#   cdef MapCore m = rt.map("flows")   # from shmrcu.maps._maps cimport MapCore
#   cdef int64_t e = mv_find(&m.view, &key)
#   if e >= 0: value = (<uint64_t*>mv_value(&m.view, e, 0))[0]
#
# Callers must be inside a read-side section (or a QSBR-online reader) while
# they use pointers returned by mv_value: that is what keeps a deleted slot
# from being reused under them.
#
# Whole values (m.cells: hash maps with values over 8 bytes, arrays created
# with whole_values=True): mv_value points at the value current at the call;
# it stays whole while nobody updates the key, and a concurrent update writes
# the *other* buffer -- but a second update may rewrite this one.  A program
# that must see one whole value copies it out with mv_read (lock-free; retries
# only while a writer overlaps).  Values of at most 8 bytes are one word:
# mv_value/mv_read see them whole in every map.
from libc.errno cimport ENOENT, E2BIG
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memcmp
from shmrcu.core._layout cimport (control_header, shm_load_acquire, shm_load_seq_cst,
                                  shm_store_relaxed, shm_load_relaxed, shm_fetch_add_relaxed,
                                  shm_cas_seq_cst, shm_fence_acquire, shm_cpu_relax)
from shmrcu.maps._maplayout cimport (map_header, SHMRCU_MAP_ARRAY_OF_MAPS, SHMRCU_SLOT_HDR,
                                     SHMRCU_CELL_HDR)

cdef struct map_view:
    # 120 bytes: small enough for the compiler to keep a local copy in registers (the
    # pipelined batch lookup depends on it) -- mind the size when adding a field
    char* base               # start of the mapping (the map_header)
    map_header* hdr
    control_header* ctl      # the runtime's control header (epochs for tombstone reuse)
    uint32_t key_size
    uint32_t key_stride
    uint32_t value_size
    uint32_t n_copies
    uint32_t max_entries
    uint32_t writer_id       # this process's writer id on the runtime: whole-value claims
    uint64_t capacity
    uint64_t mask            # hash: capacity - 1
    uint32_t shift           # hash: 64 - log2(capacity); a key's home slot is hash >> shift
    uint32_t buf_stride      # cells: bytes of one buffer (value_size rounded up to 8)
    char* slots
    uint64_t slot_size
    char* values
    uint64_t value_stride
    uint64_t copy_stride
    uint8_t kind             # SHMRCU_MAP_* (_maplayout.h)
    uint8_t is_hash
    uint8_t writable
    uint8_t cells            # values are double-buffered cells (_maplayout.h)
    int probe_fd             # the runtime's control segment: probes writer marks (_layout.h)

# slot states (_maplayout.h), under the short names the kernels use
cdef extern from "_maplayout.h" nogil:
    uint64_t STATE_MASK "SHMRCU_SLOT_STATE_MASK"
    uint64_t S_EMPTY "SHMRCU_SLOT_EMPTY"
    uint64_t S_CLAIMED "SHMRCU_SLOT_CLAIMED"
    uint64_t S_PENDING "SHMRCU_SLOT_PENDING"
    uint64_t S_LIVE "SHMRCU_SLOT_LIVE"
    uint64_t S_DELETING "SHMRCU_SLOT_DELETING"
    uint64_t S_TOMB "SHMRCU_SLOT_TOMB"

cdef enum:
    RETRY = -10000                # internal: an insert yielded to a concurrent insert of its key
    PREFETCH_AHEAD = 16           # batch lookups: slots requested ahead of use (power of two)


# Set ``key`` to ``value`` (copy ``copy``) with BPF ``flags`` (ANY/NOEXIST/EXIST).
# A new hash key gets ``value`` in ``copy`` and zeros in the other copies.
cdef int mv_update(map_view* m, const void* key, const void* value, uint64_t flags,
                   uint32_t copy) noexcept nogil
# Remove ``key`` (-ENOENT if absent; arrays: -EINVAL, array_of_maps: clears).
cdef int mv_delete(map_view* m, const void* key) noexcept nogil
# Add ``delta`` to the u64 at byte ``offset`` of ``key``'s value (copy ``copy``),
# inserting a zero value first if the hash has no such key.  Atomic for shared
# copies; a per-worker copy is written by its owner alone, without atomics.
# The new field value goes to ``result`` when it is not NULL.
cdef int mv_add_u64(map_view* m, const void* key, uint32_t offset, uint64_t delta,
                    uint32_t copy, uint64_t* result) noexcept nogil
# Find ``key`` or insert it (zero value, or ``init`` into ``copy``).  Returns the
# entry index and sets created[0]; -E2BIG when full, -EAGAIN when only deleted
# slots still inside their grace period are left (synchronize, then retry).
cdef int64_t mv_upsert(map_view* m, const void* key, const void* init, uint32_t copy,
                       bint* created) noexcept nogil
# Outer maps: atomically replace the inner id at ``key`` (0 = empty); the old id
# (0 if none) goes to ``old``.  flags as in mv_update.
cdef int mv_swap_id(map_view* m, const void* key, uint64_t new_id, uint64_t flags,
                    uint64_t* old) noexcept nogil
# Outer maps: the inner id at ``key`` (acquire), 0 when empty or absent.
cdef uint64_t mv_lookup_id(map_view* m, const void* key) noexcept nogil
# Set entry ``e``'s value, copy ``copy``, whole (``value`` NULL: zeros), for an
# entry already found (arrays, or an insert's own slot): 0 or -EBUSY.
cdef int mv_write_at(map_view* m, uint64_t e, uint32_t copy, const void* value) noexcept nogil
# Key hash (the same for every process and every map).
cdef uint64_t mv_hash(const void* key, uint32_t n) noexcept nogil
# Map-internal (MapCore, test hooks): slot claim, the whole-value cell writer (0,
# RETRY when ``slot`` no longer reads ``seen``, or -EBUSY).  The batch loops are in _batch.pxd.
cdef int64_t claim_slot(map_view* m, uint64_t home, uint64_t tag, uint64_t completed,
                        uint64_t* claimed_ctl) noexcept nogil
cdef int cell_write(map_view* m, char* cell, const void* src, const uint64_t* slot,
                    uint64_t seen) noexcept nogil


# ---------------------------------------------------------------------------
# the read side, inlined wherever it is cimported (hashing, the probe loop, mv_find, mv_value)

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

cdef inline char* slot_at(map_view* m, uint64_t i) noexcept nogil:
    return m.slots + i * m.slot_size

cdef inline char* value_at(map_view* m, uint64_t e, uint32_t copy) noexcept nogil:
    return m.values + copy * m.copy_stride + e * m.value_stride

# A cell's current buffer, for the cell word ``word`` (version << 32 | writer pid).
cdef inline char* cell_buffer(map_view* m, char* cell, uint64_t word) noexcept nogil:
    return cell + SHMRCU_CELL_HDR + ((word >> 32) & 1) * m.buf_stride

# A copy made between loading cell word ``w1`` and re-loading ``w2`` is whole iff
# no writer can have touched buffer (v1 & 1) meanwhile: the version did not move,
# or moved once (the write went to the other buffer) with no next writer yet.
cdef inline bint cell_copy_whole(uint64_t w1, uint64_t w2) noexcept nogil:
    cdef uint32_t v1 = <uint32_t>(w1 >> 32)
    cdef uint32_t v2 = <uint32_t>(w2 >> 32)
    return v2 == v1 or (v2 == <uint32_t>(v1 + 1) and <uint32_t>w2 == 0)

# Address of entry ``e``'s value, copy ``copy`` (0 unless per-worker); for
# whole-value cells the buffer current now (see the note at the top).
cdef inline char* mv_value(map_view* m, uint64_t e, uint32_t copy) noexcept nogil:
    cdef char* cell = value_at(m, e, copy)
    if m.cells:
        # acquire: pairs with the writer's release publish, so the buffer it
        # names is completely written
        return cell_buffer(m, cell, shm_load_acquire(<uint64_t*>cell))
    return cell

# Copy entry ``e``'s value (copy ``copy``, value_size bytes) to ``dst``, whole
# where the map promises whole values.  Never blocks: a writer that died
# mid-update left the current buffer untouched.
cdef inline void mv_read(map_view* m, uint64_t e, uint32_t copy, void* dst) noexcept nogil:
    cdef char* cell = value_at(m, e, copy)
    cdef uint64_t w1, w2
    if not m.cells:
        if m.value_size <= 8:
            # relaxed: a value of up to 8 bytes is one padded word, written as one
            # store (write_value); one load sees it whole
            w1 = shm_load_relaxed(<uint64_t*>cell)
            memcpy(dst, &w1, m.value_size)
        else:
            memcpy(dst, cell, m.value_size)      # in place (arrays without whole_values)
        return
    while True:
        # acquire: the buffer named by w1 was completely written before w1 was published
        w1 = shm_load_acquire(<uint64_t*>cell)
        memcpy(dst, cell_buffer(m, cell, w1), m.value_size)
        # acquire fence: the copy above completes before the re-check below (seqlock
        # reader; pairs with the writer's release fence after it claims the cell)
        shm_fence_acquire()
        # relaxed: ordered by the fence
        w2 = shm_load_relaxed(<uint64_t*>cell)
        if cell_copy_whole(w1, w2):
            return
        shm_cpu_relax()

cdef inline void write_value(char* dst, const void* src, uint32_t n) noexcept nogil:
    """In-place write (not for cells): a value of up to 8 bytes as one word."""
    cdef uint64_t w = 0
    if n == 8:
        memcpy(&w, src, 8)            # a constant size: one load, no call
        # relaxed: a value of up to 8 bytes is replaced as one padded word (no torn
        # reads); it orders nothing else
        shm_store_relaxed(<uint64_t*>dst, w)
    elif n < 8:
        memcpy(&w, src, n)
        # relaxed: as above
        shm_store_relaxed(<uint64_t*>dst, w)
    else:
        memcpy(dst, src, n)

cdef inline int64_t array_index(map_view* m, const void* key) noexcept nogil:
    cdef uint32_t idx
    memcpy(&idx, key, 4)
    if idx >= m.max_entries:
        return -E2BIG
    return idx

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

cdef inline void advance_epoch(map_view* m) noexcept nogil:
    """After deletes from Python: start a grace period (no wait), so sections that
    begin from now on do not hold the new tombstones and an insert's poll_readers
    can recycle them as soon as the older sections end."""
    # seq_cst: the deletes precede the advance (as in start_grace_period); losing
    # the CAS to another advance serves us as well
    cdef uint64_t g = shm_load_seq_cst(&m.ctl.global_epoch)
    shm_cas_seq_cst(&m.ctl.global_epoch, g, g + 1)

# Entry index of ``key`` (hash: slot; array: the index) or -ENOENT / -E2BIG.
cdef inline int64_t mv_find(map_view* m, const void* key) noexcept nogil:
    cdef int64_t e
    if m.is_hash:
        return hash_find(m, <const char*>key, hash_bytes(<const char*>key, m.key_size), NULL)
    e = array_index(m, key)
    # acquire: pairs with the seq_cst exchange that stored the inner id
    if e >= 0 and m.kind == SHMRCU_MAP_ARRAY_OF_MAPS and \
            shm_load_acquire(<uint64_t*>value_at(m, <uint64_t>e, 0)) == 0:
        return -ENOENT
    return e

cdef inline uint64_t add_at(map_view* m, int64_t e, uint32_t copy, uint32_t offset,
                            uint64_t delta) noexcept nogil:
    """Add to one u64 field of entry ``e``; returns the new value.  In a cell the
    add goes to the current buffer: each field's add is atomic, and an add racing
    with an update of the key may land in the buffer that update replaces (as if
    it came first)."""
    cdef uint64_t* p = <uint64_t*>(mv_value(m, <uint64_t>e, copy) + offset)
    cdef uint64_t v
    if m.n_copies > 1:
        # relaxed load/store: a per-worker copy has one writer, its owner; the
        # atomic access only keeps a summing reader from seeing a torn word
        v = shm_load_relaxed(p) + delta
        shm_store_relaxed(p, v)
        return v
    # relaxed fetch_add: exact sums need atomicity only, a counter orders nothing
    return shm_fetch_add_relaxed(p, delta) + delta
