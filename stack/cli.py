"""Command line of the local stack.

Usage:
    python -m stack install            # JVM parts from Maven Central, Spark connectors, secrets (idempotent)
    python -m stack up [SERVICE ...]   # start and wait until ready; prints the status table
    python -m stack down [SERVICE ...] # stop; leaves no process behind
    python -m stack status [--json]    # service, address, state (up, starting, degraded, crashed, crash-looping,
                                       # down), pid, memory, restarts, log file, what is wrong
    python -m stack env                # print the path of connection.env (source it in a shell)
    python -m stack demo               # simulator on, and a live SQL view of what arrives (after `up`)
    python -m stack supervise          # the supervisor `up` starts: restarts what exits (see stack/supervisor.py)
    python -m stack audit --run FILE   # reconcile a simulator run stage by stage (or --since 10m); exit 1 if
                                       # a difference is unexplained
    python -m stack lab [--port N]     # JupyterLab over notebooks/; prints the one URL to open (Ctrl+C stops it)

Settings: stack/stack.toml, each overridable by a STACK_<KEY> environment variable. Every process these commands
start gets runtime.settings.ENVIRONMENT_DEFAULTS (no usage telemetry) unless the environment sets them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runtime.settings import ENVIRONMENT_DEFAULTS, connection_settings
from runtime.waiting import NotReady
from stack.audit import Scope, audit, format_audit, parse_since, scope_of_run
from stack.audit import __doc__ as audit_doc
from stack.config import load_config
from stack.install import install
from stack.jupyter import add_lab_arguments, run_lab
from stack.launcher import Stack, format_status, status_json


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
    for name, text in (("up", "start services, wait until each is ready, and supervise them (harmless if up)"),
                       ("down", "stop services; no process of the stack is left"),
                       ("status", "show each service's address, state, pid, memory, restarts, log file and, "
                                  "unless it is up, what is wrong; exit code 3 unless all are up")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("services", nargs="*", metavar="SERVICE",
                         help="a service as `status` names it: mosquitto, kafka, kudu-master, kudu-tserver, sql, "
                              "model, gateway, streaming, edge, dashboard; in the cluster profile kafka-1..3, "
                              "kudu-master-1..3, kudu-tserver-1..3, spark-master, spark-worker-1..2 instead of "
                              "kafka and kudu-* (default: all)")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    commands.add_parser("env", help="print the path of the connection file (source it to use the stack)")
    commands.add_parser("demo", help="run the simulator and watch SQL see readings arrive (needs `up`)")
    lab = commands.add_parser("lab", help="JupyterLab over the lab notebooks: prints the one URL to open, runs "
                              "until Ctrl+C", description=run_lab.__doc__)
    add_lab_arguments(lab)
    supervise = commands.add_parser("supervise", help="restart the services `up` started when they exit or wedge "
                                    "(`up` starts it; you do not need to)")
    supervise.add_argument("--health-file", help="where to write the supervisor's own state")
    audit = commands.add_parser("audit", help="reconcile what each stage saw of some readings; exit 1 if a "
                                "difference is unexplained", description=audit_doc.split("\n\n")[0])
    which = audit.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, metavar="FILE", help="a simulator run's record (--run-record FILE)")
    which.add_argument("--since", metavar="WHEN", help="readings with sensor_ts from WHEN: 10m or 2h ago, an ISO time "
                       "(UTC unless it says), or epoch seconds")
    audit.add_argument("--sensor-ids", metavar="FIRST-LAST", help="only these machines (with --since)")
    audit.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="count again until nothing is pending or unexplained, for up to this long")
    audit.add_argument("--json", action="store_true", help="the result as JSON, for scripts")
    return parser


def audit_scope(args: argparse.Namespace) -> Scope:
    if args.run:
        return scope_of_run(args.run)
    first = last = None
    if args.sensor_ids:
        first_text, _, last_text = args.sensor_ids.partition("-")
        first, last = int(first_text), int(last_text or first_text)
    return Scope(parse_since(args.since), first_id=first, last_id=last)


def run_audit(args: argparse.Namespace, stack: Stack) -> int:
    gateway = stack.select(["gateway"])[0]
    result = audit(connection_settings(), stack.cfg.streaming_checkpoint, audit_scope(args), args.wait,
                   gateway.health_file)
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_audit(result))
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    for name, value in ENVIRONMENT_DEFAULTS.items():  # for this process and every process it starts
        os.environ.setdefault(name, value)
    args = build_parser().parse_args(argv)
    if args.command == "supervise":
        from stack.supervisor import main as supervise

        return supervise(["--health-file", args.health_file] if args.health_file else [])
    try:
        cfg = load_config()
    except ValueError as exc:  # a setting out of range, an unknown STACK_* variable: the message says which
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stack = Stack(cfg)
    try:
        if args.command == "install":
            print(install(cfg, args.installed, args.started_at))
        elif args.command == "up":
            print(f"Starting the local stack in {cfg.dir} ...")
            print(format_status(stack.up(args.services), cfg.profile))
            print(f"\nConnection settings: source {cfg.connection_file}")
        elif args.command == "down":
            stack.down(args.services)
            print(format_status(stack.status(args.services), cfg.profile))
        elif args.command == "status":
            rows = stack.status(args.services)
            print(status_json(rows) if args.json else format_status(rows, cfg.profile))
            return 0 if all(r.state == "up" for r in rows) else 3
        elif args.command == "env":
            print(stack.write_connection_file())
        elif args.command == "audit":
            return run_audit(args, stack)
        elif args.command == "demo":
            from stack.demo import run_demo

            run_demo()
        elif args.command == "lab":
            return run_lab(cfg, args)
    except (RuntimeError, NotReady, FileNotFoundError) as exc:  # StackError is a RuntimeError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
