"""Serving a table to a prefork server: the README recipe, runnable (and run by
tests/test_prefork_serving.py).

    SHMRCU_TABLE_RUNTIME=net gunicorn --preload -w 3 serve:app

The master attaches at import (``--preload``); every worker inherits ``rt`` and re-attaches
by itself on first use (its own descriptors and reader slot).  Each lookup runs in a
read-side section of this thread's reader: ``outer[0]`` -> the table now in service, read
whole, its ``version`` included.  The runtime belongs to a long-lived controller
(``Runtime.create_or_take_over``): a controller that dies or restarts changes nothing here;
a runtime destroyed and re-created raises ``RuntimeDestroyed`` at the next section, and the
worker attaches the new one.  A worker never serves a destroyed runtime's table.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import time

import shmrcu

NAME = os.environ.get("SHMRCU_TABLE_RUNTIME", "net")
TABLE = os.environ.get("SHMRCU_TABLE_OUTER", "blocklist")

_lock = threading.Lock()          # guards re-attaching, never a lookup
_local = threading.local()
_served = itertools.count()       # answers of this process, in order (the test's checker)


def _attach():
    try:
        return shmrcu.Runtime.attach(NAME)
    except shmrcu.RuntimeNotFound:
        return None               # no controller has created it (yet): 503 until one does


rt = _attach()                    # in the gunicorn master, at import


def _runtime():
    global rt
    with _lock:
        if rt is None or rt.closed:
            rt = _attach()
        return rt


def _reader(r_t):
    """This thread's reader and outer map on runtime ``r_t`` (new ones after a re-attach
    or a fork)."""
    r = getattr(_local, "reader", None)
    if r is None or r.closed or getattr(_local, "rt", None) is not r_t or _local.pid != os.getpid():
        r = _local.reader = r_t.reader()
        _local.outer = r_t.map(TABLE)
        _local.rt, _local.pid = r_t, os.getpid()
    return r, _local.outer


def _forget(r_t):
    """The runtime was destroyed: drop it; the next lookup attaches the re-created one."""
    global rt
    with _lock:
        try:
            r_t.close()
        except shmrcu.ShmrcuError:
            pass
        if rt is r_t:
            rt = None


def lookup(keys):
    """(incarnation, version, [value of each key]) from one table, read in one section;
    None when there is no runtime or no table in service."""
    for _ in range(3):
        r_t = _runtime()
        if r_t is None:
            return None
        try:
            r, outer = _reader(r_t)
            with r.section():
                table = outer[0]                   # outer -> inner inside the section
                return r_t.incarnation, table.version, [table.get(k) for k in keys]
        except shmrcu.RuntimeDestroyed:
            _forget(r_t)
        except (shmrcu.MapNotFound, KeyError):
            return None                            # created, but no table in service yet
    return None


def app(environ, start_response):
    keys = [int(k) for k in environ.get("QUERY_STRING", "k=0").replace("k=", "").split("&") if k]
    got = lookup(keys)
    if got is None:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"no table in service\n"]
    incarnation, version, values = got
    body = json.dumps({"pid": os.getpid(), "seq": next(_served), "t": time.monotonic(),
                       "incarnation": incarnation, "version": version,
                       "values": [list(v) if v is not None else None for v in values]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
