"""The operations commands of the ``shmrcu`` CLI: list, stat, map, top, cleanup, bench.

``register(subparsers)`` adds them to an existing argparse subparsers object
(each sets ``func=`` to a handler taking ``args`` and returning an exit code);
``python -m shmrcu.cli.commands ...`` runs them on their own.

User errors print one line on stderr and exit non-zero (1; 13 for permission
denied; 2 for usage errors, as argparse does) -- never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import ops
from ..errors import ShmrcuError
from .render import (_bytes, _cpu_text, _dump_json, _key_text, _num, _refs_text, _table,  # noqa: F401
                     grace_text, header_text, maps_table, workers_table)

_FMT = argparse.RawDescriptionHelpFormatter


# ---------------------------------------------------------------------------
# handlers

def cmd_list(args) -> int:
    rts = ops.list_runtimes()
    if args.json or args.pretty:
        _dump_json(rts, args.pretty)
        return 0
    if not rts:
        print(f"no shmrcu runtimes in {ops.seg.SHM_DIR}")
        return 0
    rows = []
    for r in rts:
        alive = {True: "yes", False: "no", None: "?"}[r["controller_alive"]]
        rows.append([r["name"], r["state"], r["controller_pid"] or "-", alive,
                     "-" if r["readers"] is None else r["readers"], r["maps"], _bytes(r["bytes"])])
    print(_table(rows, ["NAME", "STATE", "CONTROLLER", "ALIVE", "READERS", "MAPS", "MEMORY"],
                 right={2, 4, 5, 6}))
    return 0


def cmd_stat(args) -> int:
    s = ops.stat(args.name, sample_s=args.sample)
    if args.json or args.pretty:
        _dump_json(s, args.pretty)
        return 0
    print(header_text(s))
    print(grace_text(s["grace_periods"]))
    print()
    print(f"workers ({len(s['workers'])}):")
    print(workers_table(s["workers"]) if s["workers"] else "  (none attached)")
    print()
    print(f"maps ({len(s['maps'])}):")
    print(maps_table(s["maps"]) if s["maps"] else "  (none)")
    return 0


def cmd_map_show(args) -> int:
    maps = ops.map_show(args.name)
    if args.json or args.pretty:
        _dump_json(maps, args.pretty)
        return 0
    for m in maps:
        name = f"name {m['name']}  " if m["name"] else ""
        flags = f"  flags {','.join(m['flags'])}" if m["flags"] else ""
        print(f"{m['id']}: {m['kind']}  {name}key {m['key']} ({m['key_size']}B)  "
              f"value {m['value']} ({m['value_size']}B)  max_entries {m['max_entries']}  "
              f"entries {'-' if m['entries'] is None else m['entries']}  memlock {_bytes(m['bytes'])}  "
              f"{m['state']}{flags}")
        if m["referenced_by"]:
            print(f"\treferenced by {_refs_text(m['referenced_by'])}")
    return 0


def cmd_map_dump(args) -> int:
    d = ops.map_dump(args.name, args.map, args.format, args.value_format)
    if args.json or args.pretty:
        _dump_json(d, args.pretty)
        return 0
    for e in d["entries"]:
        if "inner_map_id" in e:
            print(f"key: {_key_text(e['key'])}  inner_map_id: {e['inner_map_id']}")
        else:
            print(f"key: {_key_text(e['key'])}  value: {_key_text(e['value'])}")
    print(f"Found {d['count']} element{'s' if d['count'] != 1 else ''}")
    return 0


def cmd_top(args) -> int:
    from . import top
    return top.run(args.name, interval=args.interval, iterations=args.iterations)


def cmd_cleanup(args) -> int:
    res = ops.cleanup(args.name, force=args.force, prefix=args.prefix)
    if args.json:
        _dump_json(res, False)
    else:
        for r in res["removed"]:
            print(f"removed runtime {r['runtime']} ({r['reason']}): {len(r['segments'])} segments, "
                  f"{_bytes(r['bytes'])}")
            for s in r["segments"]:
                print(f"  {ops.seg.SHM_DIR}{s['segment']}  {_bytes(s['bytes'])}")
        for s in res["skipped"]:
            print(f"skipped runtime {s['runtime']}: {s['reason']}")
        if not res["removed"] and not res["skipped"]:
            print("nothing to clean up")
    for e in res["errors"]:
        print(f"shmrcu cleanup: {e}", file=sys.stderr)
    return 1 if res["errors"] else 0


def cmd_bench(args) -> int:
    from . import benchsuite
    return benchsuite.main_args(args)


# ---------------------------------------------------------------------------
# argparse wiring

def _json_flags(p: argparse.ArgumentParser, pretty: bool = True) -> None:
    p.add_argument("-j", "--json", action="store_true", help="print JSON (one line)")
    if pretty:
        p.add_argument("-p", "--pretty", action="store_true", help="print indented JSON")


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _setup(p: argparse.ArgumentParser, description: str, epilog: str) -> None:
    p.formatter_class = _FMT
    p.description = description
    p.epilog = epilog


def _conf_list(p: argparse.ArgumentParser) -> None:
    _setup(p, "List the shmrcu runtimes that have segments in /dev/shm.",
           "example:\n  shmrcu list\n  shmrcu list -j | jq '.[] | select(.state==\"dead\") | .name'\n\n"
           "states: live (controller alive), dead (controller gone: `shmrcu cleanup` removes it),\n"
           "corrupt (control segment unreadable), orphaned (maps without a control segment),\n"
           "inaccessible (permission denied)")
    _json_flags(p)
    p.set_defaults(func=_handler("list", cmd_list))


def _conf_stat(p: argparse.ArgumentParser) -> None:
    _setup(p, "Show one runtime: workers (slot, pid, state, cpu, epoch lag, events/s, restarts),\n"
              "maps (kind, formats, entries, memory, referenced-by, state) and grace periods.",
           "example:\n  shmrcu stat net\n  shmrcu stat net -p\n  shmrcu stat net -j | jq '.workers[].events_per_s'")
    p.add_argument("name", help="runtime name")
    _json_flags(p)
    p.add_argument("--sample", type=_positive, default=ops.SAMPLE_S, metavar="SECONDS",
                   help=f"read the counters twice this far apart for rates (default {ops.SAMPLE_S}; 0: no rates)")
    p.set_defaults(func=_handler("stat", cmd_stat))


def _conf_map(mp_: argparse.ArgumentParser) -> None:
    _setup(mp_, "Inspect the maps of a runtime.",
           "example:\n  shmrcu map show net\n  shmrcu map dump net flows\n  shmrcu map dump net 3 -j")
    msub = mp_.add_subparsers(dest="map_command", metavar="{show,dump}")
    msub.required = True
    p = msub.add_parser("show", help="every map of a runtime")
    _setup(p, "One line per map: id, kind, name, key/value formats and sizes, max_entries,\n"
              "entries used, memory, state, and the outer slots that reference it.",
           "example:\n  shmrcu map show net\n  shmrcu map show net -j")
    p.add_argument("name", help="runtime name")
    _json_flags(p)
    p.set_defaults(func=_handler("map show", cmd_map_show))
    p = msub.add_parser("dump", help="the entries of one map")
    _setup(p, "Print every entry of a map: `key: ... value: ...` lines and `Found N elements`.\n"
              "Outer maps (array_of_maps, hash_of_maps) print `inner_map_id` instead of a value;\n"
              "OUTER[KEY] dumps the inner map in that slot, read inside one read-side section.",
           "example:\n  shmrcu map dump net flows\n  shmrcu map dump net 3 -j | jq .count\n"
           "  shmrcu map dump net 'blocklist[0]' --format ipv4")
    p.add_argument("name", help="runtime name")
    p.add_argument("map", help="map name, map id (digits), or OUTER[KEY]")
    p.add_argument("--format", choices=ops.DISPLAY_FORMATS, default=None,
                   help="show keys as ipv4, ipv6, hex or int")
    p.add_argument("--value-format", choices=ops.DISPLAY_FORMATS, default=None,
                   help="show values (each field) as ipv4, ipv6, hex or int")
    _json_flags(p)
    p.set_defaults(func=_handler("map dump", cmd_map_dump))


def _conf_top(p: argparse.ArgumentParser) -> None:
    _setup(p, "Refresh workers, maps and grace periods once a second (plain ANSI, fine in tmux).\n"
              "q or Ctrl-C quits.",
           "example:\n  shmrcu top net\n  shmrcu top net --interval 0.5")
    p.add_argument("name", help="runtime name")
    p.add_argument("--interval", type=_positive, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default 1)")
    p.add_argument("-n", "--iterations", type=int, default=None, metavar="N",
                   help="stop after N refreshes (default: until q / Ctrl-C)")
    p.set_defaults(func=_handler("top", cmd_top))


def _conf_cleanup(p: argparse.ArgumentParser) -> None:
    _setup(p, "Remove the /dev/shm segments of runtimes whose controller is dead (its lease is\n"
              "not held). Without NAME every such runtime is removed and live ones are skipped;\n"
              "a live runtime is removed only when named with --force.",
           "example:\n  shmrcu cleanup            # every dead runtime\n"
           "  shmrcu cleanup net\n  shmrcu cleanup net --force   # even if its controller is alive\n"
           "  shmrcu cleanup --prefix test-   # dead runtimes named test-*")
    p.add_argument("name", nargs="?", help="runtime name (default: every dead runtime)")
    p.add_argument("--force", action="store_true", help="remove the named runtime even if it is live")
    p.add_argument("--prefix", metavar="PREFIX",
                   help="without NAME: only runtimes whose name starts with PREFIX")
    p.add_argument("-j", "--json", action="store_true", help="print what was removed as JSON")
    p.set_defaults(func=_handler("cleanup", cmd_cleanup))


def _conf_bench(p: argparse.ArgumentParser) -> None:
    _setup(p, "Run the side-by-side comparison and print one table with ratios: shmrcu (per-call,\n"
              "lookup_batch, the Cython program in a WorkerPool) vs multiprocessing.shared_memory+Lock,\n"
              "UltraDict and Manager().dict(); synchronize() vs the kernel's grace period.",
           "example:\n  shmrcu bench --quick\n  shmrcu bench --json bench.json --plot bench.png")
    from . import benchsuite
    benchsuite.add_arguments(p)
    p.set_defaults(func=_handler("bench", cmd_bench))


# (name, one-line help, configure(parser), run(args) -> exit code)
COMMANDS = [
    ("list", "runtimes in /dev/shm, their controller and whether it is alive", _conf_list),
    ("stat", "workers, maps and grace periods of a runtime", _conf_stat),
    ("map", "show or dump maps (map show NAME, map dump NAME MAP)", _conf_map),
    ("top", "live view of a runtime (q or Ctrl-C quits)", _conf_top),
    ("cleanup", "remove segments of runtimes whose controller is dead", _conf_cleanup),
    ("bench", "shmrcu vs shared_memory+Lock, UltraDict, Manager dict; synchronize vs kernel", _conf_bench),
]


def run_args(args: argparse.Namespace) -> int:
    """Run a parsed command of ours (each parser set ``func``)."""
    return args.func(args)


def commands() -> list[tuple]:
    """``(name, help, configure, run)`` for a registry like ``shmrcu.cli.register``:
    ``for c in commands.commands(): register(*c)``."""
    return [(name, help_, conf, run_args) for name, help_, conf in COMMANDS]


def register(subparsers) -> None:
    """Add list, stat, map (show/dump), top, cleanup and bench to an argparse ``subparsers``."""
    for name, help_, conf in COMMANDS:
        conf(subparsers.add_parser(name, help=help_))


def _handler(name: str, fn):
    """Wrap a command: user errors become one stderr line and an exit code, never a traceback."""
    def handler(args) -> int:
        try:
            return int(fn(args) or 0)
        except ops.OpsError as e:
            print(f"shmrcu {name}: {e}", file=sys.stderr)
            return e.code
        except (ShmrcuError, OSError) as e:       # e.g. the runtime vanished while we read it
            if isinstance(e, BrokenPipeError):        # `shmrcu map dump ... | head`
                _quiet_stdout()
                return 0
            print(f"shmrcu {name}: {ops._one_line(e)}", file=sys.stderr)
            return 13 if isinstance(e, PermissionError) else 1
        except KeyboardInterrupt:
            return 130
    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _quiet_stdout() -> None:
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmrcu", formatter_class=_FMT,
        description="Operate shmrcu runtimes: list, stat, map show/dump, top, cleanup, bench.",
        epilog="example:\n  shmrcu list\n  shmrcu stat net -p")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
