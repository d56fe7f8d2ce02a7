"""Programs: what a worker runs on every batch (the BPF programs of shmrcu).

A program is a callable ``program(ctx, batch)``:

* ``ctx`` -- the worker's ``WorkerContext`` (``worker_id``, ``runtime``,
  ``map(name_or_id)``, ``inner(outer, key)``, ``args``, ``state``);
* ``batch`` -- a memoryview of records, format ``"I"``, shape ``(n, 2)``.

It is named by a built-in name (``"traffic_accounting"``, ``"route_lookup"``),
by ``"module:function"``, or passed directly (it must then pickle, i.e. be a
module-level function, because workers are spawned processes).

Two optional attributes refine the protocol:

* ``bind(ctx)`` -- called once per worker process; returns the callable that
  runs the batches (per-process setup, such as caching map handles);
* ``counts_applied = True`` -- the program counts the events it applied
  itself (the built-in kernels do, per event, so that a worker killed
  mid-batch leaves an exact count); otherwise the worker counts the whole
  batch once the program returns.
"""
from __future__ import annotations

import importlib
import pickle
from typing import Any

BUILTIN = {
    "traffic_accounting": "shmrcu.pool.programs.traffic_accounting:program",
    "route_lookup": "shmrcu.pool.programs.route_lookup:program",
}


class ProgramNotFound(LookupError):
    """A program (or source) name that does not resolve to a callable."""


def import_object(target: str, what: str = "program") -> Any:
    """``"package.module:attr"`` -> the object, with an error that says what failed."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        builtins = ", ".join(sorted(BUILTIN)) if what == "program" else ""
        raise ProgramNotFound(f"unknown {what} {target!r}: use 'module:function'"
                              + (f" or a built-in name ({builtins})" if builtins else ""))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ProgramNotFound(f"{what} {target!r}: cannot import module {module_name!r}: {e}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ProgramNotFound(f"{what} {target!r}: module {module_name!r} has no "
                                  f"attribute {attr!r}") from None
    return obj


def resolve(program: Any) -> tuple[Any, Any]:
    """Check a program spec; returns ``(spec_to_send, program_object)``.

    Runs in the pool's process before any worker starts, so a bad name is a
    clear error there rather than N crash-looping workers."""
    if isinstance(program, str):
        obj = import_object(BUILTIN.get(program, program))
        spec = program
    else:
        obj = program
        try:
            pickle.dumps(obj)
        except Exception as e:
            raise ProgramNotFound(f"program {obj!r} cannot be sent to a worker process ({e}); "
                                  "use a module-level function or a 'module:function' name") from None
        spec = obj
    if not callable(obj) and not callable(getattr(obj, "bind", None)):
        raise ProgramNotFound(f"program {program!r} is not callable")
    return spec, obj


def load(spec: Any) -> Any:
    """In the worker: the program object named by ``spec`` (see ``resolve``)."""
    return resolve(spec)[1]


def bind(obj: Any, ctx) -> tuple[Any, bool]:
    """The per-worker callable and whether it counts applied events itself."""
    binder = getattr(obj, "bind", None)
    fn = binder(ctx) if callable(binder) else obj
    return fn, bool(getattr(fn, "counts_applied", getattr(obj, "counts_applied", False)))
