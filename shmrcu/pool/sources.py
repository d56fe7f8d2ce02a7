"""Where a worker's events come from: source *specs* that are opened in the worker.

Workers are separate processes started with ``spawn``, so what the pool hands
them must pickle.  A spec is therefore a small description -- ``Traffic(...)``
or ``Callable("module:function")`` -- and ``spec.open(ctx)`` builds the live
source inside the worker.

A live source has one method, ``next_batch()``, returning

* a batch: a buffer of fixed-size records (8 bytes: uid u32, bytes u32, native
  order), passed to the program as a memoryview of format ``"I"`` and shape
  ``(n, 2)``;
* an empty buffer: nothing to do now -- the worker goes offline (grace periods
  stop waiting for it) and asks again after a short nap;
* ``None``: exhausted -- the worker finishes and exits cleanly.

``blocking`` tells the worker whether ``next_batch`` may block; if so the
worker goes offline around the call, so a worker waiting on its input never
holds up a grace period.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Callable as _CallableT

from ._traffic import RECORD_FORMAT, RECORD_SIZE, UID_BASE, TrafficGenerator
from .programs import import_object

__all__ = ["Traffic", "Callable", "as_source", "RECORD_SIZE", "RECORD_FORMAT", "UID_BASE",
           "TrafficGenerator", "as_batch"]


def as_batch(buf: Any) -> memoryview:
    """View any buffer of records as format ``"I"``, shape ``(n, 2)``."""
    mv = memoryview(buf)
    if mv.format == "I" and mv.ndim == 2 and mv.shape[1] == 2:
        return mv
    mv = mv.cast("B")
    if mv.nbytes == 0:
        return mv.cast("I")                  # shape (0,): nothing to do now
    if mv.nbytes % RECORD_SIZE:
        raise ValueError(f"a batch must be whole {RECORD_SIZE}-byte records "
                         f"(uid u32, bytes u32); got {mv.nbytes} bytes")
    return mv.cast("I", (mv.nbytes // RECORD_SIZE, 2))


@dataclass(frozen=True)
class Traffic:
    """Synthetic traffic (see ``shmrcu.pool._traffic``).

    ``keys`` distinct uids (``UID_BASE + k``), ``dist`` ``"uniform"`` or
    ``"zipf"`` (exponent ``zipf_s``), ``batch`` records per batch, ``events``
    per worker (``None``: unbounded).  Worker ``i`` draws from seed
    ``(seed, i, incarnation)``, so workers differ and a restarted worker does
    not replay its predecessor's stream; a bounded worker that restarts
    produces only what its predecessors had not applied yet.
    """
    seed: int = 1
    keys: int = 1024
    dist: str = "uniform"
    zipf_s: float = 1.1
    batch: int = 4096
    events: int | None = None

    blocking = False     # the generator never blocks: the worker stays online

    def __post_init__(self):
        # fail in the parent, before any worker starts
        TrafficGenerator(0, self.keys, self.dist, self.zipf_s, self.batch, self.events)

    def open(self, ctx) -> TrafficGenerator:
        seed = (self.seed * 1_000_003 + ctx.worker_id) * 1_000_003 + ctx.incarnation
        limit = None if self.events is None else max(0, self.events - ctx.applied)
        return TrafficGenerator(seed & 0xFFFFFFFFFFFFFFFF, self.keys, self.dist, self.zipf_s,
                                self.batch, limit)


class _CallSource:
    def __init__(self, fn: _CallableT, ctx):
        self._fn = fn
        self._ctx = ctx

    def next_batch(self):
        return self._fn(self._ctx)


@dataclass(frozen=True)
class Callable:
    """A Python callable ``fn(ctx) -> buffer | b"" | None`` called for every batch.

    ``target`` is ``"module:function"`` or a picklable (module-level) callable.
    ``ctx.state`` is a per-worker dict for the callable's own state.
    """
    target: Any
    blocking: bool = True

    def __post_init__(self):
        _resolve_callable(self.target)   # fail in the parent, before any worker starts

    def open(self, ctx) -> _CallSource:
        return _CallSource(_resolve_callable(self.target), ctx)


def _resolve_callable(target: Any) -> _CallableT:
    if isinstance(target, str):
        obj = import_object(target, what="source")
    else:
        obj = target
        try:
            pickle.dumps(obj)
        except Exception as e:
            raise ValueError(f"source {obj!r} cannot be sent to a worker process ({e}); "
                             "use a module-level function or a 'module:function' name") from None
    if not callable(obj):
        raise TypeError(f"source {target!r} is not callable")
    return obj


def as_source(source: Any):
    """Accept a spec, a ``"module:function"`` name, or a callable."""
    if source is None:
        return Traffic()
    if hasattr(source, "open"):
        return source
    if isinstance(source, str) or callable(source):
        return Callable(source)
    raise TypeError(f"not a source: {source!r} (use shmrcu.sources.Traffic(...), a callable, "
                    "or a 'module:function' name)")
