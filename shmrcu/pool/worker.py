"""One pool worker process: take a batch, run the program, report a quiescent state.

The loop is QSBR (see ``_epoch.pyx``): the worker stays online while it works
and reports a quiescent state between batches -- the only moment it holds no
map reference -- so a batch costs the program nothing in RCU terms.  When its
source has nothing (or may block) it goes offline, so an idle worker never
holds up a grace period, and comes back online before the next batch.

Stopping: the pool sends SIGTERM.  The handler only sets a flag, and Python
runs it between bytecodes -- never inside a nogil kernel -- so the current
batch is finished, counted and followed by a quiescent state before the
worker goes offline and releases its slot.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

IDLE_NAP_MIN_S = 0.0005      # an idle worker naps 0.5 ms, doubling up to 20 ms
IDLE_NAP_MAX_S = 0.02
EXIT_PROGRAM_ERROR = 3       # exit codes the pool understands
EXIT_SOURCE_ERROR = 4
EXIT_SETUP_ERROR = 5
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (it pickles: workers are spawned)."""
    runtime: str
    worker_id: int
    incarnation: int
    program: Any
    source: Any
    ledger_map: int          # id of the pool's ledger map
    cpu: int | None = None   # pin to this CPU
    args: dict = field(default_factory=dict)


class WorkerContext:
    """What a program sees as ``ctx``."""

    def __init__(self, spec: WorkerSpec, rt, reader, ledger):
        self.worker_id = spec.worker_id
        self.incarnation = spec.incarnation
        self.runtime = rt
        self.reader = reader
        self.slot = reader.slot_index        # the copy index of per-worker maps
        self.ledger = ledger
        self.applied = ledger.applied        # events applied by earlier incarnations
        self.args = dict(spec.args)
        self.state: dict = {}                # free for the program's and source's own use
        self._by_name: dict[str, Any] = {}
        self._by_id: dict[int, Any] = {}

    def map(self, name_or_id: str | int):
        """An open map handle, cached per process (reopened if it was closed)."""
        cache = self._by_id if isinstance(name_or_id, int) else self._by_name
        m = cache.get(name_or_id)
        if m is None or m.closed:
            m = cache[name_or_id] = self.runtime.map(name_or_id)
        return m

    def inner(self, outer: str | int, key: Any = 0):
        """The inner map ``outer[key]`` now.  Resolve it once per batch: under
        QSBR the reference stays valid until this worker's next quiescent state."""
        return self.map(outer)[key]


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM us if the pool process dies (Linux), so an
    orphaned worker does not keep a slot and a CPU forever."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):   # not Linux: the parent-pid check below still works
        pass


def _report(conn, kind: str, exc: BaseException | None = None) -> None:
    text = "".join(traceback.format_exception(exc)) if exc is not None else ""
    try:
        conn.send((kind, text))
    except (OSError, EOFError):
        pass
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()


def main(spec: WorkerSpec, conn) -> None:
    """Entry point of a worker process (``multiprocessing`` target)."""
    # Ctrl-C goes to the whole process group; the pool owns shutdown, so the
    # worker ignores SIGINT and stops on SIGTERM at a batch boundary.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    _die_with_parent()
    parent = os.getppid()
    if spec.cpu is not None:
        try:
            os.sched_setaffinity(0, {spec.cpu})
        except OSError:                  # CPU went away (cgroup change): run unpinned
            pass

    from . import programs
    from .programs._ledger import Ledger
    from ..runtime import Runtime
    from .sources import as_batch

    try:
        rt = Runtime.attach(spec.runtime)
    except BaseException as e:
        _report(conn, "setup", e)
        sys.exit(EXIT_SETUP_ERROR)
    code = 0
    try:
        reader = rt.reader(worker_id=spec.worker_id)
        ledger = Ledger(rt.map(spec.ledger_map), spec.worker_id)
        ledger.set("pid", os.getpid())
        ledger.set("slot", reader.slot_index)
        ctx = WorkerContext(spec, rt, reader, ledger)
        try:
            program, counts_applied = programs.bind(programs.load(spec.program), ctx)
            source = spec.source.open(ctx)
        except BaseException as e:
            _report(conn, "setup", e)
            code = EXIT_SETUP_ERROR
            return
        conn.send(("ready", ""))
        code = _loop(spec, rt, reader, ledger, ctx, program, counts_applied, source, as_batch,
                     stopping, parent, conn)
    except BaseException as e:   # noqa: BLE001 -- reported to the pool, then exit non-zero
        _report(conn, "setup", e)
        code = EXIT_SETUP_ERROR
    finally:
        rt.close()                # offline + release the slot, unmap everything
        conn.close()
        if code:
            sys.exit(code)


def _loop(spec, rt, reader, ledger, ctx, program, counts_applied, source, as_batch,
          stopping, parent, conn) -> int:
    blocking = bool(getattr(spec.source, "blocking", True))
    next_batch = source.next_batch
    nap = IDLE_NAP_MIN_S
    quiescent, housekeeping, publish = reader.quiescent, rt.housekeeping, reader.publish
    sched_yield = getattr(os, "sched_yield", lambda: None)
    reader.online()
    while not stopping:
        if blocking:
            reader.offline()             # we may wait on the source: hold nothing meanwhile
        try:
            buf = next_batch()
            if buf is None:              # exhausted: a clean finish
                conn.send(("done", ""))
                return 0
            batch = as_batch(buf)
        except Exception as e:           # noqa: BLE001
            _report(conn, "source", e)
            return EXIT_SOURCE_ERROR
        n = batch.shape[0]
        if n == 0:
            reader.offline()
            housekeeping(reader)         # offline is quiescent: unmap freed maps while idle too
            time.sleep(nap)
            nap = min(nap * 2, IDLE_NAP_MAX_S)
            if os.getppid() != parent:   # orphaned (no PDEATHSIG here): stop
                return 0
            continue
        nap = IDLE_NAP_MIN_S
        reader.online()                  # no-op when already online
        try:
            program(ctx, batch)
        except Exception as e:           # noqa: BLE001
            _report(conn, "program", e)
            return EXIT_PROGRAM_ERROR
        if counts_applied:
            ledger.add(0, 1)
        else:
            ledger.add(n, 1)
        # QSBR: every map reference the program took is dead from here on
        before = reader.epoch
        quiescent()
        if reader.epoch != before:
            # a grace period is running: its waiter may be queued behind us on
            # this CPU (workers pinned to every core), so hand it the CPU now
            # instead of at the end of our time slice -- milliseconds otherwise
            sched_yield()
        housekeeping(reader)
        publish(n, 1)
    conn.send(("stopped", ""))
    return 0
