"""Benchmark the streaming job alone: how fast it drains a backlog of readings from Kafka into Kudu, and its CPU.

Usage (the local stack must be up: `make up`):
    python -m bench.job_bench [--readings 100000] [--rounds 4] [--max-offsets-per-trigger 50000]
                              [--trigger-seconds 1] [--job-args 'OPTIONS'] [--json FILE]

Starts a streaming job of its own (batch scoring, Kafka topic of its own -> Kudu table `sensors_bench`, a fresh
checkpoint; no alerts nor verdicts queries), then, for each round: produces --readings readings to the topic (100
machines, the model's history as values), and counts the time and the job's CPU (its JVM and Python processes)
from the first record produced until `kudu table scan` counts them all. Round 1 includes the JVM's warm-up; the JIT
compiler goes on for minutes after it (each round says its share of the job's CPU), so the last rounds are closest
to the job as it runs for hours. The batch lines of the job's
log (rows, scoring, write and Kudu seconds) are printed for each round. Nothing else of the pipeline runs: the
gateway, simulator and probes of bench/pipeline_bench.py are left out, so the figures are the job's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaProducer

from bench.pipeline_bench import BenchTableScanner, drop_table, interrupt, prepare_table, start_job
from bench.processes import JIT_THREADS, group_cpu_seconds, stop_group, threads_cpu_seconds
from contract import ID_FIELD, SENSOR_FIELDS, TS_FIELD
from model.data import load_history
from runtime.kafka import delete_topic, ensure_topic
from runtime.settings import connection_settings, require
from runtime.waiting import wait_until
from stack.config import load_config
from stack.process import group_members
from streaming.options import MAX_OFFSETS_PER_TRIGGER

MACHINES = 100
FIRST_ID = 20_000_000
BATCH_LINE = re.compile(r"batch (\d+): (\d+) rows.*scoring ([\d.]+) s, write ([\d.]+) s \(Kudu ([\d.]+) s\)")


def readings(count: int, first_ts: int) -> list[tuple[bytes, bytes]]:
    """(key, value) records of `count` readings over MACHINES machines, as the gateway keys them (by machine)."""
    history = load_history()[list(SENSOR_FIELDS)].to_numpy().tolist()
    records = []
    for n in range(count):
        sensor_id = FIRST_ID + n % MACHINES
        reading = {ID_FIELD: sensor_id, TS_FIELD: first_ts + n, **dict(zip(SENSOR_FIELDS, history[n % len(history)],
                                                                              strict=True))}
        records.append((str(sensor_id).encode(), json.dumps(reading).encode()))
    return records


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def jit_cpu_seconds(pgid: int) -> float:
    """CPU seconds the JIT compiler threads of the job's JVM have used so far."""
    return threads_cpu_seconds(group_members(pgid), JIT_THREADS)


def batch_lines(log: Path, seen: int) -> list[str]:
    """The job's batch lines after the first `seen` ones."""
    lines = [line.split("streaming ", 1)[-1] for line in log.read_text().splitlines() if BATCH_LINE.search(line)]
    return lines[seen:]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.job_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=100_000, help="readings per round (default 100,000)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds with the same job (default 4: cold, then warmer; the JIT compiles for minutes)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=MAX_OFFSETS_PER_TRIGGER,
                        help=f"the job's limit on records per micro-batch (default {MAX_OFFSETS_PER_TRIGGER:,}, the "
                             "job's own)")
    parser.add_argument("--trigger-seconds", type=float, default=1.0, help="the job's trigger (default 1 s)")
    parser.add_argument("--job-args", default="", metavar="'OPTIONS'",
                        help="more of the job's options, as one string (e.g. '--kafka-option max.poll.records=5000')")
    parser.add_argument("--timeout", type=float, default=1800, help="give up on a round after this many seconds")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rounds' figures to FILE")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    settings = connection_settings()
    require(settings, "KAFKA_BOOTSTRAP", "KUDU_MASTER", "SQL_HOST", "SQL_PORT", "MODEL_URL", "MODEL_ACCESS_KEY")
    cfg, bootstrap = load_config(), settings["KAFKA_BOOTSTRAP"]
    topic = f"iot.jbench.{time.strftime('%Y%m%d%H%M%S')}"
    log = cfg.logs_dir / "job-bench.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    print(f"job bench: {os.cpu_count()} cores; {args.readings:,} readings a round, trigger {args.trigger_seconds:g} s, "
          f"maxOffsetsPerTrigger {args.max_offsets_per_trigger:,} (job log: {log})", flush=True)
    prepare_table(settings)
    ensure_topic(bootstrap, topic, cfg.kafka_iot_partitions)
    scanner, rounds, seen_lines = BenchTableScanner(cfg, settings["KUDU_MASTER"]), [], 0
    try:
        with tempfile.TemporaryDirectory(prefix="jbench-") as workdir:
            job = start_job(settings, topic, "batch", Path(workdir), log, "--max-offsets-per-trigger",
                            str(args.max_offsets_per_trigger), *shlex.split(args.job_args),
                            trigger_s=args.trigger_seconds)
            try:
                for number in range(1, args.rounds + 1):
                    records = readings(args.readings, time.time_ns() // 1000)
                    expected = number * args.readings
                    cpu_before, jit_before, started = group_cpu_seconds(job.pid), jit_cpu_seconds(job.pid), time.time()
                    produce(bootstrap, topic, records)
                    wait_until(lambda e=expected: scanner.count((FIRST_ID, FIRST_ID + MACHINES)) >= e,
                               args.timeout, f"round {number}: {expected:,} rows in Kudu",
                               abort=lambda: f"the job exited ({job.returncode})" if job.poll() is not None else None)
                    seconds, cpu_s = time.time() - started, group_cpu_seconds(job.pid) - cpu_before
                    jit_share = (jit_cpu_seconds(job.pid) - jit_before) / cpu_s if cpu_s else 0.0
                    lines = batch_lines(log, seen_lines)
                    seen_lines += len(lines)
                    rounds.append({"round": number, "readings": args.readings, "seconds": round(seconds, 2),
                                   "records_per_s": round(args.readings / seconds, 1),
                                   "job_cpu_us_per_record": round(cpu_s / args.readings * 1e6, 1),
                                   "job_cores": round(cpu_s / seconds, 2), "jit_share": round(jit_share, 3),
                                   "batches": len(lines)})
                    print(f"\nround {number}{' (JVM warm-up included)' if number == 1 else ''}: "
                          f"{args.readings:,} readings in {seconds:.1f} s = {args.readings / seconds:,.0f} records/s; "
                          f"job CPU {cpu_s / args.readings * 1e6:,.1f} us/record ({cpu_s / seconds:.2f} cores; "
                          f"{jit_share:.0%} of it the JVM's JIT compiler)")
                    for line in lines:
                        print(f"  {line}")
            finally:
                stop_group(job)
    except KeyboardInterrupt:
        print("\ninterrupted: the bench's job, topic and table are removed; no figures", file=sys.stderr)
        return 130
    finally:
        delete_topic(bootstrap, topic)
        drop_table(settings)
    if args.json:
        options = {key: value for key, value in vars(args).items() if key != "json"}
        args.json.write_text(json.dumps({"bench": "job", "cores": os.cpu_count(), "options": options,
                                         "rounds": rounds}, indent=2))
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
