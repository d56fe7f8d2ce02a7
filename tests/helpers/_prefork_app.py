"""A prefork WSGI app for tests/test_prefork.py: the gunicorn app *and* its config.

Run as ``gunicorn --preload -c python:_prefork_app _prefork_app:app`` (from tests/helpers/).
The gunicorn master imports this module once (the config load and ``--preload``
share ``sys.modules``) and attaches the runtime named by $SHMRCU_PREFORK_RUNTIME;
then it forks its workers, which inherit ``rt``, ``table`` and ``freed``.  The
prefork rules under test (DESIGN.md, "Process models"): the inherited Runtime
re-attaches itself in each worker on first use, inherited map handles keep
working, and every worker (every thread) registers its OWN reader.

Maps (created by the test's controller):
  routes  array_of_maps, routes[0] -> the current inner map (hash "I" -> "QQ",
          every key holds (v, v) for that map's version v)
  freed   array "Q" indexed by map id: the controller writes the version there
          only after the swap that took the map out of service returned (the
          hidden state: a reader still inside the section that found the map
          must never see its mark)

Endpoints (JSON): /lookup?k1=..&k2=..&work_us=.. and /slot.  Any exception
becomes a 500 whose body is the traceback, so the test shows it.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import time
import traceback
from urllib.parse import parse_qs

import shmrcu

RUNTIME_NAME = os.environ["SHMRCU_PREFORK_RUNTIME"]

# -- in the gunicorn master, at import (--preload) --------------------------------
rt = shmrcu.Runtime.attach(RUNTIME_NAME)
table = rt.map("routes")
freed = rt.map("freed")

_local = threading.local()
_requests = itertools.count()


def _reader():
    """This thread's reader, registered in this process (lazily, once per thread)."""
    r = getattr(_local, "reader", None)
    if r is None or getattr(_local, "pid", None) != os.getpid():
        r = rt.reader()
        _local.reader, _local.pid = r, os.getpid()
    return r


def _lookup(query: dict) -> dict:
    k1 = int(query.get("k1", ["0"])[0])
    k2 = int(query.get("k2", ["1"])[0])
    work_s = int(query.get("work_us", ["1000"])[0]) / 1e6
    r = _reader()
    seq = next(_requests)
    with r.section():
        inner = table[0]                 # outer -> inner, resolved inside the section
        map_id = inner.id
        first = inner[k1]
        time.sleep(work_s)               # the controller swaps meanwhile: it must wait for us
        second = inner[k2]
        state = inner.state              # never "retired"/"freed" while we hold it
        mark = freed[map_id]             # the controller's hidden "taken out of service" record
    rt.housekeeping(r)                   # a quiescent point: drop maps the controller freed
    return {"pid": os.getpid(), "slot": r.slot_index, "seq": seq, "map_id": map_id,
            "first": list(first), "second": list(second), "state": state, "freed_mark": mark}


def app(environ, start_response):
    try:
        path = environ.get("PATH_INFO", "")
        if path == "/lookup":
            body = _lookup(parse_qs(environ.get("QUERY_STRING", "")))
        elif path == "/slot":
            r = _reader()
            body = {"pid": os.getpid(), "slot": r.slot_index, "ppid": os.getppid()}
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]
    except Exception:
        data = f"pid {os.getpid()}:\n{traceback.format_exc()}".encode()
        start_response("500 Internal Server Error", [("Content-Type", "text/plain"),
                                                     ("Content-Length", str(len(data)))])
        return [data]


# -- gunicorn settings (read by `-c python:_prefork_app`; unknown names are ignored) --
worker_class = "sync"
graceful_timeout = 5
control_socket_disable = True        # gunicorn >= 24: no shared ~/.gunicorn/gunicorn.ctl


def post_fork(server, worker):
    """In the new worker, right after fork: register this worker's own reader."""
    _reader()
