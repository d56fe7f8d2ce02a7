"""Built-in programs written as plain Python callables -- templates for your own.

``traffic_accounting`` here does what the Cython kernel does, one ``add`` per
event; the benchmark compares the two.  Use it as
``WorkerPool(rt, program="shmrcu.pool.programs.python_examples:traffic_accounting")``.
"""
from __future__ import annotations


def traffic_accounting(ctx, batch) -> None:
    """Per event (uid, bytes): add (1, bytes) to ``cfg[0]``'s entry for uid."""
    stats = ctx.inner(ctx.args.get("cfg", "cfg"), 0)   # once per batch: valid until quiescent
    add = stats.add
    for uid, nbytes in batch.tolist():
        add(uid, (1, nbytes))


def route_lookup(ctx, batch) -> None:
    """Per event: is uid in ``routes[0]``?  Hits and misses go to ``ctx.state``."""
    table = ctx.inner(ctx.args.get("routes", "routes"), 0)
    hits = sum(1 for uid, _ in batch.tolist() if uid in table)
    ctx.state["hits"] = ctx.state.get("hits", 0) + hits
    ctx.state["misses"] = ctx.state.get("misses", 0) + len(batch) - hits
