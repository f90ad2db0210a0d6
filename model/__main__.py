"""`python -m model`: serve the promoted model; list, approve, reject and promote registered versions.

Usage:
    python -m model serve [--host 127.0.0.1] [--port 8000] [--threads 4] [--workers 1]  # gunicorn; MODEL_ACCESS_KEY
    python -m model versions [--json]                     # every registered version: its run, figures, approval
    python -m model approve VERSION [--by NAME]           # approve it; ONNX export, parity, the edge artifact,
                                                          # and a rollout to every edge agent (--no-rollout)
    python -m model reject VERSION [--by NAME] [--reason TEXT]  # reject it (withdraws an approval)
    python -m model promote VERSION | best                # serve an approved version ('best' = highest auroc)
    python -m model rollout VERSION | served [--canary N] [--agent ID ...]  # send it to the edge agents
    python -m model rollback [--canary N]                 # send the edge fleet the version before the one it runs
    python -m model info                                  # the served model's metadata

Training registers each run as a version pending approval: `python -m model.train`, the lab-7 grid:
`python -m model.experiments`. Only approved versions are served; see model/approval.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from model.registry import (
    APPROVED,
    REJECTED,
    VersionRecord,
    best_approved_version,
    list_versions,
    load_served_model,
    promote,
    tell_server_to_reload,
)
from model.rollout import RolloutError, RolloutSummary, fleet, rollback, rollout
from runtime.settings import connection_settings


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


def _parity(record: VersionRecord) -> str:
    """The ONNX parity of a version, short: 'ok: 0.006% differ, gap 2.1e-07', or '-' before any approval."""
    onnx = record.onnx
    if "parity" not in onnx:
        return "-"
    if "error" in onnx:
        return f"{onnx['parity']}: export failed"
    examples = "" if onnx.get("examples_agree") == "true" else ", examples DISAGREE"
    return (f"{onnx['parity']}: {float(onnx['share_differing']):.3%} differ, "
            f"gap {float(onnx['max_probability_gap']):.1e}{examples}")


def versions_table(records: list[VersionRecord]) -> str:
    """The registered versions, one a line: run, trees/depth, figures, approval and ONNX parity."""
    lines = [f"{'version':>7}  {'run':<8}  {'trees/depth':>11}  {'auroc':>6}  {'ap':>6}  {'status':<8}  "
             f"{'by':<12}  {'at':<25}  onnx parity; reason"]
    for r in records:
        by, at = ((r.approved_by, r.approved_at) if r.status == APPROVED else
                  (r.rejected_by, r.rejected_at) if r.status == REJECTED else ("", ""))
        shape = f"{r.params.get('num_trees', '?')}/{r.params.get('max_depth', '?')}"
        reason = f"; {r.rejected_reason}" if r.status == REJECTED and r.rejected_reason else ""
        lines.append(f"{r.version:>7}  {r.run_id[:8]:<8}  {shape:>11}  {r.metrics.get('auroc', float('nan')):>6.4f}  "
                     f"{r.metrics.get('ap', float('nan')):>6.4f}  {r.status:<8}  {by:<12}  {at:<25}  "
                     f"{_parity(r)}{reason}")
    return "\n".join(lines)


def _version(text: str) -> int:
    if text.isascii() and text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a model version number (1, 2, ...): "
                                     "`python -m model versions` lists them")


def _version_or_best(text: str) -> int | str:
    return text if text == "best" else _version(text)


def _version_or_served(text: str) -> int | str:
    return "served" if text == "served" else _version(text)


def _rollout_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--canary", type=int, default=0, metavar="N",
                         help="the first N agents (sorted by id) first, the rest only if all N succeed (default 0)")
    command.add_argument("--timeout", type=float, default=60.0, metavar="S",
                         help="seconds to wait for each wave's agents to report (default 60)")


def _serve(args: argparse.Namespace) -> None:
    serve(args.host, args.port, args.threads, args.access_log, args.workers)


def _versions(args: argparse.Namespace) -> None:
    records = list_versions()
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=2))
    elif records:
        print(versions_table(records))
    else:
        print("no registered versions yet: train one (`python -m model.train --num-trees 20 --max-depth 20`)")


# model.approval is imported by the commands that use it: it loads scikit-learn and pandas, which would slow every
# `python -m model serve` down by a second before gunicorn starts.


def _approve(args: argparse.Namespace) -> None:
    from model.approval import approve

    approval = approve(args.version, args.by)
    print(approval.summary())
    if approval.artifact is None or not args.rollout:
        return
    settings = connection_settings()
    if not settings.get("MQTT_HOST"):
        print("no MQTT_HOST known (.stack/connection.env): no rollout to the edge; "
              f"`python -m model rollout {args.version}` sends it later")
        return
    try:
        known = fleet(settings)
    except (OSError, TimeoutError) as exc:
        print(f"the MQTT broker does not answer ({exc}): no rollout; `python -m model rollout {args.version}` "
              "sends it later")
        return
    if not known:
        print("no edge agents known yet (none has a status on jobs/+/status): nothing to roll out")
        return
    _report(rollout(settings, args.version, args.canary, args.timeout))


def _rollout(args: argparse.Namespace) -> None:
    version = load_served_model()[1].version if args.version == "served" else args.version
    _report(rollout(connection_settings(), version, args.canary, args.timeout, agents=args.agent))


def _rollback(args: argparse.Namespace) -> None:
    _report(rollback(connection_settings(), args.canary, args.timeout))


def _report(summary: RolloutSummary) -> None:
    succeeded = sum(state == "SUCCEEDED" for state in summary.states.values())
    print(f"job {summary.job_id}: model v{summary.version} runs on {succeeded} of {len(summary.states)} edge agent(s)")
    if not summary.ok:
        sys.exit(1)


def _reject(args: argparse.Namespace) -> None:
    from model.approval import reject

    print(reject(args.version, args.by, args.reason).summary())


def _promote(args: argparse.Namespace) -> None:
    version = best_approved_version() if args.version == "best" else args.version
    info = promote(version)
    print(f"promoted version {info.version} (run {info.run_id}, approved by {info.approved_by} at "
          f"{info.approved_at}; auroc {info.metrics.get('auroc')}, params {info.params}) as the served model")
    print(tell_server_to_reload())


def _info(args: argparse.Namespace) -> None:
    print(json.dumps(asdict(load_served_model()[1]), indent=2))


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subcommand per action, each with its handler as `run`."""
    parser = argparse.ArgumentParser(prog="python -m model", description="Serve the failure model; list, approve, "
                                     "reject and promote its registered versions.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the model server (gunicorn) on host:port")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--threads", type=int, default=4, help="requests served in parallel (default 4)")
    serve_cmd.add_argument("--workers", type=int, default=1,
                           help="worker processes (default 1); POST /model/reload reaches only the one that takes it")
    serve_cmd.add_argument("--access-log", action="store_true", help="log every request")
    serve_cmd.set_defaults(run=_serve)

    versions_cmd = commands.add_parser("versions", help="list the registered versions, their figures and approval")
    versions_cmd.add_argument("--json", action="store_true", help="as JSON, every field")
    versions_cmd.set_defaults(run=_versions)

    approve_cmd = commands.add_parser("approve", help="approve a version: it may be served, and its ONNX export "
                                      "goes to the edge if it scores as scikit-learn does")
    approve_cmd.add_argument("version", type=_version, metavar="VERSION")
    approve_cmd.add_argument("--by", help="who approves (default: you, the user running this)")
    approve_cmd.add_argument("--no-rollout", dest="rollout", action="store_false",
                             help="do not send it to the edge agents (default: every agent that has a status)")
    _rollout_options(approve_cmd)
    approve_cmd.set_defaults(run=_approve)

    reject_cmd = commands.add_parser("reject", help="reject a version: withdraws its approval and its edge artifact")
    reject_cmd.add_argument("version", type=_version, metavar="VERSION")
    reject_cmd.add_argument("--by", help="who rejects (default: you, the user running this)")
    reject_cmd.add_argument("--reason", default="", help="why, recorded with the version")
    reject_cmd.set_defaults(run=_reject)

    promote_cmd = commands.add_parser("promote", help="serve an approved version ('best' = the approved version "
                                      "with the highest auroc) and tell the model server to reload")
    promote_cmd.add_argument("version", type=_version_or_best, metavar="VERSION|best")
    promote_cmd.set_defaults(run=_promote)

    rollout_cmd = commands.add_parser("rollout", help="send an approved version's ONNX export to the edge agents "
                                      "over MQTT and wait until each reports SUCCEEDED or FAILED")
    rollout_cmd.add_argument("version", type=_version_or_served, metavar="VERSION|served")
    rollout_cmd.add_argument("--agent", action="append", metavar="ID",
                             help="this agent (repeatable; default: every agent that has a status)")
    _rollout_options(rollout_cmd)
    rollout_cmd.set_defaults(run=_rollout)

    rollback_cmd = commands.add_parser("rollback", help="send the edge fleet the newest approved version older than "
                                       "the one it runs")
    _rollout_options(rollback_cmd)
    rollback_cmd.set_defaults(run=_rollback)

    commands.add_parser("info", help="print the served model's metadata").set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (LookupError, PermissionError, FileNotFoundError, ValueError, RolloutError, ConnectionError,
            TimeoutError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
