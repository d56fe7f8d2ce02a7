"""Spawn entry point for the section-guard tests: a reader process reaching inner maps."""
from __future__ import annotations

import shmrcu


def reach_inner(name: str, out) -> None:
    """Report what each way of reaching the inner map does outside and inside a section."""
    with shmrcu.Runtime.attach(name) as rt, rt.reader() as r:
        outer = rt.map("outer")
        ways = {"getitem": lambda: outer[0], "get": lambda: outer.get(0),
                "values": lambda: outer.values(), "items": lambda: outer.items()}
        result = {}
        for way, fn in ways.items():
            try:
                fn()
                result[f"{way}-outside"] = "ok"
            except shmrcu.OutsideSection as e:
                result[f"{way}-outside"] = f"OutsideSection errno={e.errno}"
            with r.section():
                fn()
                result[f"{way}-inside"] = "ok"
        with r.section():
            result["value"] = outer[0][7]
        out.put(result)
