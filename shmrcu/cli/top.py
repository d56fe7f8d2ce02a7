"""``shmrcu top NAME``: a live view of a runtime, refreshed once a second.

Plain ANSI (cursor home, erase to end of line / screen; alternate screen while
running) so it works in any terminal and in tmux.  ``q`` or Ctrl-C quits; the
terminal settings are restored on every exit path (q, Ctrl-C, SIGTERM, the
runtime disappearing, an error).  When stdout is not a terminal the frames are
printed one after another without escape codes (``shmrcu top net -n 1 > snap``).
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time

from . import ops
from .render import grace_text, header_text, maps_table, workers_table

ENTER = "\x1b[?1049h\x1b[?25l"     # alternate screen, hide cursor
LEAVE = "\x1b[?25h\x1b[?1049l"     # show cursor, back to the main screen
HOME = "\x1b[H"
EOL = "\x1b[K"
EOS = "\x1b[J"
FIRST_SAMPLE_S = 0.2               # the first frame waits this long so it already has rates


def frame(sample: dict, interval: float, width: int = 120, height: int = 40) -> list[str]:
    """The lines of one screen (pure: tests call it too)."""
    workers = sample["workers"]
    total = sum(w["events_per_s"] or 0 for w in workers)
    online = sum(w["state"] == "online" for w in workers)
    stalled = sum(w["stalled"] for w in workers)
    lines = [f"shmrcu top - {ln}" if i == 0 else ln for i, ln in enumerate(header_text(sample).splitlines())]
    lines += [
        grace_text(sample["grace_periods"]),
        f"workers: {len(workers)} ({online} online{f', {stalled} STALLED' if stalled else ''})  "
        f"events/s total: {total:,.0f}   {time.strftime('%H:%M:%S')}",
        "",
    ]
    lines += workers_table(workers).splitlines() if workers else ["(no readers attached)"]
    lines.append("")
    room = max(2, height - len(lines) - 2)
    maps = sample["maps"]
    mlines = maps_table(maps).splitlines() if maps else ["(no maps)"]
    if len(mlines) > room:
        hidden = len(mlines) - (room - 1)
        mlines = mlines[:room - 1] + [f"... {hidden} more maps (shmrcu map show {sample['runtime']})"]
    lines += mlines
    lines.append("")
    lines.append(f"q: quit   refresh every {interval:g}s")
    return [ln[:width] for ln in lines]


class _Terminal:
    """cbreak input + alternate screen while active; restores both on exit."""

    def __init__(self, inp, out):
        self.inp, self.out = inp, out
        self.fd = None
        self.saved = None
        self.tty_out = out.isatty()
        with contextlib.suppress(AttributeError, ValueError, OSError):
            fd = inp.fileno()
            if os.isatty(fd):
                self.fd = fd

    def __enter__(self):
        if self.fd is not None:
            import termios
            import tty
            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)            # keys without Enter; Ctrl-C still sends SIGINT
        if self.tty_out:
            self.out.write(ENTER)
            self.out.flush()
        return self

    def __exit__(self, *exc):
        if self.tty_out:
            with contextlib.suppress(OSError, ValueError):
                self.out.write(LEAVE)
                self.out.flush()
        if self.saved is not None:
            import termios
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def draw(self, lines: list[str]) -> None:
        if self.tty_out:
            self.out.write(HOME + "".join(ln + EOL + "\r\n" for ln in lines) + EOS)
        else:
            self.out.write("\n".join(lines) + "\n\n")
        self.out.flush()

    def wait_key(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; True if the user asked to quit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.fd is None:
                time.sleep(left)
                return False
            try:
                ready, _, _ = select.select([self.fd], [], [], left)
            except InterruptedError:    # pragma: no cover - PEP 475 retries
                continue
            if not ready:
                return False
            data = os.read(self.fd, 64)
            if not data:                # EOF on the terminal: nothing more to read
                self.fd = None
                continue
            if any(c in data for c in (b"q", b"Q", b"\x03", b"\x04")):
                return True


def run(name: str, interval: float = 1.0, iterations: int | None = None, inp=None, out=None) -> int:
    """The ``top`` loop; returns the exit code."""
    inp = sys.stdin if inp is None else inp
    out = sys.stdout if out is None else out
    interval = max(0.05, interval)
    rt = ops.attach(name)                      # errors before touching the terminal
    ctl = os.path.join(ops.seg.SHM_DIR, ops.seg.shm_name(name, "ctl").lstrip("/"))
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(*_):
        raise SystemExit(143)

    with contextlib.suppress(ValueError):       # not the main thread: keep the default
        signal.signal(signal.SIGTERM, on_term)
    gone = False
    try:
        sampler = ops.Sampler(rt)
        sampler.workers()
        sampler.grace_periods(rt.stats(), [])
        with _Terminal(inp, out) as term:
            if term.wait_key(min(FIRST_SAMPLE_S, interval)):
                return 0
            n = 0
            while True:
                if not os.path.exists(ctl):
                    gone = True
                    return 1
                sample = sampler.sample()
                size = shutil.get_terminal_size((120, 40))
                term.draw(frame(sample, interval, size.columns, size.lines))
                n += 1
                if iterations is not None and n >= iterations:
                    return 0
                if term.wait_key(interval):
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, old_term)
        rt.close()
        if gone:
            print(f"shmrcu top: runtime {name!r} is gone (destroyed or cleaned up)", file=sys.stderr)
