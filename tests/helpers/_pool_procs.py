"""Programs and sources that pool tests hand to workers (importable by 'spawn')."""
from __future__ import annotations

import struct

_REC = struct.Struct("II")


def count_uids(ctx, batch):
    """Python traffic accounting: ``stats`` (name in ctx.args) gets (packets, bytes) per uid."""
    inner = ctx.inner(ctx.args.get("cfg", "cfg"), 0)
    add = inner.add
    for uid, nbytes in batch.tolist():
        add(uid, (1, nbytes))


def noop(ctx, batch):
    pass


def raise_on_third_batch(ctx, batch):
    n = ctx.state.get("n", 0) + 1
    ctx.state["n"] = n
    if n == 3:
        raise ValueError(f"program failure in worker {ctx.worker_id} (incarnation {ctx.incarnation})")


def always_raise(ctx, batch):
    raise RuntimeError("this program always fails")


def small_batches(ctx):
    """A callable source: 100 batches of 10 records, then exhausted."""
    n = ctx.state.get("n", 0)
    if n >= 100:
        return None
    ctx.state["n"] = n + 1
    return b"".join(_REC.pack(10000 + (i % 7), 100) for i in range(10))


def idle_then_batches(ctx):
    """Empty for a while (worker goes offline), then 5 batches, then done."""
    n = ctx.state.get("n", 0)
    ctx.state["n"] = n + 1
    if n < 20:
        return b""
    if n < 25:
        return _REC.pack(10001, 1) * 4
    return None


def raising_source(ctx):
    n = ctx.state.get("n", 0) + 1
    ctx.state["n"] = n
    if n == 2:
        raise OSError("source failure")
    return _REC.pack(10000, 1) * 8
