"""Entry points of the processes that the map tests spawn (importable by 'spawn')."""
from __future__ import annotations

import shmrcu
from shmrcu.errors import ReadOnlyMap


def insert_range(rt_name: str, map_name: str, start: int, stop: int, ready, go, results) -> None:
    """Insert keys start..stop-1 (value = 2*key), lock-free, racing another process."""
    with shmrcu.Runtime.attach(rt_name) as rt:
        m = rt.map(map_name)
        ready.set()
        go.wait(30)
        for k in range(start, stop):
            m[k] = 2 * k
        results.put(("inserted", stop - start))


def add_same_keys(rt_name: str, map_name: str, keys: list, rounds: int, ready, go, results) -> None:
    """``add`` 1 (and 2 to the second field if there is one) to every key, ``rounds`` times."""
    with shmrcu.Runtime.attach(rt_name) as rt:
        m = rt.map(map_name)
        two_fields = len(m.value_format.lstrip("@=<")) == 2
        ready.set()
        go.wait(30)
        for _ in range(rounds):
            for k in keys:
                m.add(k, (1, 2) if two_fields else 1)
        results.put(("added", rounds * len(keys)))


def count_per_worker(rt_name: str, map_name: str, keys: list, rounds: int, ready, go, results) -> None:
    """A worker with a reader slot: add 1 per key per round into its own copy."""
    with shmrcu.Runtime.attach(rt_name) as rt, rt.reader() as reader:
        m = rt.map(map_name)
        ready.set()
        go.wait(30)
        with reader.section():
            for _ in range(rounds):
                for k in keys:
                    m.add(k, 1)
        results.put(("slot", reader.index))


def try_writes(rt_name: str, map_name: str, results) -> None:
    """Reader process: read a worker_readonly map, then try every kind of write."""
    with shmrcu.Runtime.attach(rt_name) as rt:
        m = rt.map(map_name)
        out = {"value": m[1], "writable": m.writable}
        attempts = {
            "setitem": lambda: m.__setitem__(1, 5),
            "update": lambda: m.update(2, 5),
            "delitem": lambda: m.__delitem__(1),
            "add": lambda: m.add(1, 1),
            "clear": lambda: m.clear(),
        }
        for name, fn in attempts.items():
            try:
                fn()
                out[name] = "no error"
            except ReadOnlyMap as e:
                out[name] = ("ReadOnlyMap", e.errno)
            except Exception as e:  # pragma: no cover - reported to the test
                out[name] = (type(e).__name__, str(e))
        out["value_after"] = m[1]
        results.put(out)


def open_and_report(rt_name: str, map_name: str, results) -> None:
    try:
        with shmrcu.Runtime.attach(rt_name) as rt:
            m = rt.map(map_name)
            results.put(("ok", m[0]))
    except Exception as e:
        results.put((type(e).__name__, getattr(e, "errno", None)))


def churn(rt_name: str, map_name: str, seed: int, ops: int, ready, go, results) -> None:
    """Insert and delete overlapping keys at random (tombstones recycled all the time)."""
    import random
    rnd = random.Random(seed)
    with shmrcu.Runtime.attach(rt_name) as rt:
        m = rt.map(map_name)
        ready.set()
        go.wait(30)
        for _ in range(ops):
            k = rnd.randrange(48)
            if rnd.random() < 0.5:
                m[k] = k
            else:
                try:
                    del m[k]
                except KeyError:
                    pass
        results.put(("churned", ops))
