"""WorkerPool: N worker processes running a program on their sources, supervised.

Why ``spawn``: the pool's process is a controller -- it may run the
controller's deferred-free thread, our supervisor thread, and hold locks
(the controller lock, the import lock, malloc's).  ``fork`` would copy those
locks in whatever state another thread left them, and the child could
deadlock on a lock nobody will ever release.  ``spawn`` starts a fresh
interpreter (fork + exec at once), which owns nothing it did not create.
Its cost -- a new interpreter per worker, ~100 ms -- is paid once per start.

Why a ledger map: each worker counts the events it applied in the pool's
ledger (``programs/_ledger.h``), an ``array`` map that survives the worker.
A worker's RCU slot is reset when its dead owner's slot is reclaimed, the
ledger is not, so ``applied`` stays exact across SIGKILL and restarts.

Supervision: one thread waits on every worker's process sentinel and message
pipe.  A worker that exits is noticed at once (within ``POLL_S`` at worst):
its slot is reclaimed, its ledger journal settled, and a replacement started
-- immediately the first time, then with a doubling back-off while it keeps
dying young (a crash loop must not spin).  Programs and sources that raise
send their traceback over the worker's own pipe (a pipe per worker: no lock
shared between processes that can die holding it).
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from typing import Any

from . import programs, worker
from .programs._ledger import FIELDS as LEDGER_FIELDS
from .programs._ledger import FORMAT as LEDGER_FORMAT
from .programs._ledger import Ledger
from .sources import as_source

POLL_S = 0.1                  # supervisor wake-up when nothing happens
BACKOFF_MIN_S = 0.05          # restart delay after a young death, doubling ...
BACKOFF_MAX_S = 5.0           # ... up to this
YOUNG_S = 1.0                 # a worker that dies younger than this is crash-looping
MAX_ERRORS = 20               # tracebacks kept in stats()
_pool_ids = itertools.count()


class PoolError(RuntimeError):
    """The pool cannot start (bad program or source, runtime closed)."""


@dataclass
class _Worker:
    id: int
    incarnation: int = 0
    proc: Any = None
    conn: Any = None
    started: float = 0.0
    next_start: float = 0.0
    backoff: float = 0.0
    restarts: int = 0
    state: str = "new"          # new/starting/running/waiting/done/stopped
    last_exit: int | None = None
    last_error: str | None = None
    messages: list = field(default_factory=list)


class WorkerPool:
    """``with WorkerPool(rt, workers=2, program="traffic_accounting", source=Traffic()) as pool:``

    ``program``: a built-in name, ``"module:function"`` or a module-level
    callable ``program(ctx, batch)``; ``source``: a spec from
    ``shmrcu.sources`` (default ``Traffic()``), a callable or a name.
    ``args`` is passed to programs as ``ctx.args``.  ``pin`` pins worker i to
    the i-th CPU this process may run on.
    """

    def __init__(self, rt, workers: int = 2, program: Any = "traffic_accounting",
                 source: Any = None, *, pin: bool = True, args: dict | None = None,
                 restart: bool = True):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if workers > rt.max_workers:
            raise ValueError(f"{workers} workers do not fit runtime {rt.name!r} "
                             f"(max_workers={rt.max_workers})")
        # resolve in this process: a bad name fails here, before any worker starts
        self._program_spec, _ = programs.resolve(program)
        self._source = as_source(source)
        self.rt = rt
        self.n = workers
        self.pin = pin
        self.args = dict(args or {})
        self.restart = restart
        self._workers = [_Worker(i) for i in range(workers)]
        self._mp = mp.get_context("spawn")
        self._lock = threading.RLock()
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._ledger_map = None
        self._ledgers: list[Ledger] = []
        self._errors: list[dict] = []
        self._recoveries: dict[str, int] = {}
        self._started = False
        self._stopped = False
        self._final: dict | None = None     # stats() at stop, served once the runtime is closed
        self._cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._pid = os.getpid()             # the workers are this process's children only

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "WorkerPool":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, wait_ready: float | None = 30.0) -> "WorkerPool":
        """Create the ledger, spawn the workers and the supervisor.

        Waits up to ``wait_ready`` seconds for every worker to register."""
        if self._started:
            raise PoolError("pool already started")
        self._started = True
        self._ledger_map = self.rt.create_map(
            "array", key="I", value=LEDGER_FORMAT, max_entries=self.n,
            name=f"pool.{os.getpid()}.{next(_pool_ids)}.ledger")
        self._ledgers = [Ledger(self._ledger_map, i) for i in range(self.n)]
        try:
            with self._lock:
                for w in self._workers:
                    self._spawn(w)
            self._thread = threading.Thread(target=self._supervise, name="shmrcu-pool", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()                  # no half-started pool: reap what did start
            raise
        if wait_ready:
            self.wait_ready(wait_ready)
        return self

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait until every worker is registered and running (or finished); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(w.state not in ("new", "starting", "waiting") for w in self._workers):
                    return True
            time.sleep(0.01)
        return False

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker finished its (bounded) source; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            with self._lock:
                if all(w.state == "done" for w in self._workers):
                    return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float = 5.0) -> dict:
        """Stop every worker cleanly (SIGTERM: finish the batch, go offline,
        release the slot); SIGKILL those still running after ``timeout``.
        Returns the final ``stats()``."""
        if os.getpid() != self._pid:
            return {}        # a fork() child's copy: the workers are the parent's to stop
        if not self._started or self._stopped:
            return self.stats() if self._started else {}
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + timeout
        with self._lock:
            live = [w for w in self._workers if w.proc is not None]
            for w in live:
                if w.proc.is_alive():
                    try:
                        os.kill(w.proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for w in live:
                w.proc.join(max(0.0, deadline - time.monotonic()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join(5.0)
                self._on_exit(w, restart=False)
            self._stopped = True
            self._final = self.stats()
        return self._final

    # -- supervision ---------------------------------------------------------
    def _spawn(self, w: _Worker) -> None:
        w.incarnation += 1
        self._ledgers[w.id].set("incarnation", w.incarnation)
        cpu = self._cpus[w.id % len(self._cpus)] if self.pin and self._cpus else None
        spec = worker.WorkerSpec(self.rt.name, w.id, w.incarnation - 1, self._program_spec,
                                 self._source, self._ledger_map.id, cpu, self.args)
        parent_conn, child_conn = self._mp.Pipe(duplex=False)
        # block SIGINT while spawning: the child inherits the blocked mask, so a
        # Ctrl-C that arrives while it boots cannot kill it before it ignores SIGINT
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            p = self._mp.Process(target=worker.main, args=(spec, child_conn),
                                 name=f"shmrcu-worker-{w.id}", daemon=True)
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child_conn.close()
        w.proc, w.conn = p, parent_conn
        w.started = time.monotonic()
        w.state = "starting"

    def _supervise(self) -> None:
        while not self._stop_evt.is_set():
            with self._lock:
                waitables = [w.proc.sentinel for w in self._workers if w.proc is not None]
                waitables += [w.conn for w in self._workers if w.conn is not None]
                timeout = POLL_S
                pending = [w.next_start for w in self._workers if w.proc is None and w.state == "waiting"]
                if pending:
                    timeout = max(0.0, min(timeout, min(pending) - time.monotonic()))
            if waitables:
                mp_wait(waitables, timeout)
            else:
                self._stop_evt.wait(timeout)
            if self._stop_evt.is_set():
                return
            self.check()

    def check(self) -> None:
        """One supervision pass: read messages, handle exits, start replacements.
        The supervisor thread runs it continuously; callers may run it too."""
        with self._lock:
            now = time.monotonic()
            for w in self._workers:
                self._drain(w)
                if w.proc is not None and not w.proc.is_alive():
                    self._on_exit(w, restart=self.restart and not self._stop_evt.is_set())
                if w.proc is None and w.state == "waiting" and now >= w.next_start \
                        and not self._stop_evt.is_set():
                    self._spawn(w)

    def settle(self, timeout: float = 2.0) -> None:
        """Make the ledger final for every dead worker before reading totals.

        A grace-period waiter may reclaim a dead worker's slot before the
        supervisor sees the death; the controller calls this after a grace
        period and before it reads (and clears) retired maps, so an event the
        dead worker had in flight is settled against the map first."""
        with self._lock:
            active = {r["pid"] for r in self.rt.readers_info()}
            for w in self._workers:
                if w.proc is None or not w.proc.is_alive():
                    continue
                registered = self._ledgers[w.id].read()["pid"] == w.proc.pid
                if registered and w.proc.pid not in active:
                    w.proc.join(timeout)      # slot gone: it is dying, let it finish
            self.check()

    def _drain(self, w: _Worker) -> None:
        while w.conn is not None:
            try:
                if not w.conn.poll():
                    return
                kind, text = w.conn.recv()
            except (EOFError, OSError):
                w.conn.close()
                w.conn = None
                return
            if kind == "ready":
                w.state = "running"
            elif kind in ("done", "stopped"):
                w.state = kind
            else:                      # program / source / setup error with traceback
                w.last_error = text
                self._errors.append({"worker": w.id, "incarnation": w.incarnation, "kind": kind,
                                     "pid": w.proc.pid if w.proc else None, "traceback": text,
                                     "time": time.time()})
                del self._errors[:-MAX_ERRORS]

    def _on_exit(self, w: _Worker, restart: bool) -> None:
        w.proc.join(1.0)
        self._drain(w)
        if w.conn is not None:
            w.conn.close()
            w.conn = None
        w.last_exit = w.proc.exitcode
        lived = time.monotonic() - w.started
        w.proc = None
        self.rt._control.reclaim_dead()       # free its slot now, not at the next waiter
        self._recover(w)
        if w.state == "done" and w.last_exit == 0:
            return                             # its source is exhausted: nothing to restart
        if not restart:
            w.state = "stopped"
            return
        w.restarts += 1
        # first death: restart at once; dying young again and again: back off
        w.backoff = 0.0 if lived >= YOUNG_S else min(max(2 * w.backoff, BACKOFF_MIN_S), BACKOFF_MAX_S)
        w.next_start = time.monotonic() + w.backoff
        w.state = "waiting"
        if w.last_exit is not None and w.last_exit < 0 and w.last_error is None:
            w.last_error = f"killed by signal {-w.last_exit}"

    def _recover(self, w: _Worker) -> None:
        ledger = self._ledgers[w.id]
        if not ledger.in_flight():
            return
        target = None
        try:
            target = self.rt.map(ledger.read()["j_map"])
        except Exception:   # noqa: BLE001 -- map gone: recover() counts the event as uncertain
            target = None
        outcome = ledger.recover(target)
        self._recoveries[outcome] = self._recoveries.get(outcome, 0) + 1

    # -- statistics ----------------------------------------------------------
    @property
    def ledger_map(self):
        return self._ledger_map

    def pids(self) -> list[int | None]:
        with self._lock:
            return [w.proc.pid if w.proc is not None else None for w in self._workers]

    def applied(self) -> int:
        """Events applied by every worker, all incarnations (from the ledger)."""
        return sum(l.applied for l in self._ledgers)

    def stats(self) -> dict:
        """Per-worker and total counters: ledger (applied, batches, ...), slot, restarts, errors."""
        if self._final is not None and self.rt.closed:
            return self._final
        with self._lock:
            slots = {}
            if not self.rt.closed:
                slots = {r["pid"]: r for r in self.rt.readers_info()}
            per = []
            for w in self._workers:
                led = self._ledgers[w.id].read() if self._ledgers else {k: 0 for k in LEDGER_FIELDS}
                pid = w.proc.pid if w.proc is not None else None
                slot = slots.get(pid, {})
                per.append({
                    "id": w.id, "pid": pid, "state": w.state,
                    "alive": w.proc is not None and w.proc.is_alive(),
                    "restarts": w.restarts, "incarnation": w.incarnation,
                    "applied": led["applied"], "batches": led["batches"], "dropped": led["dropped"],
                    "hits": led["hits"], "misses": led["misses"], "uncertain": led["uncertain"],
                    "slot": slot.get("slot"), "slot_events": slot.get("events"),
                    "quiescent_states": slot.get("quiescent_states"),
                    "epoch_lag": slot.get("epoch_lag"), "last_exit": w.last_exit,
                    "last_error": w.last_error,
                })
            return {
                "workers": self.n,
                "alive": sum(p["alive"] for p in per),
                "restarts": sum(w.restarts for w in self._workers),
                "applied": sum(p["applied"] for p in per),
                "batches": sum(p["batches"] for p in per),
                "dropped": sum(p["dropped"] for p in per),
                "uncertain": sum(p["uncertain"] for p in per),
                "recoveries": dict(self._recoveries),
                "per_worker": per,
                "errors": list(self._errors),
            }
