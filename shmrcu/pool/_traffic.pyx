# cython: language_level=3
"""Seeded synthetic traffic: batches of (uid u32, bytes u32) records.

The generator must cost far less than the programs it feeds (the pool is
benchmarked at tens of millions of events per second per worker), so every
sample is O(1) and runs without the GIL:

* the random stream is xoshiro256** seeded through splitmix64 (fast, and the
  same seed gives the same stream on every machine);
* a key is drawn uniformly with a multiply-shift (no modulo bias worth
  caring about at 32 bits), or from a Zipf law with Walker's alias method:
  one random number picks a column, a second part of it tosses the column's
  biased coin -- no binary search over a CDF per event.

A batch is a view of one internal buffer that the next call overwrites; the
worker runs the program on it before asking for the next one.
"""
cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.math cimport pow
from libc.stdint cimport uint32_t, uint64_t, int64_t

RECORD_SIZE = 8          # bytes per record: uid u32, bytes u32 (native order)
RECORD_FORMAT = "II"
UID_BASE = 10000         # key k is uid UID_BASE + k (Android app uids start there)

cdef uint32_t C_UID_BASE = 10000
cdef uint32_t MIN_BYTES = 40, SPAN_BYTES = 1461     # packet sizes 40..1500


cdef inline uint64_t rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t splitmix64(uint64_t* s) noexcept nogil:
    s[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = s[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


@cython.final
cdef class TrafficGenerator:
    """``TrafficGenerator(seed, keys, dist="uniform", zipf_s=1.1, batch=4096, limit=None)``

    ``next_batch()`` returns a memoryview (format ``"I"``, shape ``(n, 2)``:
    uid, bytes) or ``None`` once ``limit`` events were produced.
    """
    cdef uint64_t s[4]
    cdef uint32_t n_keys
    cdef bint zipf
    cdef uint32_t* alias_prob      # column keeps its own key when coin < prob (u32 scale)
    cdef uint32_t* alias_idx
    cdef uint32_t* buf
    cdef readonly uint32_t batch_events
    cdef readonly int64_t remaining    # -1: unbounded
    cdef readonly uint64_t produced
    cdef readonly str dist
    cdef object view

    def __cinit__(self, uint64_t seed, uint32_t keys, str dist="uniform", double zipf_s=1.1,
                  uint32_t batch=4096, limit=None):
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if dist not in ("uniform", "zipf"):
            raise ValueError(f"dist must be 'uniform' or 'zipf', got {dist!r}")
        if dist == "zipf" and zipf_s <= 0:
            raise ValueError(f"zipf_s must be > 0, got {zipf_s}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        cdef uint64_t sm = seed
        cdef int i
        for i in range(4):
            self.s[i] = splitmix64(&sm)
        self.n_keys = keys
        self.dist = dist
        self.zipf = dist == "zipf"
        self.batch_events = batch
        self.remaining = -1 if limit is None else limit
        self.produced = 0
        self.buf = <uint32_t*>PyMem_Malloc(2 * sizeof(uint32_t) * batch)
        if self.buf == NULL:
            raise MemoryError()
        if self.zipf:
            self._build_alias(zipf_s)
        # one memoryview over the whole buffer; batches are slices of it
        self.view = memoryview(<char[:8 * batch]><char*>self.buf).cast("B").cast("I", (batch, 2))

    def __dealloc__(self):
        PyMem_Free(self.buf)
        PyMem_Free(self.alias_prob)
        PyMem_Free(self.alias_idx)

    cdef _build_alias(self, double s):
        """Walker/Vose alias table for P(k) proportional to 1/(k+1)^s."""
        cdef uint32_t n = self.n_keys, i, small_n = 0, large_n = 0, l, g
        cdef double* p = <double*>PyMem_Malloc(n * sizeof(double))
        cdef uint32_t* small = <uint32_t*>PyMem_Malloc(n * sizeof(uint32_t))
        cdef uint32_t* large = <uint32_t*>PyMem_Malloc(n * sizeof(uint32_t))
        self.alias_prob = <uint32_t*>PyMem_Malloc(n * sizeof(uint32_t))
        self.alias_idx = <uint32_t*>PyMem_Malloc(n * sizeof(uint32_t))
        if not (p and small and large and self.alias_prob and self.alias_idx):
            PyMem_Free(p); PyMem_Free(small); PyMem_Free(large)
            raise MemoryError()
        cdef double total = 0
        for i in range(n):
            p[i] = 1.0 / pow(i + 1.0, s)
            total += p[i]
        for i in range(n):
            p[i] = p[i] * n / total            # mean 1
            if p[i] < 1.0:
                small[small_n] = i; small_n += 1
            else:
                large[large_n] = i; large_n += 1
        while small_n and large_n:
            small_n -= 1; l = small[small_n]
            g = large[large_n - 1]
            self.alias_prob[l] = <uint32_t>(p[l] * 4294967295.0)
            self.alias_idx[l] = g
            p[g] = (p[g] + p[l]) - 1.0
            if p[g] < 1.0:
                large_n -= 1
                small[small_n] = g; small_n += 1
        while large_n:
            large_n -= 1; g = large[large_n]
            self.alias_prob[g] = 0xffffffffU; self.alias_idx[g] = g
        while small_n:                       # rounding leftovers: keep themselves
            small_n -= 1; l = small[small_n]
            self.alias_prob[l] = 0xffffffffU; self.alias_idx[l] = l
        PyMem_Free(p); PyMem_Free(small); PyMem_Free(large)

    cdef inline uint64_t next_u64(self) noexcept nogil:
        # xoshiro256** (Blackman & Vigna)
        cdef uint64_t result = rotl(self.s[1] * 5, 7) * 9
        cdef uint64_t t = self.s[1] << 17
        self.s[2] ^= self.s[0]
        self.s[3] ^= self.s[1]
        self.s[1] ^= self.s[2]
        self.s[0] ^= self.s[3]
        self.s[2] ^= t
        self.s[3] = rotl(self.s[3], 45)
        return result

    cdef void fill(self, uint32_t n) noexcept nogil:
        cdef uint32_t i, k, coin
        cdef uint64_t r, r2
        cdef uint64_t nk = self.n_keys
        for i in range(n):
            r = self.next_u64()
            k = <uint32_t>(((r & 0xffffffffULL) * nk) >> 32)
            if self.zipf:
                coin = <uint32_t>(r >> 32)
                if coin > self.alias_prob[k]:
                    k = self.alias_idx[k]
            r2 = self.next_u64()
            self.buf[2 * i] = C_UID_BASE + k
            self.buf[2 * i + 1] = MIN_BYTES + <uint32_t>(((r2 >> 32) * SPAN_BYTES) >> 32)

    def next_batch(self):
        """The next batch (a view valid until the next call), or None when exhausted."""
        cdef uint32_t n = self.batch_events
        if self.remaining == 0:
            return None
        if self.remaining > 0 and self.remaining < n:
            n = <uint32_t>self.remaining
        with nogil:
            self.fill(n)
        if self.remaining > 0:
            self.remaining -= n
        self.produced += n
        return self.view[:n]

    def sample(self, uint32_t n):
        """``n`` fresh records as a list of (uid, bytes) tuples (tests, small n)."""
        out = []
        cdef uint32_t done = 0, m
        while done < n:
            m = min(n - done, self.batch_events)
            self.fill(m)
            out.extend(tuple(r) for r in self.view[:m].tolist())
            done += m
        return out
