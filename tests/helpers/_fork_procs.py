"""Entry points of the real processes that the fork tests start.

Functions are importable by 'spawn' (the ``procs`` fixture).  Run as a script,
``python _fork_procs.py shutdown NAME`` is a process whose forked child really
exits through interpreter shutdown (which a child of pytest itself must never do).
"""
from __future__ import annotations

import json
import os
import sys
import time

import shmrcu


def try_take_control(name: str, results) -> None:
    """Try ``Runtime.attach(name, controller=True)``; report ("busy", pid) or ("took", our pid)."""
    try:
        rt = shmrcu.Runtime.attach(name, controller=True)
    except shmrcu.ControllerBusy as e:
        results.put(("busy", e.pid))
        return
    results.put(("took", os.getpid()))
    rt.release_control()
    rt.close()


def reader_forks_bystander(name: str, create: bool, info) -> None:
    """Attach (``create``: create the runtime, so we hold the controller lease), register a
    reader, enter a section and fork a child that never touches shmrcu again (it sleeps
    30 s; the test kills it).  Report (our pid, the child's pid, our slot) and wait to be killed.

    No multiprocessing Event here: setting one waits for every sleeper to wake, and a
    SIGKILLed sleeper never does."""
    rt = shmrcu.Runtime.create(name, max_workers=8) if create else shmrcu.Runtime.attach(name)
    r = rt.reader()
    with r.section():
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(30)
            finally:
                os._exit(0)
        info.put((os.getpid(), pid, r.slot_index))
        time.sleep(60)


# --- script mode -------------------------------------------------------------
RT = None
READER = None       # module-level: interpreter shutdown deallocates it


def shutdown_child(name: str) -> None:
    """Attach, register a module-level reader, go online (QSBR), fork a child that simply
    ``sys.exit(0)``s.  Then print one JSON line and hold the reader until stdin says go."""
    global RT, READER
    RT = shmrcu.Runtime.attach(name)
    READER = RT.reader()
    READER.online()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)            # ordinary exit: atexit, then finalization frees READER and RT
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": os.getpid(), "slot": READER.slot_index,
                      "child_exit": os.waitstatus_to_exitcode(status),
                      "closed": READER.closed, "online": READER.is_online}), flush=True)
    sys.stdin.readline()
    READER.offline()
    READER.close()
    RT.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["shutdown"]:
        shutdown_child(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} shutdown NAME")
