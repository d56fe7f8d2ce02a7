# cython: language_level=3
"""Longest-prefix match: the ``lpm_trie`` kind (BPF_MAP_TYPE_LPM_TRIE's semantics).

A prefix is (length L, address bits); a lookup of a full address returns the entry of the
longest prefix that matches it.  Here the prefixes live in an ordinary hash map of this
package -- key ``[L][address with the bits past L cleared]`` -- plus a bitmap of the lengths
in use in the map header (``lpm_lengths``).  A lookup probes the lengths in use, longest
first, and stops at the first hit: as many hash probes as there are distinct lengths longer
than the answer (a routing table uses a few dozen; BPF's trie walks one node per bit).

Everything the hash map guarantees carries over: lock-free lookups, whole values, deleted
entries reused only after a grace period, many writers.  The length bit is set (release)
before the prefix is inserted, and never cleared (a stale bit costs one probe): a lookup
that loaded the bitmap before a concurrent insert may miss that insert -- it is ordered
before it, as in any lock-free map.
"""
from libc.errno cimport ENOENT, EINVAL
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset

from shmrcu.core._layout cimport shm_load_acquire, shm_fetch_or_release, shm_clz64
from cpython.bytes cimport PyBytes_FromStringAndSize
from shmrcu.maps._kernels cimport (map_view, hash_bytes, hash_find, mv_update, mv_delete, mv_read,
                                   advance_epoch, slot_at)
from shmrcu.maps._maplayout cimport SHMRCU_SLOT_HDR
from shmrcu.maps._batch cimport MapBatch, record_miss, record_hit

DEF KEY_MAX = 17            # 1 length byte + 16 address bytes (IPv6)


cdef inline void lpm_key(uint8_t* out, const uint8_t* addr, uint32_t n, uint32_t plen) noexcept nogil:
    """``[plen][addr with the bits past plen cleared]``: the hash key of a prefix."""
    cdef uint32_t full = plen >> 3
    cdef uint32_t rem = plen & 7
    out[0] = <uint8_t>plen
    memcpy(out + 1, addr, full)
    if full < n:
        memset(out + 1 + full, 0, n - full)
        if rem:
            out[1 + full] = addr[full] & <uint8_t>(0xff << (8 - rem))


cdef int mv_lpm_update(map_view* m, const uint8_t* addr, uint32_t plen, const void* value,
                       uint64_t flags) noexcept nogil:
    cdef uint8_t key[KEY_MAX]
    cdef uint32_t n = m.key_size - 1
    if plen > 8 * n:
        return -EINVAL
    # release: the bit is visible no later than the prefix (inserted below); readers load
    # the bitmap with acquire
    shm_fetch_or_release(&m.hdr.lpm_lengths[plen >> 6], (<uint64_t>1) << (plen & 63))
    lpm_key(key, addr, n, plen)
    return mv_update(m, key, value, flags, 0)


cdef int mv_lpm_delete(map_view* m, const uint8_t* addr, uint32_t plen) noexcept nogil:
    cdef uint8_t key[KEY_MAX]
    cdef uint32_t n = m.key_size - 1
    if plen > 8 * n:
        return -EINVAL
    lpm_key(key, addr, n, plen)
    return mv_delete(m, key)


cdef int64_t mv_lpm_find(map_view* m, const uint8_t* addr, uint32_t* plen) noexcept nogil:
    cdef uint8_t key[KEY_MAX]
    cdef uint32_t n = m.key_size - 1
    cdef uint64_t words[3]
    cdef uint64_t bits
    cdef int w
    cdef uint32_t L
    cdef int64_t e
    for w in range(3):
        # acquire: pairs with the updater's release of the bit
        words[w] = shm_load_acquire(&m.hdr.lpm_lengths[w])
    for w in range(2, -1, -1):
        bits = words[w]
        while bits:
            L = <uint32_t>(w * 64 + 63 - shm_clz64(bits))
            bits &= ~((<uint64_t>1) << (L & 63))
            if L > 8 * n:
                continue
            lpm_key(key, addr, n, L)
            e = hash_find(m, <const char*>key, hash_bytes(<const char*>key, n + 1), NULL)
            if e >= 0:
                if plen != NULL:
                    plen[0] = L
                return e
    return -ENOENT


