"""The controller: grace-period policy for outer updates, retire/free, barriers.

One process per runtime holds the controller lease (an OFD lock on the control
segment, dropped by the kernel if the process dies).  Everything it needs to
continue lives in shared memory -- a retired map's state word carries the
grace-period token that must elapse before it is freed -- so a new controller
that takes over simply finishes the frees its predecessor left behind.

The four proposals of the 2018 bpf(2) debate, as one API:

* global ``synchronize()``           -- ``Runtime.synchronize`` (one grace period, any number of swaps)
* update-implies-sync + batching     -- ``outer[k] = m`` / ``outer.swap`` wait unless ``sync=False``;
                                        ``with rt.batch():`` waits once at exit
* per-map wait with a timeout        -- ``wait_unreferenced(m, timeout)``
* "memory actually freed" barrier    -- ``barrier()``: retired maps unlinked *and* unmapped everywhere
"""
from __future__ import annotations

import errno
import os
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from .core import segment as seg
from .errors import GracePeriodTimeout, MapClosed, MapInUse, StalledSlot

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime

FREE_POLL_S = 0.002          # the deferred-free thread polls pending grace periods this often
BARRIER_POLL_S = 0.001
RECLAIM_POLL_S = 0.05         # while frees wait, look for dead readers this often


class Controller:
    """Controller-side state of one runtime (private to the lease holder's process)."""

    def __init__(self, rt: "Runtime"):
        self.rt = rt
        self._lock = threading.Lock()          # guards the two dicts below (controller only)
        self._pending: dict[int, tuple[int, int]] = {}   # map id -> (grace-period token, bytes)
        self._freed_bytes: dict[int, int] = {}           # freed, maybe still mapped somewhere
        # Held for a whole free (pop .. generation bump): barrier() takes it to wait for a
        # free the background thread has popped but not finished.
        self._freeing = threading.Lock()
        self._batch = threading.local()        # per thread: .depth, .dirty
        self.retire_lock = threading.Lock()    # retire vs this process's outer inserts
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._resume()

    def _resume(self) -> None:
        """Takeover: pick up the maps a previous controller retired but did not free."""
        if not any(n.endswith(".dir") for n in seg.runtime_segments(self.rt.name)):
            return                             # no map was ever created
        from . import maps
        retired = [i["id"] for i in maps.list_maps(self.rt) if i["state"] == "retired"]
        if retired:
            # a grace period started now began after they left service: it covers them
            token = self.rt.start_grace_period()
            for map_id in retired:
                self._pending[map_id] = (token, _segment_bytes(self.rt, map_id))
            self._ensure_thread()

    # -- update-implies-sync ---------------------------------------------------
    def after_outer_update(self, sync: bool) -> None:
        """Called by outer maps after a successful update (never after a failed one)."""
        if not sync:
            return
        if getattr(self._batch, "depth", 0):
            self._batch.dirty = True
        else:
            self.rt.synchronize()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Defer the grace periods of this thread's outer updates inside to one, at exit.

        Per thread: another thread's updates meanwhile keep their own policy."""
        b = self._batch
        b.depth = getattr(b, "depth", 0) + 1
        try:
            yield
        finally:
            b.depth -= 1
            if b.depth == 0 and getattr(b, "dirty", False):
                b.dirty = False
                self.rt.synchronize()

    # -- retire and free -------------------------------------------------------
    def retire(self, m) -> None:
        """Take ``m`` out of service; it is freed after a grace period, in the background."""
        from . import maps
        if m.state != "live":
            raise MapClosed(f"map {m.name or m.id!r} (id {m.id}) is already {m.state}")
        # Retire excludes a concurrent outer insert of m (any thread, any process):
        # both hold a common lock from their check to their store (our inserts: the
        # retire lock; other processes': the directory lock), so an insert either
        # lands first (we see the reference) or sees m retired.
        with self.retire_lock, maps.directory_locked(self.rt):
            refs = outer_references(self.rt, m.id)
            if refs:
                where = ", ".join(f"{outer}[{key!r}]" for outer, key in refs)
                raise MapInUse(f"cannot retire map {m.name or m.id!r} (id {m.id}): still referenced "
                               f"by {where}; delete or replace those slots first", errno=errno.EBUSY)
            maps.set_map_state(self.rt, m, "retired")
        token = self.rt.start_grace_period()      # after the state change: covers every user
        size = _segment_bytes(self.rt, m.id)
        with self._lock:
            self._pending[m.id] = (token, size)
        self._ensure_thread()
        self._wake.set()

    def _free(self, map_id: int) -> None:
        from . import maps
        with self._freeing:
            with self._lock:
                entry = self._pending.pop(map_id, None)
            if entry is None:
                return
            maps.destroy_map(self.rt, map_id)     # state freed (mappers see it), unlinked
            with self._lock:
                self._freed_bytes[map_id] = entry[1]
            self.rt._control.bump_freed_generation()
        self.rt.housekeeping()                                    # our own mapping goes at once

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._free_loop, name="shmrcu-free", daemon=True)
            self._thread.start()

    def _free_loop(self) -> None:
        """Free retired maps as their grace periods elapse (like call_rcu's callback thread)."""
        next_reclaim = 0.0
        while not self._stop.is_set():
            with self._lock:
                pending = list(self._pending.items())
            if not pending:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            waiting = False
            for map_id, (token, _) in pending:
                try:
                    if self.rt.poll_grace_period(token):
                        self._free(map_id)
                    else:
                        waiting = True
                except Exception:      # runtime closed under us: stop quietly
                    if self.rt.closed:
                        return
                    raise
            if waiting and time.monotonic() >= next_reclaim:
                # polls never wait, so they never meet a dead reader: a reader killed in
                # a section would hold every free until someone synchronizes
                next_reclaim = time.monotonic() + RECLAIM_POLL_S
                try:
                    self.rt._control.reclaim_dead()
                except Exception:
                    if self.rt.closed:
                        return
                    raise
            self._stop.wait(FREE_POLL_S)

    def pending(self) -> dict:
        """Retired maps not yet freed, and freed maps not yet confirmed unmapped (bytes)."""
        with self._lock:
            return {"retired": len(self._pending),
                    "retired_bytes": sum(b for _, b in self._pending.values()),
                    "unconfirmed_bytes": sum(self._freed_bytes.values())}

    # -- barriers ----------------------------------------------------------------
    def barrier(self, timeout: float | None = None) -> None:
        """Return once every retired map is unlinked and unmapped by every live reader."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            pending = sorted(self._pending.items())
        for map_id, (token, _) in pending:
            self.rt.wait_grace_period(token, _remaining(deadline))
            self._free(map_id)
        with self._freeing:       # a free the background thread began is in this barrier too
            pass
        control = self.rt._control
        generation = control.freed_generation
        self.rt.housekeeping()
        while True:
            control.reclaim_dead()
            self.rt.housekeeping()            # this process's own readers, without waiting 10 ms
            behind = [r for r in control.readers() if r["freed_seen"] < generation]
            if not behind:
                break
            if deadline is not None and time.monotonic() >= deadline:
                now = time.monotonic_ns()
                raise GracePeriodTimeout(
                    "barrier: freed maps are still mapped by live readers (they unmap at their "
                    "next quiescent state, section exit or when idle)",
                    [StalledSlot(r["slot"], r["pid"], r["epoch"], r["epoch_lag"],
                                 (now - r["last_advance_ns"]) / 1e9) for r in behind])
            time.sleep(BARRIER_POLL_S)
        with self._lock:
            self._freed_bytes.clear()

    def wait_unreferenced(self, m, timeout: float) -> None:
        """Block until ``m`` is in no outer slot and a grace period has passed since."""
        deadline = time.monotonic() + timeout
        while True:
            refs = outer_references(self.rt, m.id)
            if not refs:
                break
            if time.monotonic() >= deadline:
                where = ", ".join(f"{outer}[{key!r}]" for outer, key in refs)
                raise GracePeriodTimeout(f"map {m.name or m.id!r} (id {m.id}) is still referenced "
                                         f"after {timeout}s by {where}")
            time.sleep(BARRIER_POLL_S)
        self.rt.wait_grace_period(self.rt.start_grace_period(), _remaining(deadline))

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)


def outer_references(rt: "Runtime", map_id: int) -> list[tuple[str, object]]:
    """Every (outer map, key) whose slot holds ``map_id``."""
    from . import maps
    refs = []
    for info in maps.list_maps(rt):
        if info["kind"] not in ("array_of_maps", "hash_of_maps") or info["state"] != "live":
            continue
        outer = rt.map(info["id"])
        label = info["name"] or f"map {info['id']}"
        for k in outer.keys():
            try:
                if outer._lookup_id(k) == map_id:
                    refs.append((label, k))
            except KeyError:          # deleted since keys() looked: it holds nothing now
                pass
    return refs


def _segment_bytes(rt: "Runtime", map_id: int) -> int:
    try:
        return os.stat(seg.SHM_DIR + seg.shm_name(rt.name, f"map.{map_id}")).st_size
    except FileNotFoundError:
        return 0


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
