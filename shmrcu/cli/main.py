"""The ``shmrcu`` command.  One function pair per subcommand, in a registry.

Adding a subcommand: write ``configure(parser)`` and ``run(args) -> int`` and
``register("name", "one-line help", configure, run)``.  ``main`` builds the
parser from the registry, so nothing else changes.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure, run) -> None:
    COMMANDS[name] = Command(name, help, configure, run)


# ---- demo -------------------------------------------------------------------
def _demo_configure(p: argparse.ArgumentParser) -> None:
    from .demo import DemoConfig
    d = DemoConfig()
    p.add_argument("--workers", type=int, default=d.workers, help=f"worker processes (default {d.workers})")
    p.add_argument("--duration", type=float, default=d.duration, help=f"seconds (default {d.duration:g})")
    p.add_argument("--interval", type=float, default=d.interval_ms, metavar="MS",
                   help=f"A/B swap period in ms (default {d.interval_ms:g})")
    p.add_argument("--keys", type=int, default=d.keys, help=f"distinct uids (default {d.keys})")
    p.add_argument("--dist", choices=("uniform", "zipf"), default=d.dist, help=f"uid distribution (default {d.dist})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"events per batch (default {d.batch})")
    p.add_argument("--maps", choices=("per_worker", "shared"), default=d.maps,
                   help="stats maps: per_worker (exact even across SIGKILL) or shared (atomic adds)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin workers to CPUs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _demo_run(args: argparse.Namespace) -> int:
    from . import demo
    cfg = demo.DemoConfig(workers=args.workers, duration=args.duration, interval_ms=args.interval,
                          keys=args.keys, dist=args.dist, batch=args.batch, maps=args.maps,
                          pin=args.pin, seed=args.seed)
    return demo.main(cfg, as_json=args.json)


register("demo", "run the A/B stats-map demo (netd pattern) and check exact accounting",
         _demo_configure, _demo_run)


# ---- operations: list, stat, map, top, cleanup, bench (shmrcu.cli.commands) -------
def _register_ops() -> None:
    from . import commands
    for name, help_, configure, run in commands.commands():
        register(name, help_, configure, run)


_register_ops()


# ---- entry point -------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shmrcu", description="shared-memory RCU runtime")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        cmd.configure(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except ValueError as e:           # bad option values found past argparse
        print(f"shmrcu {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shmrcu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
