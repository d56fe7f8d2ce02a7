"""Entry points of the processes that tests/test_lifecycle.py spawns."""
from __future__ import annotations

import shmrcu


def reader_through_destroy(rt_name: str, ready, destroyed, recreated, results) -> None:
    """Attach, read the table, wait for the runtime to be destroyed, report what every
    kind of access says, then attach the re-created runtime and read it."""
    out = {}
    rt = shmrcu.Runtime.attach(rt_name)
    r = rt.reader()
    m = rt.map("cfg")
    with r.section():
        out["before"] = m[1]
    ready.set()
    destroyed.wait(60)
    for what, fn in [("m[k]", lambda: m[1]), ("section", lambda: r.section().__enter__()),
                     ("rt.map", lambda: rt.map("cfg")), ("rt.reader", lambda: rt.reader())]:
        try:
            out[what] = ("served", fn())
        except shmrcu.ShmrcuError as e:
            out[what] = (type(e).__name__, e.errno)
    recreated.wait(60)
    with shmrcu.Runtime.attach(rt_name) as fresh, fresh.reader() as r2, r2.section():
        out["after"] = fresh.map("cfg")[1]
    results.put(out)


def dead_controller(rt_name: str, done) -> None:
    """A controller that creates the runtime and its table, then exits without destroying
    it (close): the runtime outlives it."""
    with shmrcu.Runtime.create_or_take_over(rt_name) as rt:
        m = rt.create_map("hash", key="I", value="Q", max_entries=8, name="cfg")
        m[1] = 11
    done.set()


def idle_reader(rt_name: str, ready, stop, results) -> None:
    """A reader attached (slot held), mostly offline, like a prefork worker in accept()."""
    rt = shmrcu.Runtime.attach(rt_name)
    r = rt.reader()
    ready.set()
    stop.wait(120)
    try:
        with r.section():
            results.put(("served", rt.map("cfg")[1]))
    except shmrcu.ShmrcuError as e:
        results.put((type(e).__name__, e.errno))
