"""`python -m model`: serve the promoted model, promote a run, show what is served.

Usage:
    python -m model serve [--host 127.0.0.1] [--port 8000] [--threads 4] [--workers 1]  # gunicorn; MODEL_ACCESS_KEY
    python -m model promote RUN_ID | best                                              # serve an MLflow run's model
    python -m model info                                                               # the served model's metadata

Training: `python -m model.train`, the lab-7 grid: `python -m model.experiments`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from model.registry import best_run_id, load_served_model, promote, tell_server_to_reload


def serve(host: str, port: int, threads: int, access_log: bool, workers: int = 1) -> None:
    """Replace this process with gunicorn serving the Flask app (one worker by default, several threads), with the
    hooks of model/server/gunicorn_conf.py: /metrics sums over the workers."""
    if not os.environ.get("MODEL_ACCESS_KEY"):
        sys.exit("error: MODEL_ACCESS_KEY is not set (source .stack/connection.env, or set it)")
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:model.server.gunicorn_conf",
            "--bind", f"{host}:{port}", "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads), "--timeout", "60",
            "--graceful-timeout", "10", "--error-logfile", "-", "--log-level", "info"]
    if access_log:
        argv += ["--access-logfile", "-"]
    os.execv(sys.executable, [*argv, "model.server:create_app()"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model", description="Serve and promote the failure model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the model server (gunicorn) on host:port")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--threads", type=int, default=4, help="requests served in parallel (default 4)")
    serve_cmd.add_argument("--workers", type=int, default=1,
                           help="worker processes (default 1); POST /model/reload reaches only the one that takes it")
    serve_cmd.add_argument("--access-log", action="store_true", help="log every request")
    promote_cmd = commands.add_parser("promote", help="serve the model of an MLflow run ('best' = highest auroc)")
    promote_cmd.add_argument("run", metavar="RUN_ID|best")
    commands.add_parser("info", help="print the served model's metadata")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.host, args.port, args.threads, args.access_log, args.workers)
    elif args.command == "promote":
        run_id = best_run_id() if args.run == "best" else args.run
        info = promote(run_id)
        print(f"promoted run {info.run_id} as served model version {info.version} "
              f"(auroc {info.metrics.get('auroc')}, params {info.params})")
        print(tell_server_to_reload())
    elif args.command == "info":
        print(json.dumps(asdict(load_served_model()[1]), indent=2))


if __name__ == "__main__":
    main()
