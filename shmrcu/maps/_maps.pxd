# C-level map kernels for Cython code (built-in programs, the controller).
#
# Every kernel is nogil and returns 0 / an entry index on success or -errno
# (the BPF error) on failure, so a program can run a whole batch without the
# GIL.  A map_view is a process-local description of one mapped map segment;
# MapCore.view holds it for every open map handle.
#
#   cdef MapCore m = rt.map("flows")
#   cdef int64_t e = mv_find(&m.view, &key)
#   if e >= 0: value = (<uint64_t*>mv_value(&m.view, e, 0))[0]
#
# Callers must be inside a read-side section (or a QSBR-online reader) while
# they use pointers returned by mv_value: that is what keeps a deleted slot
# from being reused under them.
from libc.stdint cimport uint32_t, uint64_t, int64_t
from shmrcu.core._layout cimport control_header
from shmrcu.maps._maplayout cimport map_header

cdef struct map_view:
    char* base               # start of the mapping (the map_header)
    map_header* hdr
    control_header* ctl      # the runtime's control header (epochs for tombstone reuse)
    uint32_t kind
    uint32_t key_size
    uint32_t key_stride
    uint32_t value_size
    uint32_t n_copies
    uint32_t max_entries
    uint64_t capacity
    uint64_t mask            # hash: capacity - 1
    uint32_t shift           # hash: 64 - log2(capacity); a key's home slot is hash >> shift
    char* slots
    uint64_t slot_size
    char* values
    uint64_t value_stride
    uint64_t copy_stride
    bint is_hash
    bint writable

# Entry index of ``key`` (hash: slot; array: the index) or -ENOENT / -E2BIG.
cdef int64_t mv_find(map_view* m, const void* key) noexcept nogil
# Address of entry ``e``'s value, copy ``copy`` (0 unless per-worker).
cdef char* mv_value(map_view* m, uint64_t e, uint32_t copy) noexcept nogil
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
# Key hash (the same for every process and every map).
cdef uint64_t mv_hash(const void* key, uint32_t n) noexcept nogil


cdef class MapCore:
    cdef map_view view
    cdef readonly object runtime      # the Runtime this handle belongs to
    cdef readonly object mapping      # keeps the mmap alive; None once closed
    cdef readonly uint64_t id
    cdef readonly bint closed
    cdef readonly bint inherited      # a fork() child's copy: re-maps itself on first use
    cdef object control               # the runtime's ControlBlock (keeps ctl alive)
    cdef object key_struct, value_struct
    cdef int key_fields, value_fields
    cdef bint key_int, key_signed, value_int, value_signed
    cdef bint fast                    # one int key, one int value, one copy: inline paths
    cdef object u64_offsets           # value field offsets usable by add()
    cdef int check(self, bint write) except -1
    cdef int copy_index(self) except -2
    cdef readonly dict info
    cdef object key_bytes(self, object key, uint64_t* small)
    cdef object value_bytes(self, object value, uint64_t* small)
    cdef object read_value(self, int64_t e, uint32_t copy)
    cdef object read_sum(self, int64_t e)
    cdef object read_key(self, uint64_t i)
    cdef int64_t entry_of(self, object key) except -1
    cdef int raise_rc(self, int rc, object key) except -1
    cdef str label(self)
    cdef int run_update(self, const void* key, const void* value, uint64_t flags, uint32_t copy) except? -1
    cdef int batch_error(self, int rc, const unsigned char[::1] kv, Py_ssize_t done) except -1
