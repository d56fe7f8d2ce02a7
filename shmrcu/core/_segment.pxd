# A raw mmap of a shared-memory file descriptor, owned by Python code but
# addressable from nogil Cython (``addr``).  munmap happens in close(), never
# behind the caller's back, which is what makes the freed-memory barrier exact.
# Every mapping is MADV_DONTFORK: a forked child never inherits it (see
# shmrcu/segment.py, "fork").
cdef class Mapping:
    cdef char* addr
    cdef readonly size_t size
    cdef readonly bint writable
    cdef readonly bint closed
    cdef object __weakref__