cdef Py_ssize_t lpm_batch(map_view* m, const uint8_t* addrs, Py_ssize_t count, char* out,
                          const char* dflt, uint8_t* found) noexcept nogil:
    """Longest match of every address; values to ``out``; a miss gets ``dflt`` (NULL:
    ``out`` left as is) and ``found[i] = 0``.  Returns how many matched."""
    cdef Py_ssize_t i, hits = 0
    cdef uint32_t n = m.key_size - 1
    cdef uint32_t vs = m.value_size
    cdef int64_t e
    for i in range(count):
        e = mv_lpm_find(m, addrs + i * n, NULL)
        if e < 0:
            record_miss(out, i, vs, dflt, found)
            continue
        hits += 1
        record_hit(i, found)
        mv_read(m, <uint64_t>e, 0, out + i * vs)
    return hits


cdef class LpmCore(MapBatch):
    """The C-level operations of an lpm_trie handle (``shmrcu.maps.LpmTrieMap`` parses
    prefixes and addresses on top).  ``addr``: the address as bytes of its full length."""

    cdef int _addr_check(self, bytes addr) except -1:
        if len(addr) != self.view.key_size - 1:
            raise TypeError(f"address {addr!r} is {len(addr)} bytes; map {self.label()} holds "
                            f"{self.view.key_size - 1}-byte addresses")
        return 0

    def _lpm_set(self, bytes addr, uint32_t plen, value, uint64_t flags=0):
        cdef uint64_t vsmall
        cdef int rc
        self.check(True)
        self._addr_check(addr)
        vb = self.value_bytes(value, &vsmall)
        rc = mv_lpm_update(&self.view, <const uint8_t*>(<const char*>addr),
                           plen, buf_of(vb, &vsmall), flags)
        if rc < 0:
            self.raise_rc(rc, f"{addr.hex()}/{plen}")

    def _lpm_del(self, bytes addr, uint32_t plen):
        cdef int rc
        self.check(True)
        self._addr_check(addr)
        rc = mv_lpm_delete(&self.view, <const uint8_t*>(<const char*>addr), plen)
        if rc < 0:
            self.raise_rc(rc, f"{addr.hex()}/{plen}")
        advance_epoch(&self.view)

    def _lpm_find(self, bytes addr):
        """(prefix length, value) of the longest match, or None."""
        cdef uint32_t plen = 0
        cdef int64_t e
        self.check(False)
        self._addr_check(addr)
        e = mv_lpm_find(&self.view, <const uint8_t*>(<const char*>addr), &plen)
        if e < 0:
            return None
        return plen, self.read_value(e, 0)

    def _lpm_batch(self, addrs, out, default, found):
        """Longest match of every packed address (see lpm_batch); counted busy first, as
        every batch (MapBatch)."""
        self.busy += 1
        try:
            return self._lpm_batch_impl(addrs, out, default, found)
        finally:
            self.busy -= 1

    def _lpm_batch_impl(self, addrs, out, default, found):
        cdef const uint8_t[::1] av = memoryview(addrs).cast("B")
        cdef uint8_t[::1] ov = memoryview(out).cast("B")
        cdef uint8_t[::1] fv
        cdef uint32_t n = self.view.key_size - 1
        cdef Py_ssize_t count, hits
        cdef uint64_t dsmall
        cdef const char* dptr = NULL
        cdef uint8_t* fptr = NULL
        self.check(False)
        if av.shape[0] % n:
            raise ValueError(f"addresses buffer of {av.shape[0]} bytes is not a whole number of "
                             f"{n}-byte addresses")
        count = av.shape[0] // n
        if ov.shape[0] < count * self.view.value_size:
            raise ValueError(f"out holds {ov.shape[0]} bytes, {count * self.view.value_size} needed")
        if default is not None:
            db = self.value_bytes(default, &dsmall)
            dptr = buf_of(db, &dsmall)
        if found is not None:
            fv = memoryview(found).cast("B")
            if fv.shape[0] < count:
                raise ValueError(f"found holds {fv.shape[0]} bytes, one per address ({count}) needed")
            if count:
                fptr = &fv[0]
        if count == 0:
            return 0
        with nogil:
            hits = lpm_batch(&self.view, &av[0], count, <char*>&ov[0], dptr, fptr)
        return hits

    def _lpm_entries(self):
        """(address bytes, prefix length, value) of every prefix (a snapshot; values whole)."""
        cdef uint64_t i
        cdef const char* k
        cdef uint32_t n = self.view.key_size - 1
        out = []
        for i in self._entries():
            k = slot_at(&self.view, i) + SHMRCU_SLOT_HDR
            out.append((PyBytes_FromStringAndSize(k + 1, n), <uint8_t>k[0], self.read_value(i, 0)))
        return out


cdef inline const char* buf_of(object packed, uint64_t* small):
    return <const char*>small if packed is None else <const char*>(<bytes>packed)
