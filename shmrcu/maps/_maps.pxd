# MapCore: the map handle core (the dict-like face); the kernels it calls are in _kernels.pxd.
from libc.stdint cimport uint32_t, uint64_t, int64_t
from cpython.bytes cimport PyBytes_AS_STRING
from shmrcu.maps._kernels cimport map_view


cdef class MapCore:
    cdef map_view view
    cdef readonly object runtime      # the Runtime this handle belongs to
    cdef readonly object mapping      # keeps the mmap alive; None once closed
    cdef readonly uint64_t id
    cdef readonly bint closed
    cdef readonly bint inherited      # a fork() child's copy: re-maps itself on first use
    cdef readonly int busy            # threads of this process in a nogil batch on it (under the GIL)
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


# Where a packed key/value is: ``small`` for ints packed in place, else the bytes.
cdef inline const char* buf_ptr(object packed, uint64_t* small):
    return <const char*>small if packed is None else <const char*>PyBytes_AS_STRING(packed)
