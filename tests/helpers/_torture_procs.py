"""The grace-period torture matrix: reader entry points and the controller side.

Matrix: {fence, membarrier} x {sections, qsbr} x {procs, threads, fork}.

Controller process (``run_cell``), all at once while the readers read:
  * updater (calling thread): ``_torture.update_once`` on the *main* area with
    ``rt.synchronize`` as its grace period;
  * poller thread: ``update_once`` on the *polled* area with
    ``start_grace_period`` + ``poll_grace_period`` as its grace period;
  * churn thread: create an inner map, fill it, swap it into slot 0 of the outer
    map (``sync=False``), ``retire`` the old one (freed by the controller's
    background thread after its grace period), poison each freed map through a
    private mapping (frees and the readers' housekeeping unmaps happen during
    the reads);
  * barrier thread (correct runs): ``barrier()`` every 20 ms, concurrently with
    the retires and the background free.

Readers (``_torture.matrix_read_loop``) check all three in every section or
QSBR batch: a poisoned or torn element, a freed or poisoned inner map is a
violation.  Reader models:
  * ``procs``: N spawned processes, one reader each;
  * ``threads``: one spawned process, N threads, one ``rt.reader()`` per thread;
  * ``fork``: one spawned parent attaches (and uses the runtime: a reader, a map
    lookup), then ``os.fork()``s N children; each child uses the *inherited*
    Runtime (``rt.reader()`` first: the child re-attaches), opens the areas
    itself, reads, and leaves with ``os._exit``.

Every entry point is importable by 'spawn' (tests/helpers/ is on sys.path there).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback

import shmrcu
from shmrcu.core import _epoch
from shmrcu.testing import _torture
from shmrcu.core import segment as seg

MODELS = ("procs", "threads", "fork")
STYLES = ("sections", "qsbr")
SECTIONS = ("fence", "membarrier")
READERS = {"procs": 2, "threads": 3, "fork": 2}
OUTER = "torture_outer"
POLL_SLEEP_S = 0.0001        # the poller's pause between two polls of its token ...
POLL_BURST = 8               # ... and after this many updates (leave the GIL to the churn)
SWITCH_INTERVAL_S = 0.0005   # GIL hand-over in the controller while a cell runs
CHURN_SLEEP_S = 0.002        # pause between two map replacements
BARRIER_PAUSE_S = 0.02       # between two barrier() calls (correct runs only)


def area_name(rt_name: str, which: str) -> str:
    # "torture..." heads belong to the runtime: runtime cleanup finds them
    return seg.shm_name(rt_name, f"torture.{which}")


# ---------------------------------------------------------------------------
# reader side

def _read(rt: shmrcu.Runtime, reader, qsbr: bool, reads: int, stop_on_bad: bool) -> dict:
    """One reader's run: open the areas and the outer map *in this process*."""
    main = seg.Segment.open(area_name(rt.name, "main"))
    polled = seg.Segment.open(area_name(rt.name, "poll"))
    try:
        outer = rt.map(OUTER)
        t0 = time.monotonic()
        out = _torture.matrix_read_loop(reader, main.mapping, polled.mapping, outer, reads, qsbr,
                                        stop_on_bad, rt.map, rt.housekeeping)
        out["seconds"] = time.monotonic() - t0
        out["pid"] = os.getpid()
        out["slot"] = reader.slot_index
        return out
    finally:
        main.close()
        polled.close()


def _error(model: str, exc: BaseException) -> dict:
    return {"model": model, "pid": os.getpid(), "error": "".join(traceback.format_exception(exc))}


def reader_process(name: str, qsbr: bool, reads: int, stop_on_bad: bool, results) -> None:
    """model 'procs': one reader in a fresh process."""
    try:
        with shmrcu.Runtime.attach(name) as rt, rt.reader() as reader:
            out = _read(rt, reader, qsbr, reads, stop_on_bad)
        out["model"] = "procs"
        results.put(out)
    except BaseException as exc:
        results.put(_error("procs", exc))


