"""Benchmark the model server against in-process predict on the held-out rows.

Usage:
    python -m bench.model_bench [--single-calls 2000] [--batch-sizes 100 1000 10000] [--seconds 3]

Starts `python -m model serve` (gunicorn, 1 worker, 4 threads) on a free loopback port with the served model
(the stack's, or MODEL_PATH), then measures, each for about `--seconds`:
  - in-process: scikit-learn's predict on one core, and the server's own scoring function (which splits large
    batches across cores) called directly: the ceiling the HTTP figures are compared with;
  - batch over HTTP: rows/s per batch size, Arrow IPC and JSON, including the client's encoding and decoding;
  - single calls: p50/p99 latency of POST /predict with the workshop's feature string;
  - the edge path: the same model exported to ONNX (model/edge_model.py) and scored one reading at a time by an
    ONNX Runtime session on one thread, as an edge agent (python -m edge) scores each reading: p50/p99.
Checks that the server's answers equal in-process predict on every held-out row, and reports the share of rows on
which the ONNX export's verdict differs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time

import numpy as np

from contract import format_feature_string
from model import client
from model.edge_model import check_parity, onnx_scores, onnx_session, to_onnx
from model.registry import load_served_model, model_path
from model.server.scoring import ModelHolder
from model.train import held_out_split
from runtime.waiting import http_ok, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_loop(step, rows: np.ndarray, batch: int, seconds: float) -> tuple[float, np.ndarray]:
    """Call step(batch_rows) over consecutive batches for about `seconds`; rows/s and the last full pass."""
    batches = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)]
    done, results, start = 0, [], time.perf_counter()
    while True:
        for chunk in batches:
            results.append(step(chunk))
            done += len(chunk)
        if time.perf_counter() - start >= seconds:
            break
        results = []
    return done / (time.perf_counter() - start), np.concatenate(results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--single-calls", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    args = parser.parse_args(argv)

    rows = held_out_split().x_test
    pipeline, info = load_served_model()
    pipeline.set_params(forest__n_jobs=1)
    holder = ModelHolder(model_path())
    print(f"model version {info.version} (run {info.run_id}, params {info.params}); {len(rows):,} held-out rows")

    key, port = secrets.token_urlsafe(24), free_port()
    env = {**os.environ, "MODEL_ACCESS_KEY": key, "MODEL_PATH": str(model_path())}
    server = subprocess.Popen([sys.executable, "-m", "model", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    session = client.session()
    call = {"model_url": base, "access_key": key, "attempts": 1, "session": session}  # a failure fails the bench
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 60, "model server")

        def via_arrow(chunk: np.ndarray) -> np.ndarray:
            return client.score_batch(chunk, timeout_s=60, **call).verdicts

        def via_json(chunk: np.ndarray) -> np.ndarray:
            return client.score_batch_json(chunk, timeout_s=60, **call).verdicts

        print(f"\n{'batch':>7}  {'sklearn 1 core':>14}  {'in-process':>11}  {'HTTP Arrow':>11}  {'ratio':>6}  "
              f"{'HTTP JSON':>10}  {'ratio':>6}   (rows/s; ratio = in-process / HTTP)")
        for batch in args.batch_sizes:
            sklearn_rate, expected = timed_loop(pipeline.predict, rows, batch, args.seconds)
            local_rate, local = timed_loop(holder.predict, rows, batch, args.seconds)
            arrow_rate, served = timed_loop(via_arrow, rows, batch, args.seconds)
            json_rate, served_json = timed_loop(via_json, rows, batch, args.seconds)
            if not all(np.array_equal(answers, expected) for answers in (local, served, served_json)):
                sys.exit(f"MISMATCH: answers differ from scikit-learn's predict at batch {batch}")
            print(f"{batch:>7,}  {sklearn_rate:>14,.0f}  {local_rate:>11,.0f}  {arrow_rate:>11,.0f}  "
                  f"{local_rate / arrow_rate:>5.2f}x  {json_rate:>10,.0f}  {local_rate / json_rate:>5.2f}x")

        latencies = []
        for row in rows[: args.single_calls]:
            feature = format_feature_string(row)
            start = time.perf_counter()
            client.predict(feature, timeout_s=10, **call)
            latencies.append(time.perf_counter() - start)
        local_latencies = []
        for row in rows[: args.single_calls]:
            start = time.perf_counter()
            pipeline.predict(row.reshape(1, -1))
            local_latencies.append(time.perf_counter() - start)
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        l50, l99 = np.percentile(local_latencies, [50, 99]) * 1000
        print(f"\nsingle /predict calls ({args.single_calls:,}): p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"(in-process predict of one row: p50 {l50:.2f} ms, p99 {l99:.2f} ms)")
        report_edge_path(pipeline, rows, args.single_calls, p50, p99)
        print("answers: equal to scikit-learn's predict on every held-out row, in-process and over HTTP")
    finally:
        session.close()
        server.terminate()
        server.wait(timeout=30)


def report_edge_path(pipeline, rows: np.ndarray, calls: int, http_p50_ms: float, http_p99_ms: float) -> None:
    """Single-reading latency of the ONNX export in ONNX Runtime (the edge agent's path) against the HTTP path."""
    onnx_bytes = to_onnx(pipeline)
    session = onnx_session(onnx_bytes)
    latencies = []
    for row in rows[:calls].astype(np.float32):
        start = time.perf_counter()
        onnx_scores(session, row.reshape(1, -1))
        latencies.append(time.perf_counter() - start)
    e50, e99 = np.percentile(latencies, [50, 99]) * 1000
    parity = check_parity(pipeline, onnx_bytes, rows)
    print(f"edge: ONNX Runtime, one reading at a time ({calls:,}): p50 {e50:.3f} ms, p99 {e99:.3f} ms; "
          f"{http_p50_ms / e50:.0f}x faster than /predict at p50, {http_p99_ms / e99:.0f}x at p99 "
          f"({len(onnx_bytes) / 1e6:.1f} MB model)")
    print(f"edge parity with scikit-learn on the held-out rows: {parity.summary()}")


if __name__ == "__main__":
    main()
