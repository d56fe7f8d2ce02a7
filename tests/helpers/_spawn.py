"""Real child processes ('spawn' context), always reaped: the tests' ``procs`` fixture and
bench/soak_torture.py share it."""
from __future__ import annotations

import multiprocessing as mp


class Procs:
    """Starts real processes ('spawn' context) and always reaps them."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.started: list = []

    def start(self, target, *args):
        p = self.ctx.Process(target=target, args=args, daemon=True)
        p.start()
        self.started.append(p)
        return p

    def reap(self) -> None:
        for p in self.started:
            if p.is_alive():
                p.kill()
            p.join(10)
        self.started.clear()