def reader_threads(name: str, n: int, qsbr: bool, reads: int, stop_on_bad: bool, results) -> None:
    """model 'threads': ``n`` reader threads in this one process, a reader each."""
    outs: list[dict] = []

    def body(rt: shmrcu.Runtime) -> None:
        try:
            with rt.reader() as reader:          # readers are per thread
                out = _read(rt, reader, qsbr, reads, stop_on_bad)
            out["model"] = "threads"
            out["thread"] = threading.get_ident()
            outs.append(out)
        except BaseException as exc:
            outs.append(_error("threads", exc))

    try:
        with shmrcu.Runtime.attach(name) as rt:
            threads = [threading.Thread(target=body, args=(rt,), name=f"torture-reader-{i}")
                       for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for out in outs:
            results.put(out)
    except BaseException as exc:
        results.put(_error("threads", exc))


def _child(rt: shmrcu.Runtime, qsbr: bool, reads: int, stop_on_bad: bool, wfd: int) -> None:
    """A forked child: never returns (os._exit)."""
    code = 0
    try:
        # The inherited Runtime re-attaches itself on first use in this process;
        # the parent's reader is never touched here.
        reader = rt.reader()
        out = _read(rt, reader, qsbr, reads, stop_on_bad)
        reader.close()
        out["model"] = "fork"
        out["parent"] = os.getppid()
    except BaseException as exc:
        out, code = _error("fork", exc), 1
    try:
        os.write(wfd, json.dumps(out).encode())
        os.close(wfd)
    finally:
        os._exit(code)


def reader_forks(name: str, n: int, qsbr: bool, reads: int, stop_on_bad: bool, results) -> None:
    """model 'fork': attach here (a prefork master), then fork ``n`` reading children."""
    try:
        rt = shmrcu.Runtime.attach(name)
        master = rt.reader()                     # the master uses the runtime before forking
        with master.section():
            rt.map(OUTER)._lookup_id(0)
        pipes, pids = [], []
        for _ in range(n):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:                         # child
                os.close(r)
                _child(rt, qsbr, reads, stop_on_bad, w)
            os.close(w)
            pipes.append(r)
            pids.append(pid)
        results.put({"children": pids})          # the controller kills them if we die
        outs = []
        for pid, r in zip(pids, pipes):
            chunks = []
            while True:
                b = os.read(r, 65536)
                if not b:
                    break
                chunks.append(b)
            os.close(r)
            _, status = os.waitpid(pid, 0)
            try:
                out = json.loads(b"".join(chunks).decode())
            except ValueError:
                out = {"model": "fork", "pid": pid, "error": f"child died: wait status {status:#x}"}
            if os.WIFSIGNALED(status) and "error" not in out:
                out["error"] = f"child killed by signal {os.WTERMSIG(status)}"
            outs.append(out)
        # the children must not have disturbed the master's slot
        mine = [i for i in rt.readers_info() if i["slot"] == master.slot_index]
        master_ok = len(mine) == 1 and mine[0]["pid"] == os.getpid() and not master.closed
        for out in outs:
            out["master_slot_ok"] = master_ok
            results.put(out)
        master.close()
        rt.close()
    except BaseException as exc:
        results.put(_error("fork", exc))


# ---------------------------------------------------------------------------
# controller side

class _Stop(Exception):
    pass


def _poller(rt: shmrcu.Runtime, area, stop: threading.Event, stats: dict) -> None:
    """Second updater: its grace periods are start_grace_period + poll_grace_period."""
    def grace_period() -> None:
        token = rt.start_grace_period()
        while not rt.poll_grace_period(token):
            stats["polls"] += 1
            if stop.is_set():
                raise _Stop
            time.sleep(POLL_SLEEP_S)

    seq = 1
    try:
        while not stop.is_set():
            seq += 1
            _torture.update_once(area.mapping, seq, grace_period)
            stats["updates"] += 1
            if seq % POLL_BURST == 0:
                time.sleep(POLL_SLEEP_S)
    except _Stop:
        pass
    except BaseException as exc:          # reported by run_cell
        stats["error"] = "".join(traceback.format_exception(exc))


def _new_inner(rt: shmrcu.Runtime):
    m = rt.create_map("array", key="I", value="Q", max_entries=_torture.INNER_ENTRIES)
    _torture.fill_inner(m, m.id)
    # a private mapping of its segment, to poison it once it is freed
    return m, seg.Segment.open(seg.shm_name(rt.name, f"map.{m.id}"))


def _churn(rt: shmrcu.Runtime, outer, stop: threading.Event, stats: dict) -> None:
    """Create / swap in / retire (background free) / poison after free / re-create."""
    pending = stats["_pending"]            # private segments of maps not yet seen freed
    try:
        while not stop.is_set():
            m, own = _new_inner(rt)
            pending.append(own)
            old = outer.swap(0, m, sync=False)
            stats["maps"] += 1
            if old is not None:
                rt.retire(old)
            for s in list(pending):
                if _torture.poison_if_freed(s.mapping):
                    s.close()
                    pending.remove(s)
                    stats["poisoned"] += 1
            stop.wait(CHURN_SLEEP_S)
    except BaseException as exc:
        stats["error"] = "".join(traceback.format_exception(exc))


def _barriers(rt: shmrcu.Runtime, stop: threading.Event, stats: dict) -> None:
    """barrier() now and then, concurrently with the churn's retires and the background
    free: retired maps freed and unmapped by every reader process."""
    try:
        while not stop.wait(BARRIER_PAUSE_S):
            t0 = time.monotonic()
            rt.barrier(timeout=20)
            stats["barriers"] += 1
            stats["barrier_max_s"] = max(stats["barrier_max_s"], time.monotonic() - t0)
    except BaseException as exc:
        stats["error"] = "".join(traceback.format_exception(exc))


def _kill_orphan(pid: int) -> None:
    """A forked child whose master died before reaping it (only if it still is one of ours)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"multiprocessing" not in f.read():
                return                     # gone, and the pid reused by someone else
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def run_cell(rt: shmrcu.Runtime, procs, model: str, style: str, reads: int, broken: bool,
             max_seconds: float = 60.0, n_readers: int | None = None) -> dict:
    """Controller side of one matrix cell (``rt``: a runtime this process controls).

    Returns {"readers": [per-reader dicts], "updates", "poller": {...}, "churn": {...},
    "seconds", "errors": [...]}.  With ``broken`` the updater's synchronize does not
    wait (``_epoch._set_broken_synchronize``) and the readers stop at the first
    violation of the main area."""
    assert model in MODELS and style in STYLES
    n = READERS[model] if n_readers is None else n_readers
    qsbr = style == "qsbr"
    main = seg.Segment.create(area_name(rt.name, "main"), _torture.AREA_SIZE, 0o600)
    polled = seg.Segment.create(area_name(rt.name, "poll"), _torture.AREA_SIZE, 0o600)
    stop = threading.Event()
    poll_stats = {"updates": 0, "polls": 0}
    churn_stats = {"maps": 0, "poisoned": 0}
    barrier_stats = {"barriers": 0, "barrier_max_s": 0.0}
    threads: list[threading.Thread] = []
    readers: list[dict] = []
    errors: list[str] = []
    children: list[int] = []
    started: list = []
    # Four Python threads share this process's GIL while the readers take the CPUs:
    # hand it over often, or the churn thread stalls for hundreds of ms.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        _torture.init_area(main.mapping)
        _torture.init_area(polled.mapping)
        first, first_own = _new_inner(rt)
        churn_stats["_pending"] = [first_own]     # closed below even if the churn never starts
        outer = rt.create_map("array_of_maps", max_entries=1, inner=first, name=OUTER)
        outer.swap(0, first, sync=False)
        threads = [threading.Thread(target=_poller, args=(rt, polled, stop, poll_stats),
                                    name="torture-poller", daemon=True),
                   threading.Thread(target=_churn, args=(rt, outer, stop, churn_stats),
                                    name="torture-churn", daemon=True)]
        if not broken:   # a barrier waits for grace periods too: the broken one would free early
            threads.append(threading.Thread(target=_barriers, args=(rt, stop, barrier_stats),
                                            name="torture-barrier", daemon=True))
        for t in threads:
            t.start()

        results = procs.ctx.Queue()
        if model == "procs":
            started = [procs.start(reader_process, rt.name, qsbr, reads, broken, results)
                       for _ in range(n)]
        elif model == "threads":
            started = [procs.start(reader_threads, rt.name, n, qsbr, reads, broken, results)]
        else:
            started = [procs.start(reader_forks, rt.name, n, qsbr, reads, broken, results)]

        def drain() -> None:
            while not results.empty():
                out = results.get()
                if "children" in out:
                    children.extend(out["children"])
                else:
                    readers.append(out)

        _epoch._set_broken_synchronize(broken)
        seq, updates = 1, 0
        t0 = time.monotonic()
        deadline = t0 + max_seconds
        try:
            while len(readers) < n and time.monotonic() < deadline:
                seq += 1
                _torture.update_once(main.mapping, seq, lambda: rt.synchronize(timeout=10))
                updates += 1
                if updates % 16 == 0:
                    drain()
                    if any("error" in r or r.get("bad_main") for r in readers):
                        break          # a failed reader, or (broken run) the violation we wanted
                    if all(p.exitcode is not None for p in started) and len(readers) < n:
                        time.sleep(0.2)
                        drain()
                        if len(readers) < n:
                            errors.append(f"reader processes exited ({[p.exitcode for p in started]}) "
                                          f"with {len(readers)}/{n} results")
                            break
        finally:
            _epoch._set_broken_synchronize(False)
            _torture.set_stop(main.mapping)
        seconds = time.monotonic() - t0
        for p in started:
            p.join(30)
        drain()
        if len(readers) < n and time.monotonic() >= deadline:
            errors.append(f"only {len(readers)}/{n} readers reported within {max_seconds}s")
        stop.set()
        for t in threads:
            t.join(30)
            if t.is_alive():
                errors.append(f"{t.name} did not stop")
        for what, st in (("poller", poll_stats), ("churn", churn_stats), ("barrier", barrier_stats)):
            if "error" in st:
                errors.append(f"{what}: {st['error']}")
        errors.extend(f"reader {r.get('model')} pid {r.get('pid')}: {r['error']}"
                      for r in readers if "error" in r)
        errors.extend(f"reader pid {r['pid']}: resolve errors {r['errors']}"
                      for r in readers if r.get("errors"))
        errors.extend(f"fork master's reader slot was disturbed by its children (pid {r['pid']})"
                      for r in readers if r.get("master_slot_ok") is False)
        ok = [r for r in readers if "error" not in r]
        return {"model": model, "style": style, "sections": rt.sections, "broken": broken,
                "readers": readers, "updates": updates, "poller": dict(poll_stats),
                "churn": {k: v for k, v in churn_stats.items() if not k.startswith("_")},
                "barrier": dict(barrier_stats),
                "seconds": seconds, "errors": errors,
                "reads": sum(r["reads"] for r in ok),
                "bad_main": sum(r["bad_main"] for r in ok),
                "bad_poll": sum(r["bad_poll"] for r in ok),
                "bad_map": sum(r["bad_map"] for r in ok),
                "switches": sum(r["switches"] for r in ok),
                "housekeeps": sum(r["housekeeps"] for r in ok),
                "stale_acks": sum(r["stale_acks"] for r in ok)}
    finally:
        sys.setswitchinterval(switch_interval)
        stop.set()
        _epoch._set_broken_synchronize(False)
        for t in threads:
            t.join(30)
        if any(p.exitcode != 0 for p in started):
            for pid in children:
                _kill_orphan(pid)
        for s in churn_stats.get("_pending", ()):
            s.close()
        main.close()
        main.unlink()
        polled.close()
        polled.unlink()
