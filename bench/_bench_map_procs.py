"""Writer processes for bench_maps.py: change one entry per millisecond (spawn-importable)."""
import random
import time

N_KEYS = 100_000


def _pace(stop, change):
    rnd = random.Random(7)
    nxt = time.perf_counter()
    while not stop.is_set():
        change(rnd.randrange(N_KEYS), rnd.randrange(1 << 40))
        nxt += 0.001
        delay = nxt - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def shmrcu_writer(rt_name, map_name, ready, stop):
    import shmrcu
    with shmrcu.Runtime.attach(rt_name) as rt:
        m = rt.map(map_name)
        ready.set()
        _pace(stop, m.__setitem__)


def shm_lock_writer(shm_name, lock, ready, stop):
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(shm_name)
    buf = shm.buf.cast("Q")
    ready.set()

    def change(k, v):
        with lock:
            buf[k] = v
    try:
        _pace(stop, change)
    finally:
        buf.release()
        shm.close()


def ultradict_writer(ud_name, ready, stop):
    from UltraDict import UltraDict
    ud = UltraDict(name=ud_name, shared_lock=True)
    ready.set()
    _pace(stop, ud.__setitem__)


def manager_writer(proxy, ready, stop):
    ready.set()
    _pace(stop, proxy.__setitem__)
