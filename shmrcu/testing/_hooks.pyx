# cython: language_level=3
"""TEST ONLY: what a writer killed at the worst instruction leaves behind in a map.

``abandon_insert(m, key)`` -- a hash slot claimed, written and PENDING, never published;
``abandon_update(m, key, value)`` -- a whole-value cell claimed in this process's name (its
writer id) with half of ``value`` in its spare buffer, never published;
``forge_claim(m, key, writer_id)`` -- the cell claimed in the name of any writer id; ``stale_update(m, key, value)`` -- an update that found
``key`` and then lost it to a delete before it could publish.  A test calls one, then kills
the process (or pretends to be another writer) and checks what readers and writers do.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from libc.errno cimport EBUSY
from shmrcu.core._layout cimport (shm_load_acquire, shm_store_seq_cst, shm_fetch_add_relaxed,
                                  shm_cas_acq_rel)
from shmrcu.maps._maplayout cimport SHMRCU_SLOT_HDR, SHMRCU_CELL_HDR
from shmrcu.maps._kernels cimport (STATE_MASK, S_PENDING, claim_slot, hash_bytes, home_of, tag_of,
                                   slot_at, value_at, hash_find, mv_delete, cell_write, RETRY)
from shmrcu.maps._maps cimport MapCore, buf_ptr

from ..errors import MapFull, ShmrcuError, UnsupportedOperation


def abandon_insert(MapCore m, key):
    """TEST ONLY: claim a slot for ``key``, write it, mark it PENDING and stop
    there -- what a writer killed in the middle of an insert leaves behind."""
    cdef uint64_t small, h, ctl = 0
    cdef int64_t mine
    m.check(True)
    if not m.view.is_hash:
        raise UnsupportedOperation("only hash maps have inserts to abandon")
    kb = m.key_bytes(key, &small)
    h = hash_bytes(buf_ptr(kb, &small), m.view.key_size)
    # relaxed: a real insert reserves its place in the live count first
    shm_fetch_add_relaxed(&m.view.hdr.count, 1)
    mine = claim_slot(&m.view, home_of(&m.view, h), tag_of(h),
                      shm_load_acquire(&m.view.ctl.completed_epoch), &ctl)
    if mine < 0:
        raise MapFull("no slot to abandon")
    memcpy(slot_at(&m.view, <uint64_t>mine) + SHMRCU_SLOT_HDR, buf_ptr(kb, &small),
           m.view.key_size)
    # seq_cst: as hash_insert's PENDING store
    shm_store_seq_cst(<uint64_t*>slot_at(&m.view, <uint64_t>mine),
                      (ctl & ~STATE_MASK) | S_PENDING)
    return mine

def abandon_update(MapCore m, key, value):
    """TEST ONLY: claim ``key``'s value cell, write half of ``value`` into the
    spare buffer and stop there -- what a writer killed mid-update leaves."""
    cdef uint64_t small, vsmall, w
    cdef int64_t e
    cdef char* cell
    cdef int copy = 0
    m.check(True)
    if not m.view.cells:
        raise UnsupportedOperation("only maps with whole-value cells have updates to abandon")
    if m.view.n_copies > 1:
        copy = max(m.copy_index(), 0)
    e = m.entry_of(key)
    vb = m.value_bytes(value, &vsmall)
    cell = value_at(&m.view, <uint64_t>e, copy)
    # acquire / acq_rel: as cell_write's claim
    w = shm_load_acquire(<uint64_t*>cell)
    if <uint32_t>w != 0 or not shm_cas_acq_rel(<uint64_t*>cell, w, w | m.view.writer_id):
        raise ShmrcuError("the cell is claimed by another writer", errno=EBUSY)
    memcpy(cell + SHMRCU_CELL_HDR + (((w >> 32) + 1) & 1) * m.view.buf_stride,
           buf_ptr(vb, &vsmall), m.view.value_size // 2)
    return e



def forge_claim(MapCore m, key, uint32_t writer_id):
    """Claim ``key``'s value cell in the name of ``writer_id`` (attached or not)."""
    cdef uint64_t w
    cdef char* cell
    m.check(True)
    if not m.view.cells:
        raise UnsupportedOperation("only maps with whole-value cells have claims")
    cell = value_at(&m.view, <uint64_t>m.entry_of(key), 0)
    # acquire / acq_rel: as cell_write's claim
    w = shm_load_acquire(<uint64_t*>cell)
    if <uint32_t>w != 0 or not shm_cas_acq_rel(<uint64_t*>cell, w, w | writer_id):
        raise ShmrcuError("the cell is claimed by another writer", errno=EBUSY)
    return w >> 32


def cell_word(MapCore m, key):
    """(version, writer id) of ``key``'s value cell."""
    cdef uint64_t w
    m.check(False)
    if not m.view.cells:
        raise UnsupportedOperation("only maps with whole-value cells have cell words")
    # acquire: as a reader
    w = shm_load_acquire(<uint64_t*>value_at(&m.view, <uint64_t>m.entry_of(key), 0))
    return (w >> 32, w & 0xffffffff)


def stale_update(MapCore m, key, value):
    """Find ``key`` (hash, whole values), delete it, then run the cell write with what the
    find saw: it must let the claim go (RETRY).  Returns the cell's (version, pid) before
    and after, and whether it returned RETRY."""
    cdef uint64_t small, vsmall, seen = 0, before, after
    cdef int64_t e
    cdef int r
    cdef char* cell
    m.check(True)
    if not (m.view.cells and m.view.is_hash and m.view.n_copies == 1):
        raise UnsupportedOperation("stale_update needs a one-copy hash with whole-value cells")
    kb = m.key_bytes(key, &small)
    vb = m.value_bytes(value, &vsmall)
    e = hash_find(&m.view, buf_ptr(kb, &small), hash_bytes(buf_ptr(kb, &small), m.view.key_size), &seen)
    if e < 0:
        raise KeyError(key)
    cell = value_at(&m.view, <uint64_t>e, 0)
    before = shm_load_acquire(<uint64_t*>cell)
    if mv_delete(&m.view, buf_ptr(kb, &small)) != 0:
        raise KeyError(key)
    r = cell_write(&m.view, cell, buf_ptr(vb, &vsmall), <uint64_t*>slot_at(&m.view, <uint64_t>e), seen)
    after = shm_load_acquire(<uint64_t*>cell)
    return (before >> 32, before & 0xffffffff), (after >> 32, after & 0xffffffff), r == RETRY


def add_busy(MapCore m, int delta):
    """Count ``delta`` more (or fewer) nogil batches running on ``m`` (as MapBatch does)."""
    m.busy += delta
