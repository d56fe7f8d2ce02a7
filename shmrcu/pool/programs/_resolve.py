"""Per-worker setup shared by the built-in programs (Python level)."""
from __future__ import annotations


def outer_map(ctx, arg: str, default: str, what: str):
    """The outer map a built-in program reads, checked once per worker."""
    name = ctx.args.get(arg, default)
    try:
        m = ctx.map(name)
    except KeyError:
        raise LookupError(f"{what}: no map {name!r} in runtime {ctx.runtime.name!r} "
                          f"(create it, or pass args={{{arg!r}: <name>}} to the pool)") from None
    if m.kind not in ("array_of_maps", "hash_of_maps"):
        raise TypeError(f"{what}: map {name!r} is a {m.kind}, expected array_of_maps or hash_of_maps")
    if m.key_format.lstrip("@=<") not in ("I", "L") and m.kind == "hash_of_maps":
        raise TypeError(f"{what}: map {name!r} needs u32 keys, has {m.key_format!r}")
    return m


def check_inner(m, what: str, value_min: int) -> None:
    if m.kind not in ("hash", "per_worker_hash", "array", "per_worker_array"):
        raise TypeError(f"{what}: inner map {m.id} is a {m.kind}")
    if m.key_format.lstrip("@=<") not in ("I", "L") and m.kind.endswith("hash"):
        raise TypeError(f"{what}: inner map {m.id} needs u32 keys (uid), has {m.key_format!r}")
    if value_min and not m.value_format.lstrip("@=<").startswith(("QQ", "2Q")):
        raise TypeError(f"{what}: inner map {m.id} needs values starting (packets u64, bytes u64), "
                        f"has {m.value_format!r}")

