"""A runtime: one control segment plus the maps that belong to it.

``Runtime.create`` makes ``/shmrcu.<name>.ctl``; any process may
``Runtime.attach`` it, register readers and wait for grace periods.
"""
from __future__ import annotations

import errno
import os
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from .core import segment as seg
from .core._control import drop_writer_mark, hold_writer_mark
from .core._epoch import SECTIONS_FENCE, SECTIONS_MEMBARRIER, ControlBlock, Reader, membarrier_register
from .errors import (ControllerBusy, CorruptSegment, NotController, OutOfSharedMemory, ReaderClosed,
                     RuntimeDestroyed, RuntimeExists, RuntimeNotFound, ShmrcuError)

_SECTIONS = {"fence": SECTIONS_FENCE, "membarrier": SECTIONS_MEMBARRIER}
MAX_WORKERS_LIMIT = 4096
HOUSEKEEPING_S = 0.01        # idle processes drop freed maps within ~10 ms


# Every Runtime object of this process: a forked child disowns them (see _disown_after_fork).
_runtimes: "weakref.WeakSet[Runtime]" = weakref.WeakSet()


def _disown_runtimes_after_fork() -> None:
    for rt in list(_runtimes):
        rt._disown_after_fork()


seg.at_fork_in_child(_disown_runtimes_after_fork)


def _remove_destroyed_leftover(name: str) -> bool:
    """Unlink the segments of runtime ``name`` if it is marked destroyed and no controller
    holds it (a destroy() interrupted after marking); True if it did."""
    try:
        segment = seg.Segment.open(seg.shm_name(name, "ctl"))
    except (FileNotFoundError, PermissionError):
        return False
    try:
        if segment.mapping is None:
            return False
        control = ControlBlock(segment.mapping, segment.fd, f"/proc/self/fd/{segment.fd}")
        control.validate(name)
        if not control.destroyed_unix_ns or control.controller_alive():
            return False
    except (ShmrcuError, ValueError, OSError):
        return False
    finally:
        if "control" in locals():
            control.detach()                     # no use of the mapping after it goes
        segment.close()
    for n in seg.runtime_segments(name):
        seg.unlink(n)
    return True


