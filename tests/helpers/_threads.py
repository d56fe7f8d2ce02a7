"""A reader that lives in a thread of its own (readers are per thread).

A thread's own online QSBR reader does not hold that thread's grace-period
waits (it waits offline, as liburcu-qsbr does), so tests that need "a reader
holding the grace period" in the test process put it in another thread."""
from __future__ import annotations

import queue
import threading


class ReaderThread:
    """``with ReaderThread(rt) as r:`` -- a reader online (QSBR) in another thread until
    ``r.offline()`` or the end of the block; ``r.quiescent()`` reports a quiescent state."""

    def __init__(self, rt, mode: str = "online"):
        self.rt, self.mode = rt, mode
        self._cmd: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.slot = None

    def _run(self) -> None:
        try:
            with self.rt.reader() as r:
                self.slot = r.slot_index
                if self.mode == "section":
                    cm = r.section()
                    cm.__enter__()
                else:
                    r.online()
                self._done.put(None)
                while True:
                    cmd = self._cmd.get()
                    if cmd == "quiescent":
                        r.quiescent()
                    elif cmd == "offline":
                        if self.mode == "section":
                            cm.__exit__(None, None, None)
                        else:
                            r.offline()
                        self._done.put(None)
                        return
                    self._done.put(None)
        except BaseException as e:      # reported to the test thread
            self._done.put(e)

    def _call(self, cmd: str) -> None:
        self._cmd.put(cmd)
        err = self._done.get(timeout=30)
        if err is not None:
            raise err

    def __enter__(self) -> "ReaderThread":
        self._thread.start()
        err = self._done.get(timeout=30)
        if err is not None:
            raise err
        return self

    def quiescent(self) -> None:
        self._call("quiescent")

    def offline(self) -> None:
        if self._thread.is_alive():
            self._call("offline")
        self._thread.join(30)

    def __exit__(self, *exc) -> None:
        self.offline()
