"""Command line of the local stack.

Usage:
    python -m stack install            # JVM parts from Maven Central, Spark connectors, secrets (idempotent)
    python -m stack up [SERVICE ...]   # start and wait until ready; prints the status table
    python -m stack down [SERVICE ...] # stop; leaves no process behind
    python -m stack status             # service, address, state, pid, memory, log file
    python -m stack env                # print the path of connection.env (source it in a shell)
    python -m stack demo               # simulator on, and a live SQL view of what arrives (after `up`)

Settings: stack/stack.toml, each overridable by a STACK_<KEY> environment variable.
"""

from __future__ import annotations

import argparse
import sys

from stack.config import load_config
from stack.install import install
from stack.launcher import Stack, format_status
from stack.probes import NotReady
from stack.services import SERVICE_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description="Run the local IoT stack (Mosquitto, Kafka, Kudu, Spark SQL) on 127.0.0.1 under .stack/.",
        epilog="Settings: stack/stack.toml; override any with STACK_<KEY>, e.g. STACK_KAFKA_PORT=19092.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    install_cmd = commands.add_parser("install", help="install the JVM parts and generate secrets (idempotent)")
    install_cmd.add_argument("--installed", action="append", default=[], metavar="WHAT",
                             help="something an earlier setup step installed, for the summary line")
    install_cmd.add_argument("--started-at", type=float, metavar="EPOCH_S",
                             help="when setup started (seconds since the epoch), for the summary line")
    for name, text in (("up", "start services and wait until each is ready (harmless if up)"),
                       ("down", "stop services; no process of the stack is left"),
                       ("status", "show each service's address, state, pid, memory and log file")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("services", nargs="*", metavar="SERVICE",
                         help=f"any of: {', '.join(SERVICE_NAMES)} (default: all)")
    commands.add_parser("env", help="print the path of the connection file (source it to use the stack)")
    commands.add_parser("demo", help="run the simulator and watch SQL see readings arrive (needs `up`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config()
    stack = Stack(cfg)
    try:
        if args.command == "install":
            print(install(cfg, args.installed, args.started_at))
        elif args.command == "up":
            print(f"Starting the local stack in {cfg.dir} ...")
            print(format_status(stack.up(args.services)))
            print(f"\nConnection settings: source {cfg.connection_file}")
        elif args.command == "down":
            stack.down(args.services)
            print(format_status(stack.status(args.services)))
        elif args.command == "status":
            rows = stack.status(args.services)
            print(format_status(rows))
            return 0 if all(r.state == "up" for r in rows) else 3
        elif args.command == "env":
            print(stack.write_connection_file())
        elif args.command == "demo":
            from stack.demo import run_demo

            run_demo()
    except (RuntimeError, NotReady, FileNotFoundError) as exc:  # StackError is a RuntimeError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