class Runtime:
    """A shmrcu runtime seen from this process.

    Example::

        with shmrcu.Runtime.create("net") as rt:      # destroyed on exit
            with rt.reader() as r, r.section():
                ...
            rt.synchronize(timeout=1.0)

    fork: a child that inherits a Runtime never acts on the parent's slots, locks
    or lease; its first use re-attaches it (own descriptors, own slots, never the
    controller), and map handles it inherited re-map themselves.  Threads: readers
    and ``batch()`` are per thread.
    """

    def __init__(self, name: str, segment: seg.Segment, control: ControlBlock, created: bool):
        self.name = name
        self._created = created
        self._controller = None      # a controller.Controller while we hold the lease
        self._closed = False
        self._forked_from: int | None = None
        # debug mode: inner maps reached through outer maps check their section at every use
        self.debug = os.environ.get("SHMRCU_DEBUG", "") not in ("", "0")
        try:
            self._bind_control(segment, control)
        except BaseException:
            drop_writer_mark(control)
            segment.close()
            raise
        _runtimes.add(self)

    def _bind_control(self, segment: seg.Segment, control: ControlBlock, hold_mark: bool = True) -> None:
        """Everything this process owns for the runtime (fresh at attach and after fork)."""
        self._segment = segment
        self.__control = control
        self._pid = os.getpid()
        self._identity = control.identity           # (name, creation time): the incarnation
        if hold_mark:
            # this process's writer id and mark (whole-value writers tell the living
            # from the dead by it)
            hold_writer_mark(control, segment.fd, segment.path)
        self._needs_attach = False
        self._attach_lock = threading.Lock()
        self._readers: weakref.WeakSet[Reader] = weakref.WeakSet()
        self._thread = threading.local()       # .current: this thread's latest reader
        self._map_cache: dict[Any, Any] = {}   # id -> handle (maps layer), "directory" -> dir
        self._handles: weakref.WeakSet = weakref.WeakSet()   # every bound map handle
        self._handles_lock = threading.Lock()  # a WeakSet must not grow while another thread lists it
        self._freed_seen = control.freed_generation   # freed maps up to here are unmapped
        # freed maps seen but not yet unmapped: (token, handles, generation), oldest first
        self._unmap_pending: list = []
        self._freed_noticed = self._freed_seen
        # The housekeeper thread and a caller's thread may both notice a free;
        # only the slow path (a map was freed) takes it, never a read path.
        self._housekeeping_lock = threading.Lock()
        self._housekeeper_stop = threading.Event()
        self._housekeeper_thread = threading.Thread(
            target=self._housekeeper, args=(self._housekeeper_stop,),
            name=f"shmrcu-housekeeper-{self.name}", daemon=True)
        self._housekeeper_thread.start()

    @property
    def _control(self) -> ControlBlock:
        if self._needs_attach:
            self._reattach()
        return self.__control

    # -- fork ----------------------------------------------------------------
    def _disown_after_fork(self) -> None:
        """In a forked child, before user code runs: forget what the parent owns.

        Descriptors are already closed and mappings forgotten (shmrcu.segment);
        readers and the control block were disowned by the core.  Nothing here
        touches shared memory or locks: the child only stops believing it owns them."""
        self._forked_from = self._pid
        self._pid = os.getpid()
        self._controller = None            # the lease stays the parent's (its thread is gone)
        for m in list(self._handles):
            m._disown()                    # each re-maps itself at its next use
        self._map_cache = {}
        self._handles = weakref.WeakSet()
        self._handles_lock = threading.Lock()
        self._readers = weakref.WeakSet()
        self._thread = threading.local()
        self._unmap_pending = []
        self._attach_lock = threading.Lock()
        self._housekeeping_lock = threading.Lock()
        self._needs_attach = not self._closed

    def _reattach(self) -> None:
        """First use in a forked child: open the runtime again, as this process."""
        with self._attach_lock:
            if not self._needs_attach:
                return
            fresh = Runtime.attach(self.name)        # raises RuntimeNotFound if destroyed
            _runtimes.discard(fresh)
            if fresh._identity != self._identity:
                # destroyed and re-created since the fork: the maps this object knew are
                # gone (their ids may name other maps now) -- never serve the new ones
                fresh.close()
                self._needs_attach = False
                self._closed = self._gone = True
                raise RuntimeDestroyed(
                    f"runtime {self.name!r} was destroyed (and re-created) since this process "
                    f"forked from pid {self._forked_from}: attach the new one (Runtime.attach(name))")
            fresh._housekeeper_stop.set()
            fresh._housekeeper_thread.join()
            # its parts -- writer mark included -- are ours now
            self._bind_control(fresh._segment, fresh._Runtime__control, hold_mark=False)
            fresh._closed = True

    def _add_handle(self, handle) -> None:
        with self._handles_lock:
            self._handles.add(handle)

    def _handle_list(self) -> list:
        with self._handles_lock:
            return list(self._handles)

    def _rebind_inherited(self, handle) -> None:
        """A map handle inherited across fork: map it again (maps layer)."""
        from . import maps
        self._check_open()
        maps.rebind_inherited(self, handle)

    # -- lifecycle -----------------------------------------------------------
    @classmethod
    def create(cls, name: str, *, max_workers: int = 64, mode: int = 0o600,
               sections: str = "fence") -> "Runtime":
        """Create runtime ``name`` (``RuntimeExists`` if it is already there)."""
        seg.validate_name(name)
        if not isinstance(max_workers, int) or not 1 <= max_workers <= MAX_WORKERS_LIMIT:
            raise ValueError(f"max_workers must be an int in 1..{MAX_WORKERS_LIMIT}, got {max_workers!r}")
        if sections not in _SECTIONS:
            raise ValueError(f"sections must be one of {sorted(_SECTIONS)}, got {sections!r}")
        if not isinstance(mode, int) or mode & ~0o777:
            raise ValueError(f"mode must be permission bits like 0o600, got {mode!r}")
        sections_mode = _SECTIONS[sections]
        if sections_mode == SECTIONS_MEMBARRIER and not membarrier_register():
            sections_mode = SECTIONS_FENCE   # no usable membarrier here: readers fence
        name_ctl = seg.shm_name(name, "ctl")
        try:
            segment = seg.Segment.create(name_ctl, ControlBlock.segment_size(max_workers), mode)
        except FileExistsError:
            raise RuntimeExists(f"runtime {name!r} already exists ({seg.SHM_DIR}{name_ctl}); "
                                f"attach to it, or remove it with `shmrcu cleanup {name}`") from None
        try:
            control = ControlBlock(segment.mapping, segment.fd, f"/proc/self/fd/{segment.fd}")
            control.initialize(name, max_workers, sections_mode, mode)
        except BaseException:
            segment.close()
            segment.unlink()
            raise
        rt = cls(name, segment, control, created=True)
        try:
            rt.take_control()
        except BaseException:
            rt.close()
            seg.unlink(name_ctl)
            raise
        return rt

    @classmethod
    def attach(cls, name: str, *, controller: bool = False) -> "Runtime":
        """Open an existing runtime (``RuntimeNotFound`` if missing).

        ``controller=True`` also takes the controller lease (``ControllerBusy``
        if a live process holds it) and completes frees a dead controller left."""
        seg.validate_name(name)
        name_ctl = seg.shm_name(name, "ctl")
        try:
            segment = seg.Segment.open(name_ctl)
        except FileNotFoundError:
            raise RuntimeNotFound(f"runtime {name!r} not found: no {seg.SHM_DIR}{name_ctl} "
                                  "(is its controller running? `shmrcu list` shows runtimes)") from None
        try:
            if segment.mapping is None:
                raise CorruptSegment(f"control segment of runtime {name!r} is truncated: 0 bytes")
            control = ControlBlock(segment.mapping, segment.fd, f"/proc/self/fd/{segment.fd}")
            control.validate(name)
            if control.destroyed_unix_ns:
                raise RuntimeNotFound(f"runtime {name!r} is destroyed (its segments are being "
                                      "removed): create it again")
        except BaseException:
            segment.close()
            raise
        rt = cls(name, segment, control, created=False)
        if controller:
            try:
                rt.take_control()
            except BaseException:
                rt.close()
                raise
        return rt

    @classmethod
    def create_or_take_over(cls, name: str, *, max_workers: int = 64, mode: int = 0o600,
                            sections: str = "fence") -> "Runtime":
        """The long-lived controller's one call: create runtime ``name``, or take control
        of it if it exists (its previous controller died or released the lease;
        ``ControllerBusy`` if a live one holds it).  The runtime outlives this object:
        ``close()`` and ``with`` leave it alive for the readers attached to it (a
        restarted controller takes over where this one stopped); only ``destroy()``
        removes it.  The other arguments apply when it is created."""
        deadline = time.monotonic() + 5.0
        while True:
            try:
                rt = cls.attach(name, controller=True)
            except RuntimeNotFound:
                try:
                    rt = cls.create(name, max_workers=max_workers, mode=mode, sections=sections)
                except RuntimeExists:
                    # created meanwhile (take it over), or a destroyed one whose segments are
                    # still being removed -- or were left behind by a destroyer that died
                    if time.monotonic() >= deadline:
                        if not _remove_destroyed_leftover(name):
                            raise RuntimeExists(
                                f"runtime {name!r} kept appearing and disappearing while this "
                                "process tried to create or take it over") from None
                    time.sleep(0.01)
                    continue
            rt._created = False              # `with` closes, never destroys
            return rt

    # -- the controller lease ----------------------------------------------------
    def take_control(self) -> None:
        """Become this runtime's controller (``ControllerBusy`` names a live holder)."""
        self._check_open()
        if self._controller is not None:
            return
        holder = self._control.try_lease()
        if holder:
            raise ControllerBusy(f"runtime {self.name!r} already has a controller (pid {holder}); "
                                 "only one process may control a runtime at a time", pid=holder)
        from .controller import Controller
        self._controller = Controller(self)

    def release_control(self) -> None:
        """Give the lease up (another process may then take control)."""
        if self._controller is not None:
            self._controller.shutdown()
            self._controller = None
            self._control.release_lease()

    @property
    def controller(self):
        """The Controller while this process holds the lease; else ``NotController``."""
        if self._controller is None:
            self._check_open()
            if self._forked_from is not None:
                raise NotController(
                    f"this process (pid {os.getpid()}) is a fork() child of pid {self._forked_from}; "
                    f"the controller lease of runtime {self.name!r} stays with the process that took "
                    "it. To control the runtime from here use Runtime.attach(name, controller=True) "
                    "(after the controller released the lease or died)")
            raise NotController(f"this process is not the controller of runtime {self.name!r}: "
                                "use Runtime.attach(name, controller=True)")
        return self._controller

    def close(self) -> None:
        """Detach: close this process's readers and unmap.  Idempotent.

        In a forked child this closes only what the child opened itself."""
        if self._closed:
            return
        if self._needs_attach:             # a fork child that never used it: nothing of ours
            self._closed = True
            self._needs_attach = False
            return
        self._close_precheck()             # EBUSY before anything is torn down
        self.__control.begin_close()       # other threads' waits give up, then we go on
        self.release_control()
        self._housekeeper_stop.set()
        if self._housekeeper_thread is not threading.current_thread():
            self._housekeeper_thread.join()  # it reads the control segment: unmap after it
        with self._housekeeping_lock:
            for r in list(self._readers):
                r.close()
            for m in self._handle_list():
                m._close_mapping(self.close_wait_s)   # waits for a batch started since the check
            with self._handles_lock:
                cached = list(self._map_cache.values())
            for m in cached:
                close = getattr(m, "_close_mapping", None)
                if close is not None:
                    close()
            self._map_cache.clear()
            self._closed = True
            self._segment.close()
            self.__control.detach()            # late uses raise ReaderClosed, never fault
            drop_writer_mark(self.__control)

    close_wait_s = 5.0     # close() waits this long for other threads' batches, then EBUSY

    def _close_precheck(self) -> None:
        """What makes close() refuse (EBUSY), checked before anything is torn down: other
        threads' batches that do not end within close_wait_s, other threads' readers online."""
        self._wait_batches(self._handle_list())
        busy = [r for r in list(self._readers)
                if not r.closed and r.is_online and not r.owned_by_caller()]
        if busy:
            raise ShmrcuError(
                f"cannot close runtime {self.name!r}: reader slot(s) "
                f"{sorted(r.slot_index for r in busy)} of other threads are online or inside a "
                "section (closing would end their sections and unmap what they read); take them "
                "offline first", errno=errno.EBUSY)

    def _wait_batches(self, handles) -> None:
        """Wait (GIL released) until no other thread runs a nogil batch on ``handles``;
        EBUSY after ``close_wait_s`` -- never unmap a map under a running batch."""
        timeout = self.close_wait_s
        deadline = time.monotonic() + timeout
        while True:
            batching = [m for m in handles if getattr(m, "busy", 0)]
            if not batching:
                return
            if time.monotonic() >= deadline:
                raise ShmrcuError(
                    f"cannot close runtime {self.name!r}: other threads still run batch operations "
                    f"on map(s) {sorted(m.id for m in batching)} after {timeout} s (closing would "
                    "unmap them under those threads); let them finish first", errno=errno.EBUSY)
            time.sleep(0.001)

    def destroy(self) -> list[str]:
        """Unlink every segment of this runtime (the controller's job); returns their names.

        Processes still attached stop serving it: every map is marked freed and the
        control segment destroyed first, so their next map access, section, quiescent
        point or runtime call raises ``RuntimeDestroyed`` -- never a stale table."""
        if not self.is_controller:
            raise NotController(f"only the controller of runtime {self.name!r} may destroy it "
                                "(Runtime.attach(name, controller=True) takes control)")
        self._close_precheck()                   # an EBUSY close must not leave it marked
        self._mark_destroyed()
        self.close()
        removed = [n for n in seg.runtime_segments(self.name) if seg.unlink(n)]
        return removed

    def _mark_destroyed(self) -> None:
        """Tell every attached process that this runtime is going away (destroy, cleanup)."""
        from . import maps
        # the runtime first: a reader that finds a map FREED then always learns why
        self.__control.mark_destroyed()
        maps.mark_all_freed(self)
        self.__control.bump_freed_generation()   # housekeepers unmap what they still map

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._created and self.is_controller and self._forked_from is None:
            self.destroy()
        else:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else \
            "inherited across fork" if self._needs_attach else f"epoch={self._control.global_epoch}"
        return f"<shmrcu.Runtime {self.name!r} {state}>"

    # -- facts ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            if getattr(self, "_gone", False):
                raise RuntimeDestroyed(f"runtime {self.name!r} was destroyed since this process "
                                       "forked: attach the new one (Runtime.attach(name))")
            raise ReaderClosed(f"runtime {self.name!r} is closed")
        if self._needs_attach:
            self._reattach()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def incarnation(self) -> int:
        """This runtime's incarnation: its creation time (ns since the epoch), recorded in the
        control header.  A runtime destroyed and re-created under the same name has another."""
        self._check_open()
        return self._control.identity[1]

    @property
    def is_controller(self) -> bool:
        return self._controller is not None

    @property
    def max_workers(self) -> int:
        return self._control.max_workers

    @property
    def mode(self) -> int:
        return self._control.mode

    @property
    def sections(self) -> str:
        return "membarrier" if self._control.sections_mode == SECTIONS_MEMBARRIER else "fence"

    def stats(self) -> dict:
        """Epochs, grace-period counts and latencies, reclaimed slots."""
        self._check_open()
        return self._control.stats()

    def readers_info(self) -> list[dict]:
        """One snapshot per registered reader (slot, pid, epoch, lag, counters, alive)."""
        self._check_open()
        return self._control.readers()

    # -- readers -------------------------------------------------------------
    def reader(self, worker_id: int = -1) -> Reader:
        """Register a reader (a worker slot) for the calling thread; ``NoFreeSlot`` when
        all are taken.  Readers are per thread: make one in each thread that reads."""
        self._check_open()
        self._control.raise_if_destroyed()
        lock_fd = self._segment.reopen_fd()   # its own OFD: the slot lock dies with us
        # under the housekeeping lock: the slot starts at what this process has really
        # unmapped, and no housekeeping pass can advance that before r is registered
        with self._housekeeping_lock:
            try:
                r = Reader(self._control, lock_fd, worker_id, self._freed_seen)
            except BaseException:
                seg.close_owned_fd(lock_fd)
                raise
            self._readers.add(r)
        self._thread.current = weakref.ref(r)
        return r

    @property
    def current_reader(self) -> Reader | None:
        """The reader the calling thread registered most recently and still open
        (per-worker maps write that reader's copy)."""
        ref = getattr(self._thread, "current", None)
        r = ref() if ref is not None else None
        return r if r is not None and not r.closed else None

    def housekeeping(self, reader: Reader | None = None) -> None:
        """Unmap maps the controller freed, once none of this process's readers can
        still be using them.  Call it at a quiescent point; idle processes need not
        (a background thread does it).

        Costs one atomic load when no map was freed since the last call.  A freed
        map was out of every outer slot for a whole grace period, but a handle
        reached directly (``rt.map``) may still be in use by a section of another
        thread here, so unmapping waits for a *local* grace period: every reader
        slot of this process offline or past a token started after the free was
        seen.  Then every reader of this Runtime records the unmap, which is what
        ``barrier()`` waits for."""
        if self._needs_attach or self._closed:
            return
        gen = self._control.freed_generation
        if gen == self._freed_seen:
            return
        from . import maps
        with self._housekeeping_lock:
            if self._closed:
                return
            gen = self._control.freed_generation    # re-read: another thread may have done it
            if gen != self._freed_noticed:
                # the generation first, then the handles' states: every map freed up to
                # `gen` shows FREED now; the token starts after we looked.  Each batch
                # keeps its own token (a FIFO), so new frees never postpone older unmaps.
                queued = {id(m) for _, hs, _ in self._unmap_pending for m in hs}
                fresh = [m for m in maps.freed_handles(self) if id(m) not in queued]
                self._unmap_pending.append((self._control.start_grace_period(), fresh, gen))
                self._freed_noticed = gen
            # tokens grow along the FIFO: the newest batch whose token has passed
            # locally covers every older one
            done = 0
            for i in range(len(self._unmap_pending) - 1, -1, -1):
                token, handles, _ = self._unmap_pending[i]
                if not any(not m.closed for _, hs, _ in self._unmap_pending[:i + 1] for m in hs) \
                        or self._control.local_readers_past(token):
                    done = i + 1
                    break
            if not done:
                return                               # a section here may still use one
            if any(m.busy for _, hs, _ in self._unmap_pending[:done] for m in hs if not m.closed):
                return                               # a nogil batch of another thread: later
            for _, handles, seen in self._unmap_pending[:done]:
                maps.close_handles(self, handles)
            del self._unmap_pending[:done]
            self._freed_seen = seen
            for r in list(self._readers):
                r.mark_freed_seen(seen)

    def _housekeeper(self, stop: threading.Event) -> None:
        """Background: drop freed maps in processes that never call housekeeping
        (idle readers, processes that only hold handles)."""
        while not stop.wait(HOUSEKEEPING_S):
            try:
                self.housekeeping()
            except Exception:       # closed under us
                if self._closed or stop.is_set():
                    return
                raise

    # -- grace periods -------------------------------------------------------
    def synchronize(self, timeout: float | None = None) -> None:
        """Wait until every reader has passed a quiescent state (or is offline)."""
        self._check_open()
        self.__control.synchronize(timeout)

    def start_grace_period(self) -> int:
        """Start a grace period without waiting; returns its token."""
        self._check_open()
        return self.__control.start_grace_period()

    def poll_grace_period(self, token: int) -> bool:
        """True once the grace period ``token`` has elapsed; never blocks."""
        self._check_open()
        return self.__control.poll_grace_period(token)

    def wait_grace_period(self, token: int, timeout: float | None = None) -> None:
        """Block until grace period ``token`` has elapsed."""
        self._check_open()
        self.__control.wait_grace_period(token, timeout)

    @contextmanager
    def _waiting(self) -> Iterator[None]:
        """Around a blocking wait of the calling thread: ``SelfDeadlock`` inside its own
        section; its online QSBR readers wait offline (a quiescent state) and come back."""
        self._check_open()
        offline = self._control.prepare_wait()
        for r in offline:
            r.offline()
        try:
            yield
        finally:
            for r in offline:
                if not r.closed:
                    r.online()

    # -- controller operations ---------------------------------------------------
    def batch(self):
        """``with rt.batch():`` -- outer updates inside share one grace period, at exit."""
        return self.controller.batch()

    def retire(self, m) -> None:
        """Take map ``m`` out of service; freed (unlinked) after a grace period."""
        self.controller.retire(m)

    def barrier(self, timeout: float | None = None) -> None:
        """Wait until every retired map is unlinked and unmapped by every live reader."""
        controller = self.controller
        with self._waiting():
            controller.barrier(timeout)

    def wait_unreferenced(self, m, timeout: float) -> None:
        """Wait until ``m`` is in no outer slot and a grace period has passed since."""
        controller = self.controller
        with self._waiting():
            controller.wait_unreferenced(m, timeout)

    def _after_outer_update(self, sync: bool) -> None:
        """Outer maps call this after a successful update: the update-implies-sync policy."""
        if self._controller is not None:
            self._controller.after_outer_update(sync)
        elif sync:
            self.synchronize()

    # -- maps (the maps layer does the work) ---------------------------------
    def create_map(self, kind: str, *, wait_for_memory: bool = False, **spec: Any):
        """Create a map; see ``shmrcu.maps.create_map``.

        When /dev/shm is full, ``wait_for_memory=True`` runs ``barrier()`` (retired
        maps really give their memory back) and retries once."""
        from . import maps
        self._check_open()
        try:
            return maps.create_map(self, kind, **spec)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.ENOMEM) or isinstance(e, ShmrcuError):
                raise
            if wait_for_memory and self._controller is not None:
                self.barrier()
                try:
                    return maps.create_map(self, kind, **spec)
                except OSError as again:
                    e = again
            pending = self._controller.pending() if self._controller is not None else None
            hint = ""
            if pending and (pending["retired"] or pending["unconfirmed_bytes"]):
                hint = (f"; {pending['retired']} retired map(s) holding {pending['retired_bytes']} "
                        f"bytes are still pending and {pending['unconfirmed_bytes']} freed bytes "
                        "may still be mapped: pass wait_for_memory=True or call rt.barrier()")
            raise OutOfSharedMemory(f"no room in {seg.SHM_DIR} for map {spec.get('name') or kind!r}: "
                                    f"{e.strerror}{hint}", errno=e.errno) from e

    def map(self, name_or_id: str | int):
        """Open a map by name or id."""
        from . import maps
        self._check_open()
        self._control.raise_if_destroyed()
        return maps.open_map(self, name_or_id)

    def maps(self) -> list[dict]:
        """Describe every map of the runtime."""
        from . import maps
        self._check_open()
        return maps.list_maps(self)
