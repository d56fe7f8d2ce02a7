# cython: language_level=3
"""The control segment of a runtime as one process maps it: ``ControlSegment``.

Header facts and their validation (a corrupted or foreign segment raises CorruptSegment
before anything trusts it), the controller lease, and the reader slots: claiming one,
giving it back, and reclaiming the slot of an owner that died (each owner holds an OFD
lock on its slot's byte, which the kernel drops at death -- immune to PID reuse).  The
layout is in _layout.h; the grace-period algorithm that uses the slots is the subclass
``ControlBlock`` in _epoch.pyx, whose essay explains both.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memset, strncpy
from posix.fcntl cimport open as c_open, O_RDWR, O_CLOEXEC
from posix.unistd cimport getpid, close as c_close
from shmrcu.core._layout cimport *
from shmrcu.core._segment cimport Mapping

import errno as _errno
import os
import threading
import time
import weakref

from . import segment as _seg
from ..errors import (CorruptSegment, InheritedAcrossFork, NoFreeSlot, ReaderClosed, RuntimeDestroyed,
                      RuntimeNotFound, ShmrcuError)

cdef uint64_t STATUS_MASK = 0xff

# Control segments of this process, which a fork() child must disown (see shmrcu.core.segment).
_control_blocks = weakref.WeakSet()


def _disown_after_fork():
    global _writer_marks_lock
    cdef ControlSegment cb
    for cb in list(_control_blocks):
        cb.disown()
    _control_blocks.clear()
    _writer_marks.clear()        # their descriptors were closed (own_fd); the marks stay the parent's
    _writer_marks_lock = threading.Lock()


_seg.at_fork_in_child(_disown_after_fork)


# ---- writer marks ---------------------------------------------------------
# A process attached to a runtime holds the OFD lock byte SHMRCU_LOCK_WRITER_BASE +
# its writer id on the control segment's file, through a description of its own, for
# as long as any of its Runtime objects of that runtime (that file) is open.  A map
# writer claims a whole-value cell in the name of its writer id; another writer that
# finds the claim asks whether that id's mark is held: if not, its owner died (or
# detached) mid-update and the claim may be taken over.  Writer ids come from a
# counter in the control header: unique within the runtime, never reused, no pid.
# Counted per file (st_dev, st_ino), not per name: a runtime destroyed and re-created
# under the same name is another file with other marks.
_writer_marks = {}               # (st_dev, st_ino) -> [fd, writer id, users]
_writer_marks_lock = threading.Lock()


def hold_writer_mark(ControlSegment control, int segment_fd, str path):
    """Give ``control`` this process's writer id on its runtime, taking the mark on the
    first use (and counting one more user after that).  ``segment_fd`` is the control
    segment's descriptor, ``path`` its name in /dev/shm."""
    cdef int fd, r
    cdef uint64_t wid
    control.usable()
    st = os.fstat(segment_fd)
    key = (st.st_dev, st.st_ino)
    with _writer_marks_lock:
        mark = _writer_marks.get(key)
        if mark is not None:
            mark[2] += 1
            control.writer_id = mark[1]
            control.mark_key = key
            return mark[1]
        # a description of our own, of the very file we attached to: /proc/self/fd
        # when there is a /proc, else the name -- checked to be the same file
        try:
            fd = os.open(f"/proc/self/fd/{segment_fd}", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1
            if fd < 0 or (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != key:
                if fd >= 0:
                    os.close(fd)
                raise RuntimeNotFound(f"runtime at {path} was destroyed while this process "
                                      "attached to it: attach again")
        _seg.own_fd(fd)
        # relaxed: uniqueness needs only atomicity
        wid = shm_fetch_add_relaxed(&control.hdr.next_writer_id, 1) + 1
        if wid > 0xffffffff:
            _seg.close_owned_fd(fd)
            raise ShmrcuError("this runtime ran out of writer ids (2^32 attaches): re-create it",
                              errno=_errno.EOVERFLOW)
        r = shm_ofd_lock(fd, SHMRCU_LOCK_WRITER_BASE + <int64_t>wid)
        if r != 0:               # a fresh id's byte is nobody's: anything else is an error
            _seg.close_owned_fd(fd)
            raise OSError(-r, f"writer mark {wid} of {path}: " + os.strerror(-r))
        _writer_marks[key] = [fd, wid, 1]
        control.writer_id = <uint32_t>wid
        control.mark_key = key
        return wid


def drop_writer_mark(ControlSegment control):
    """One user fewer of the writer mark ``control`` holds; the last one releases it."""
    key = control.mark_key
    control.mark_key = None
    if key is None:
        return
    with _writer_marks_lock:
        mark = _writer_marks.get(key)
        if mark is None:
            return
        mark[2] -= 1
        if mark[2] <= 0:
            del _writer_marks[key]
            _seg.close_owned_fd(mark[0])


cdef class ControlSegment:
    """The control segment of one runtime as this process maps it: header facts,
    validation, the controller lease and the reader slots (claim, release, reclaim of
    dead owners).  The grace-period machinery is the subclass ControlBlock (_epoch)."""

    def __cinit__(self, Mapping mapping, int check_fd, lock_path=None):
        self.mapping = mapping
        self.hdr = <control_header*>mapping.addr
        self.slots = NULL
        self.check_fd = check_fd
        # reclaimers open their own description of this file (see reclaim_if_dead)
        self.lock_path = os.fsencode(lock_path) if lock_path is not None else None
        self.lock_path_c = <char*>self.lock_path if self.lock_path is not None else NULL
        self.owner_pid = getpid()
        _control_blocks.add(self)

    def disown(self):
        """Forked child: the mapping is gone (MADV_DONTFORK), the descriptor is the
        parent's; every later use raises instead of touching either."""
        self.mark_key = None         # the writer mark is the parent's too
        self.writer_id = 0
        self.hdr = NULL
        self.slots = NULL
        self.check_fd = -1
        self.mapping = None

    def detach(self):
        """After the segment is unmapped: every later use raises ReaderClosed."""
        self.hdr = NULL
        self.slots = NULL
        self.detached = True
        self.mapping = None

    cdef int usable(self) except -1:
        if self.hdr == NULL:
            if self.detached:
                raise ReaderClosed("runtime is closed")
            raise InheritedAcrossFork(f"this runtime handle was inherited across fork() from pid "
                                      f"{self.owner_pid}: use the Runtime again (it re-attaches) or "
                                      "Runtime.attach() in this process")
        return 0

    @property
    def identity(self):
        """(name, creation time): equal for every ControlBlock of one runtime incarnation."""
        self.usable()
        return ((<bytes>self.hdr.name).decode(errors="replace"), self.hdr.created_unix_ns)

    # -- creation and validation -------------------------------------------
    @staticmethod
    def segment_size(int max_workers):
        cdef size_t raw = sizeof(control_header) + <size_t>max_workers * sizeof(worker_slot)
        page = 4096
        return (raw + page - 1) // page * page

    def initialize(self, str name, int max_workers, int sections_mode, int mode):
        """Write a fresh header (creator only); the magic goes last."""
        cdef control_header* h = self.hdr
        memset(h, 0, self.mapping.size)
        h.layout_version = SHMRCU_LAYOUT_VERSION
        h.header_size = sizeof(control_header)
        h.total_size = self.mapping.size
        h.max_workers = max_workers
        h.slot_size = sizeof(worker_slot)
        h.slots_offset = sizeof(control_header)
        h.sections_mode = sections_mode
        h.creator_pid = getpid()
        h.mode = mode
        h.created_unix_ns = time.time_ns()
        raw = name.encode()
        strncpy(h.name, raw, SHMRCU_NAME_MAX)
        h.global_epoch = 1
        h.completed_epoch = 0
        h.next_map_id = 1
        # release: attachers that see the magic see the whole header above
        shm_store_release(&h.magic, SHMRCU_MAGIC)
        self.slots = <worker_slot*>(<char*>h + h.slots_offset)

    def validate(self, str expected_name, double wait_s=1.0):
        """Check the header against the real segment; raise CorruptSegment."""
        cdef control_header* h = self.hdr
        cdef size_t real = self.mapping.size
        where = f"control segment of runtime {expected_name!r}"
        if real < sizeof(control_header):
            raise CorruptSegment(f"{where} is truncated: {real} bytes, the header alone needs "
                                 f"{sizeof(control_header)}")
        deadline = time.monotonic() + wait_s
        # acquire: pairs with the creator's release of the magic
        while shm_load_acquire(&h.magic) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)   # a creator may still be writing the header
        magic = shm_load_acquire(&h.magic)
        if magic != SHMRCU_MAGIC:
            raise CorruptSegment(f"{where} has bad magic {magic:#018x} (expected {SHMRCU_MAGIC:#018x}): "
                                 "not a shmrcu segment, or overwritten")
        if h.layout_version != SHMRCU_LAYOUT_VERSION:
            raise CorruptSegment(f"{where} has layout version {h.layout_version}, this shmrcu "
                                 f"speaks {SHMRCU_LAYOUT_VERSION}: use a matching shmrcu version")
        if h.header_size != sizeof(control_header) or h.slot_size != sizeof(worker_slot) \
                or h.slots_offset != sizeof(control_header):
            raise CorruptSegment(f"{where} has header/slot sizes {h.header_size}/{h.slot_size}/"
                                 f"{h.slots_offset}, expected {sizeof(control_header)}/"
                                 f"{sizeof(worker_slot)}/{sizeof(control_header)}")
        if h.total_size != real:
            raise CorruptSegment(f"{where} says it is {h.total_size} bytes but is {real} "
                                 "(truncated or resized)")
        if h.max_workers < 1 or h.slots_offset + <size_t>h.max_workers * h.slot_size > real:
            raise CorruptSegment(f"{where} claims {h.max_workers} worker slots, which do not fit "
                                 f"in {real} bytes")
        if h.sections_mode not in (SHMRCU_SECTIONS_FENCE, SHMRCU_SECTIONS_MEMBARRIER):
            raise CorruptSegment(f"{where} has unknown sections mode {h.sections_mode}")
        stored = (<bytes>h.name).decode(errors="replace")
        if stored != expected_name:
            raise CorruptSegment(f"{where} records the name {stored!r}")
        self.slots = <worker_slot*>(<char*>h + h.slots_offset)

    # -- header facts ---------------------------------------------------------
    @property
    def max_workers(self):
        self.usable()
        return self.hdr.max_workers

    @property
    def sections_mode(self):
        self.usable()
        return self.hdr.sections_mode

    @property
    def mode(self):
        self.usable()
        return self.hdr.mode

    @property
    def creator_pid(self):
        self.usable()
        return self.hdr.creator_pid

    @property
    def global_epoch(self):
        self.usable()
        # acquire: callers compare it with slot epochs they load afterwards
        return shm_load_acquire(&self.hdr.global_epoch)

    @property
    def completed_epoch(self):
        self.usable()
        # acquire: a caller that sees a target completed may free what it retired
        return shm_load_acquire(&self.hdr.completed_epoch)

    # -- destruction -------------------------------------------------------------
    def mark_destroyed(self):
        """Record that the runtime is being destroyed (before its segments are unlinked):
        every process still attached raises RuntimeDestroyed instead of serving it."""
        self.usable()
        # release: the map states set FREED before are visible to whoever sees this
        shm_store_release(&self.hdr.destroyed_unix_ns, <uint64_t>time.time_ns())

    @property
    def destroyed_unix_ns(self):
        """When the runtime was destroyed (0: it was not)."""
        self.usable()
        # acquire: pairs with mark_destroyed
        return shm_load_acquire(&self.hdr.destroyed_unix_ns)

    def raise_if_destroyed(self):
        """RuntimeDestroyed if the runtime was destroyed (see check_not_destroyed)."""
        self.check_not_destroyed()

    cdef int check_not_destroyed(self) except -1:
        # acquire: pairs with mark_destroyed's release, which comes before the maps are
        # marked FREED -- a caller that saw a FREED map (acquire) sees this flag too
        if self.hdr != NULL and shm_load_acquire(&self.hdr.destroyed_unix_ns):
            raise RuntimeDestroyed(
                f"runtime {(<bytes>self.hdr.name).decode(errors='replace')!r} was destroyed "
                f"(segments removed) while this process was attached: its tables are gone. "
                f"Attach again once it is re-created (Runtime.attach(name))")
        return 0

    def allocate_map_id(self):
        """A fresh map id: ids grow and are never reused."""
        self.usable()
        # relaxed: uniqueness needs only atomicity; nothing is published by it
        return shm_fetch_add_relaxed(&self.hdr.next_map_id, 1)

    def bump_freed_generation(self):
        self.usable()
        # release: readers that see the new generation see the map states written before
        return shm_fetch_add_seq_cst(&self.hdr.freed_generation, 1) + 1

    @property
    def freed_generation(self):
        self.usable()
        # acquire: pairs with bump_freed_generation
        return shm_load_acquire(&self.hdr.freed_generation)

    def stats(self):
        self.usable()
        cdef control_header* h = self.hdr
        cdef uint64_t head = shm_load_acquire(&h.gp_recent_head)
        n = min(head, SHMRCU_GP_RECENT)
        recent = sorted(h.gp_recent_ns[(head - 1 - i) % SHMRCU_GP_RECENT] for i in range(n))
        def pct(q):
            return recent[min(len(recent) - 1, int(q * len(recent)))] / 1000.0 if recent else None
        return {
            "global_epoch": shm_load_acquire(&h.global_epoch),
            "completed_epoch": shm_load_acquire(&h.completed_epoch),
            "grace_periods": shm_load_relaxed(&h.grace_periods),
            "gp_wait_ns_total": shm_load_relaxed(&h.gp_wait_ns_total),
            "gp_p50_us": pct(0.50),
            "gp_p99_us": pct(0.99),
            "slots_reclaimed": shm_load_relaxed(&h.slots_reclaimed),
            "membarrier_fallbacks": shm_load_relaxed(&h.membarrier_fallbacks),
            "controller_pid": shm_load_relaxed(&h.controller_pid),
        }

    def slot_info(self, int index):
        """A snapshot of one slot (None if free)."""
        self._check_index(index)
        cdef worker_slot* s = &self.slots[index]
        # acquire: the owner's fields were written before it published ACTIVE
        cdef uint64_t state = shm_load_acquire(&s.state)
        if slot_status(state) != SHMRCU_SLOT_ACTIVE:
            return None
        ctr = shm_load_acquire(&s.ctr)
        g = shm_load_acquire(&self.hdr.global_epoch)
        return {
            "slot": index, "pid": s.pid, "worker_id": s.worker_id, "epoch": ctr,
            "online": ctr != 0, "epoch_lag": (g - ctr) if ctr else 0,
            "events": s.events, "batches": s.batches, "quiescent_states": s.quiescent_states,
            "last_advance_ns": s.last_advance_ns, "restarts": s.restarts,
            # acquire: pairs with mark_freed_seen's release (the munmaps came first)
            "freed_seen": shm_load_acquire(&s.freed_seen),
            "alive": shm_ofd_held(self.check_fd, SHMRCU_LOCK_SLOT_BASE + index) == 1,
        }

    def readers(self):
        return [i for i in (self.slot_info(k) for k in range(self.hdr.max_workers)) if i]

    def _check_index(self, int index):
        self.usable()
        if self.slots == NULL:
            raise ReaderClosed("control block not validated")
        if not 0 <= index < <int>self.hdr.max_workers:
            raise IndexError(f"slot {index} out of range 0..{self.hdr.max_workers - 1}")

    # -- controller lease ------------------------------------------------------
    def try_lease(self):
        """Take the controller lease (an OFD lock the kernel drops at our death).

        Returns 0 on success, else the pid recorded by the current holder."""
        self.usable()
        cdef int r = shm_ofd_lock(self.check_fd, SHMRCU_LOCK_CONTROLLER)
        if r == 0:
            # relaxed: informational; the lock itself is the lease
            shm_store_relaxed(&self.hdr.controller_pid, getpid())
            # relaxed: counts takeovers, read for statistics only
            shm_fetch_add_relaxed(&self.hdr.controller_epoch, 1)
            return 0
        if r in (-11, -13):   # EAGAIN / EACCES: someone else holds it
            return shm_load_relaxed(&self.hdr.controller_pid) or -1
        raise OSError(-r, "controller lease: " + os.strerror(-r))

    def release_lease(self):
        self.usable()
        shm_store_relaxed(&self.hdr.controller_pid, 0)
        shm_ofd_unlock(self.check_fd, SHMRCU_LOCK_CONTROLLER)

    def controller_alive(self):
        """True if some open file description holds the controller lease."""
        self.usable()
        return shm_ofd_held(self.check_fd, SHMRCU_LOCK_CONTROLLER) == 1

    # -- slots ---------------------------------------------------------------
    def claim_slot(self, int lock_fd, int worker_id=-1, freed_seen=None):
        """Take a free slot for this process; its OFD lock goes on ``lock_fd``.

        ``freed_seen``: the freed generation this process has really unmapped (a new
        slot must not claim more, or barrier() would pass while we still map)."""
        self.usable()
        cdef uint64_t seen = shm_load_acquire(&self.hdr.freed_generation) if freed_seen is None \
            else <uint64_t>freed_seen
        for attempt in range(3):
            index = self._try_claim(lock_fd, worker_id, seen)
            if index >= 0:
                return index
            # maybe dead owners hold every slot: reclaim them and look again
            reclaimed = 0
            for i in range(self.hdr.max_workers):
                reclaimed += self.reclaim_if_dead(i)
            if not reclaimed:
                time.sleep(0.001 * attempt)
        raise NoFreeSlot(f"all {self.hdr.max_workers} worker slots of runtime "
                         f"{(<bytes>self.hdr.name).decode(errors="replace")!r} are in use "
                         "(max_workers); close idle readers or create the runtime with a larger max_workers")

    cdef int _try_claim(self, int lock_fd, int worker_id, uint64_t freed_seen) except -2:
        cdef worker_slot* s
        cdef uint64_t state, claiming, active
        cdef int i
        for i in range(<int>self.hdr.max_workers):
            s = &self.slots[i]
            # acquire: a FREE we observe comes after the previous owner's last writes
            state = shm_load_acquire(&s.state)
            if slot_status(state) != SHMRCU_SLOT_FREE:
                continue
            claiming = (state & ~STATUS_MASK) | SHMRCU_SLOT_CLAIMING
            # acq_rel CAS: exactly one claimer wins the slot
            if not shm_cas_acq_rel(&s.state, state, claiming):
                continue
            if shm_ofd_lock(lock_fd, SHMRCU_LOCK_SLOT_BASE + i) != 0:
                # a reclaimer holds the byte for a moment: give the slot back
                shm_cas_acq_rel(&s.state, claiming, state)
                continue
            # relaxed: published by the release CAS to ACTIVE below
            shm_store_relaxed(&s.ctr, 0)
            s.pid = getpid()
            s.worker_id = worker_id
            s.attach_unix_ns = time.time_ns()
            s.events = s.batches = s.quiescent_states = s.restarts = 0
            s.last_advance_ns = shm_monotonic_ns()
            s.freed_seen = freed_seen
            active = (state & ~STATUS_MASK) | SHMRCU_SLOT_ACTIVE
            # acq_rel: publishes the fields above; fails if a reclaimer took a stuck CLAIMING
            if not shm_cas_acq_rel(&s.state, claiming, active):
                shm_ofd_unlock(lock_fd, SHMRCU_LOCK_SLOT_BASE + i)
                continue
            return i
        return -1

    def release_slot(self, int index, int lock_fd):
        """Give a slot back (its owner, at close)."""
        self._check_index(index)
        cdef worker_slot* s = &self.slots[index]
        # acquire: we compare against the state we published ourselves
        cdef uint64_t state = shm_load_acquire(&s.state)
        # release: our reads are over before a waiter sees 0
        shm_store_release(&s.ctr, 0)
        if slot_status(state) == SHMRCU_SLOT_ACTIVE:
            # acq_rel: FREE before we drop the lock, so no reclaimer mistakes a slot
            # being given back for a dead owner's; fails harmlessly if one already did
            shm_cas_acq_rel(&s.state, state, next_free_state(state))
        shm_ofd_unlock(lock_fd, SHMRCU_LOCK_SLOT_BASE + index)

    cdef bint reclaim_if_dead(self, int index) noexcept nogil:
        """Free a slot whose owner died (its OFD lock is gone). True if reclaimed.

        Exclusive within and across processes: the byte is taken through a
        description of our own (locks through one shared description never
        conflict), and the slot is written only if its state -- generation
        included -- is still the one found dead."""
        cdef worker_slot* s = &self.slots[index]
        # acquire: see the owner's published state before probing its lock
        cdef uint64_t state = shm_load_acquire(&s.state)
        cdef bint reclaimed = False
        cdef int fd
        if slot_status(state) == SHMRCU_SLOT_FREE:
            return False
        if shm_ofd_held(self.check_fd, SHMRCU_LOCK_SLOT_BASE + index) != 0:
            return False            # owner alive (or probe failed: assume alive)
        if self.lock_path_c == NULL:
            return False
        fd = c_open(self.lock_path_c, O_RDWR | O_CLOEXEC)
        if fd < 0:
            return False
        # hold the byte ourselves: no claimer and no other reclaimer can act meanwhile
        if shm_ofd_lock(fd, SHMRCU_LOCK_SLOT_BASE + index) == 0:
            # acquire: re-read under the lock; a changed state means someone else acted
            if shm_load_acquire(&s.state) == state:
                # release: the slot no longer holds anything; waiters may pass it
                shm_store_release(&s.ctr, 0)
                # acq_rel: publishes ctr = 0 with the FREE state
                if shm_cas_acq_rel(&s.state, state, next_free_state(state)):
                    # relaxed: statistics only
                    shm_fetch_add_relaxed(&self.hdr.slots_reclaimed, 1)
                    reclaimed = True
        c_close(fd)                 # drops the byte
        return reclaimed

    def reclaim_dead(self):
        """Reclaim every slot whose owner died; returns how many."""
        self.usable()
        n = 0
        for i in range(self.hdr.max_workers):
            n += self.reclaim_if_dead(i)
        return n
