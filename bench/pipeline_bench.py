"""Benchmark the whole pipeline: MQTT in -> gateway -> Kafka -> spark-submit job -> Kudu, queryable through SQL.

Usage (the local stack must be up: `make up`):
    python -m bench.pipeline_bench [--readings 200000] [--baseline-readings 20000] [--rates 10000]
                                   [--rate-seconds 60] [--workshop-seconds 60] [--scoring batch per-record]
                                   [--no-dashboard] [--json FILE]

For each scoring mode (`batch`, the product's one call per partition batch, and `per-record`, the workshop's one
call per reading) it starts its own gateway (MQTT `pbench/#` -> its own Kafka topic) and its own streaming job
(-> Kudu table `sensors_bench`, a fresh checkpoint, 1 s trigger), warms them up, then runs:
  - flat out: the simulator publishes N readings as fast as it can; records/s = N / (first publish until
    `select count(*)` returns N);
  - fixed rates (--rates): R readings/s for --rate-seconds; records/s = delivered / time;
  - the workshop's rate: one reading per second (the workshop's interval_ms 1000) for --workshop-seconds;
  - with --dashboard (the default; batch scoring): flat out and the workshop's rate again, with a headless
    Chromium page open on the stack's dashboard (bench/browser.py): the throughput with and without it, and the
    cores the dashboard's server and the page use.
Latency: during every scenario, probe readings (--probe-rate per second, sensor ids of their own) travel the same
path; the bench scans Kudu every 0.25 s and a probe's latency is (first scan that returns it) - its sensor_ts, so
the figures are rounded up by up to one poll (a scan takes ~0.1 s). Every scenario ends with a check through SQL
(impyla): as many rows and distinct keys as readings published.
CPU per stage: the CPU seconds each process group used during the scenario, divided by the readings: where the
CPU goes per record. The stack's other processes (its own gateway and job) stay up but idle.
With --json FILE, the results are also written to FILE (one object per scenario: records_per_s, p50_s, p99_s,
cpu_us_per_record by process, the scoring mode), so that runs can be compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from bench.browser import Browser, headless_chromium
from bench.processes import (
    forget_sessions,
    group_cpu_seconds,
    own_cpu_seconds,
    start_gateway,
    start_until_up,
    stop_group,
)
from runtime.kafka import delete_topic, ensure_topic
from runtime.kudu import kudu_environment
from runtime.settings import REPO_ROOT, connection_settings, require
from runtime.waiting import wait_until
from simulator.config import SimulatorConfig, load_simulator_config
from simulator.publisher import run
from sql.client import cursor, execute
from sql.kudu_ddl import impala_kudu_table_name, sensors_ddl
from stack.config import StackConfig, load_config
from stack.process import PidRecord
from stack.services import all_services

SQL_TABLE = "sensors_bench"
DASHBOARD_OPEN = ", dashboard open"
MQTT_TOPIC = "pbench"
MACHINES = 100
PROBE_IDS = 10
ID_BLOCK = 1_000  # each scenario's machines and probes get their own block of sensor ids
WORKSHOP_FEATURES = (0, 65, 0, 137, 21.95, 83, 19.42, 111, 9.4, 6, 3.43, 4)
POLL_S = 0.25
COUNT_EVERY = 4  # polls: the row count every second
# A row as `kudu table scan` prints it: (int32 sensor_id=3, unixtime_micros sensor_ts=2026-11-25T19:53:50.711492Z)
SCAN_ROW = re.compile(r"sensor_id=(\d+), unixtime_micros sensor_ts=([\d\-]+T[\d:]+)(?:\.(\d+))?Z")
SCAN_COUNT = re.compile(r"Total count (\d+)")


@dataclasses.dataclass
class Outcome:
    scoring: str
    scenario: str
    readings: int
    seconds: float
    latencies_s: list[float]
    cpu_s: dict[str, float]

    @property
    def records_per_s(self) -> float:
        return self.readings / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")

    def as_json(self) -> dict:
        """The figures of this scenario, as `--json` writes them (NaN, no latency measured, as null)."""
        p50, p99 = self.percentile(50), self.percentile(99)
        return {"scoring": self.scoring, "scenario": self.scenario, "readings": self.readings,
                "seconds": round(self.seconds, 3), "records_per_s": round(self.records_per_s, 1),
                "p50_s": None if np.isnan(p50) else round(p50, 3), "p99_s": None if np.isnan(p99) else round(p99, 3),
                "probes": len(self.latencies_s),
                "cpu_us_per_record": {stage: round(seconds / self.readings * 1e6, 1)
                                      for stage, seconds in sorted(self.cpu_s.items())}}


def write_json(path: Path, outcomes: list[Outcome], args: argparse.Namespace) -> None:
    """The run's results and how it was run, to compare with another run."""
    report = {"bench": "pipeline", "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "cores": os.cpu_count(), "options": {k: v for k, v in vars(args).items() if k != "json"},
              "scenarios": [o.as_json() for o in outcomes]}
    path.write_text(json.dumps(report, indent=2) + "\n")


class ProbePublisher(threading.Thread):
    """Publishes one probe reading (sensor_ts = now) every 1/rate s on MQTT, cycling over its sensor ids."""

    def __init__(self, settings: dict[str, str], first_id: int, rate: float):
        super().__init__(daemon=True)
        self.first_id, self.interval, self.stopping = first_id, 1 / rate, threading.Event()
        self.published: dict[tuple[int, int], float] = {}  # (sensor_id, sensor_ts) -> publish time
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pbench-probe-{first_id}")
        self.client.username_pw_set(settings["MQTT_USERNAME"], settings["MQTT_PASSWORD"])
        self.client.connect(settings["MQTT_HOST"], int(settings["MQTT_PORT"]))
        self.client.loop_start()

    def run(self) -> None:
        count = 0
        while not self.stopping.wait(self.interval):
            sensor_id, sensor_ts = self.first_id + count % PROBE_IDS, time.time_ns() // 1000
            reading = {"sensor_id": sensor_id, "sensor_ts": sensor_ts,
                       **{f"sensor_{i}": v for i, v in enumerate(WORKSHOP_FEATURES)}}
            self.client.publish(f"{MQTT_TOPIC}/{sensor_id}", json.dumps(reading), qos=1)
            self.published[(sensor_id, sensor_ts)] = sensor_ts / 1e6
            count += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.client.loop_stop()
        self.client.disconnect()


class QueryablePoller(threading.Thread):
    """Scans Kudu (`kudu table scan`): when each probe first becomes queryable, and the scenario's row count.

    Kudu's own scanner, not SQL: a Spark SQL query costs ~0.1 CPU s here, and polling with it would take a
    core away from the pipeline being measured. The scan tool's CPU is counted apart (`cpu_s`)."""

    def __init__(self, cfg: StackConfig, master: str, machines: tuple[int, int], probes: tuple[int, int]):
        super().__init__(daemon=True)
        self.scanner = BenchTableScanner(cfg, master)
        self.machines, self.probes, self.stopping = machines, probes, threading.Event()
        self.count_from = threading.Event()  # set once publishing is over: no count can be complete before
        self.first_seen: dict[tuple[int, int], float] = {}
        self.count, self.count_at = 0, time.time()
        self.error: Exception | None = None

    @property
    def cpu_s(self) -> float:
        return self.scanner.cpu_s

    def run(self) -> None:
        polls = 0
        try:
            while not self.stopping.is_set():
                started = time.time()
                rows = self.scanner.scan(self.probes, "-columns=sensor_id,sensor_ts")
                seen = time.time()
                for sensor_id, seconds, fraction in SCAN_ROW.findall(rows):
                    self.first_seen.setdefault((int(sensor_id), scan_micros(seconds, fraction)), seen)
                if self.count_from.is_set() and polls % COUNT_EVERY == 0:
                    count = self.scanner.count(self.machines)
                    if count != self.count:
                        self.count, self.count_at = count, time.time()
                polls += 1
                self.stopping.wait(max(0.0, POLL_S - (time.time() - started)))
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def wait_for(self, what: str, done: Callable[[], bool], timeout_s: float) -> None:
        """Until done() (the poller's progress, checked by the main thread), the poller failed, or the time is up.
        The figures are the poller's own timestamps: how often this checks does not change them."""
        wait_until(done, timeout_s, what,
                   abort=lambda: f"polling Kudu failed: {self.error}" if self.error else None)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class BenchTableScanner:
    """`kudu table scan` of the bench table, by a range of sensor ids; the scan tool's CPU is summed in `cpu_s`."""

    def __init__(self, cfg: StackConfig, master: str):
        self.command = [str(cfg.kudu_home / "bin" / "kudu"), "table", "scan", master,
                        impala_kudu_table_name(SQL_TABLE)]
        self.env = kudu_environment(cfg.kudu_home)
        self.cpu_s = 0.0

    def scan(self, ids: tuple[int, int], *options: str) -> str:
        """The tool's output for the rows with ids[0] <= sensor_id < ids[1]."""
        predicates = json.dumps(["AND", [">=", "sensor_id", ids[0]], ["<", "sensor_id", ids[1]]])
        # posix_spawn and a file, not subprocess and pipes: the simulator forks while this runs, and a forked child
        # holding a pipe's write end (subprocess's own exec-status pipe too) would block us until it exits.
        with tempfile.TemporaryFile("w+") as output:
            pid = os.posix_spawn(self.command[0], [*self.command, f"-predicates={predicates}", *options], self.env,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, output.fileno(), 1),
                                               (os.POSIX_SPAWN_DUP2, output.fileno(), 2)])
            _, status, usage = os.wait4(pid, 0)  # reaped here to learn its CPU time
            output.seek(0)
            out = output.read()
        self.cpu_s += usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"kudu table scan failed ({os.waitstatus_to_exitcode(status)}): {out.strip()[-500:]}")
        return out

    def count(self, ids: tuple[int, int]) -> int:
        """How many rows have ids[0] <= sensor_id < ids[1]."""
        return int(SCAN_COUNT.search(self.scan(ids, "-row_count_only")).group(1))


def scan_micros(seconds: str, fraction: str) -> int:
    """Microseconds since the epoch of the scan tool's `2026-11-25T19:53:50` and `711492`."""
    whole = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(whole.timestamp()) * 1_000_000 + int(fraction.ljust(6, "0")[:6] or 0)


class Pipeline:
    """The bench's own gateway and streaming job for one scoring mode, on a Kafka topic of their own."""

    def __init__(self, args: argparse.Namespace, settings: dict[str, str], scoring: str, workdir: Path, stamp: str):
        self.settings, self.scoring, self.workdir = settings, scoring, workdir
        self.topic = f"iot.pbench.{scoring}.{stamp}"
        self.gateway_id = f"gw-pbench-{scoring}-{stamp}"
        self.gateway_workers = args.gateway_workers
        self.job_log = load_config().logs_dir / f"pipeline-bench-job-{scoring}.log"

    def __enter__(self) -> Pipeline:
        self.job_log.parent.mkdir(parents=True, exist_ok=True)
        self.job_log.write_text("")
        print(f"  {self.scoring:<10} starting its gateway and streaming job (job log: {self.job_log})", flush=True)
        ensure_topic(self.settings["KAFKA_BOOTSTRAP"], self.topic, load_config().kafka_iot_partitions)
        self.job = start_job(self.settings, self.topic, self.scoring, self.workdir, self.job_log)
        try:
            self.gateway = start_gateway(self.gateway_id, self.gateway_workers, f"{MQTT_TOPIC}/#", self.topic,
                                         self.workdir / f"gateway-{self.scoring}.health")
        except BaseException:
            stop_group(self.job)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            stop_group(self.gateway)
            forget_sessions(self.settings, self.gateway_id, self.gateway_workers)
        finally:
            stop_group(self.job)
            delete_topic(self.settings["KAFKA_BOOTSTRAP"], self.topic)

    def process_groups(self) -> dict[str, int]:
        return {"gateway": self.gateway.pid, "streaming job": self.job.pid}


def start_job(settings: dict[str, str], topic: str, scoring: str, workdir: Path, log: Path,
              *options: str, trigger_s: float = 1.0) -> subprocess.Popen:
    """A streaming job of the bench's own: Kafka `topic` -> the bench table, a fresh checkpoint in `workdir`, no
    alerts nor verdicts queries; `options`: more of the job's options."""
    return start_until_up(
        [sys.executable, "-m", "streaming", "--topic", topic, "--scoring", scoring,
         "--kudu-table", impala_kudu_table_name(SQL_TABLE), "--trigger-seconds", str(trigger_s), "--no-alerts",
         "--no-verdicts", "--checkpoint", str(workdir / f"checkpoint-{scoring}"),
         "--health-file", str(workdir / f"job-{scoring}.health"), *options],
        workdir / f"job-{scoring}.health", f"streaming job ({scoring})", log, env={**os.environ, **settings})


def stack_process_groups(cfg: StackConfig) -> dict[str, int]:
    """The stack's brokers and servers (the processes every reading passes through), by name."""
    groups = {}
    for service in all_services(cfg):
        if service.name in ("gateway", "streaming"):
            continue  # the stack's own, idle during the bench
        record = PidRecord.load(service.pid_file)
        if record:
            groups[service.name] = record.pid
    return groups


BROWSER = "browser (dashboard page)"


def cpu_snapshot(groups: dict[str, int], browser: Browser | None = None) -> dict[str, float]:
    snapshot = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    if browser:
        snapshot[BROWSER] = browser.cpu_seconds()
    snapshot["simulator"] = own_cpu_seconds(resource.RUSAGE_CHILDREN)  # its publishers are reaped children
    snapshot["bench (probes, Kudu scans)"] = own_cpu_seconds()
    return snapshot


class Bench:
    def __init__(self, args: argparse.Namespace, settings: dict[str, str], sim: SimulatorConfig):
        self.args, self.settings, self.sim = args, settings, sim
        self.cfg, self.sql = load_config(), (settings["SQL_HOST"], int(settings["SQL_PORT"]))
        self.next_block = 10_000_000

    def scenario(self, pipeline: Pipeline, name: str, sim: SimulatorConfig, expected: int | None = None,
                 browser: Browser | None = None) -> Outcome:
        """Publish with `sim` (plus probes) and wait until every reading and probe is queryable. With `browser` (a
        page open on the dashboard), its CPU is counted too."""
        first_id, self.next_block = self.next_block, self.next_block + ID_BLOCK
        sim = dataclasses.replace(sim, first_sensor_id=first_id, machine_count=MACHINES)
        probes_from = first_id + ID_BLOCK - PROBE_IDS
        groups = {**stack_process_groups(self.cfg), **pipeline.process_groups()}
        poller = QueryablePoller(self.cfg, self.settings["KUDU_MASTER"], (first_id, first_id + MACHINES),
                                 (probes_from, probes_from + PROBE_IDS))
        probes = ProbePublisher(self.settings, probes_from, self.args.probe_rate)
        before = cpu_snapshot(groups, browser)
        started = time.time()
        poller.start()
        probes.start()
        print(f"  {pipeline.scoring:<10} {name}: publishing ...", flush=True)
        published = run(sim, progress=False).published
        poller.count_from.set()
        if expected is not None and published != expected:
            raise RuntimeError(f"the simulator published {published:,} of {expected:,} readings")
        poller.wait_for(f"{published:,} readings queryable", lambda: poller.count >= published, self.args.timeout)
        probes.stop()
        poller.wait_for("every probe queryable", lambda: len(poller.first_seen) >= len(probes.published), 120)
        poller.stop()
        after = cpu_snapshot(groups, browser)
        cpu = {stage: after[stage] - before[stage] for stage in before}
        cpu["simulator"] -= poller.cpu_s  # the scan tool runs are reaped children too
        cpu["bench (probes, Kudu scans)"] += poller.cpu_s
        self.check_exactly_once(sim.first_sensor_id, published)
        latencies = [poller.first_seen[key] - sent for key, sent in probes.published.items()]
        return Outcome(pipeline.scoring, name, published, poller.count_at - started, latencies, cpu)

    def check_exactly_once(self, first_id: int, published: int) -> None:
        """Through SQL, as users see it: as many rows and distinct keys as readings published."""
        mine = f"sensor_id >= {first_id} and sensor_id < {first_id + MACHINES}"
        with cursor(*self.sql) as cur:
            cur.execute(f"select count(*), count(distinct sensor_id, sensor_ts) from {SQL_TABLE} where {mine}")
            rows, keys = cur.fetchall()[0]
        if rows != published or keys != published:
            raise RuntimeError(f"{rows:,} rows, {keys:,} distinct keys for {published:,} readings published")

    def run_mode(self, scoring: str, workdir: Path, stamp: str) -> list[Outcome]:
        args, outcomes = self.args, []
        readings = args.readings if scoring == "batch" else args.baseline_readings
        flat_out = dataclasses.replace(self.sim, messages=readings, interval_ms=0)
        workshop = dataclasses.replace(self.sim, interval_ms=1000, publishers=1, duration_s=args.workshop_seconds,
                                       messages=0)
        with_dashboard = args.dashboard and scoring == "batch"
        with Pipeline(args, self.settings, scoring, workdir, stamp) as pipeline:
            self.scenario(pipeline, "warm-up", dataclasses.replace(self.sim, messages=2_000, interval_ms=0))
            outcomes.append(self.scenario(pipeline, f"flat out, {readings:,} readings", flat_out, readings))
            if with_dashboard:
                outcomes.append(self.with_dashboard(pipeline, f"flat out, {readings:,} readings", flat_out, readings))
            for rate in args.rates:
                outcomes.append(self.scenario(pipeline, f"{rate:,}/s for {args.rate_seconds} s", dataclasses.replace(
                    self.sim, interval_ms=1000 / rate, duration_s=args.rate_seconds, messages=0)))
            if args.workshop_seconds:
                name = f"workshop rate 1/s for {args.workshop_seconds} s"
                outcomes.append(self.scenario(pipeline, name, workshop))
                if with_dashboard:
                    outcomes.append(self.with_dashboard(pipeline, name, workshop))
        return outcomes

    def with_dashboard(self, pipeline: Pipeline, name: str, sim: SimulatorConfig, expected: int | None = None
                       ) -> Outcome:
        """The scenario again, with one browser page open on the stack's dashboard (which shows the bench's scored
        readings: the bench's job writes them to `iot.scored` as the stack's does)."""
        with headless_chromium(self.settings["DASHBOARD_URL"]) as browser:
            return self.scenario(pipeline, f"{name}{DASHBOARD_OPEN}", sim, expected, browser)


def print_report(outcomes: list[Outcome]) -> None:
    print(f"\n{'scoring':<10}  {'scenario':<48}  {'readings':>9}  {'records/s':>9}  {'p50 s':>6}  {'p99 s':>6}  "
          f"{'probes':>6}")
    for o in outcomes:
        print(f"{o.scoring:<10}  {o.scenario:<48}  {o.readings:>9,}  {o.records_per_s:>9,.0f}  {o.percentile(50):>6.2f}"
              f"  {o.percentile(99):>6.2f}  {len(o.latencies_s):>6}")
    flat = {o.scoring: o for o in outcomes if o.scenario.startswith("flat out")}
    if {"batch", "per-record"} <= flat.keys():
        ratio = flat["batch"].records_per_s / flat["per-record"].records_per_s
        print(f"\nspeed-up of batch scoring over one call per record (flat out, same harness): {ratio:.1f}x")
    print_dashboard_cost(outcomes)
    for o in outcomes:
        print(f"\nCPU by stage, {o.scoring} scoring, {o.scenario} (+ probes), {o.seconds:.1f} s:")
        total = sum(o.cpu_s.values())
        for stage, seconds in [*sorted(o.cpu_s.items(), key=lambda item: -item[1]), ("all", total)]:
            print(f"  {stage:<28} {seconds / o.readings * 1e6:>9,.1f} us/record  {seconds / o.seconds:>5.2f} cores")


def print_dashboard_cost(outcomes: list[Outcome]) -> None:
    """Each scenario run with the dashboard open against the same without: throughput, and the cores the dashboard's
    server and the browser page used."""
    closed = {o.scenario: o for o in outcomes if o.scoring == "batch" and not o.scenario.endswith(DASHBOARD_OPEN)}
    for open_ in (o for o in outcomes if o.scenario.endswith(DASHBOARD_OPEN)):
        without = closed[open_.scenario.removesuffix(DASHBOARD_OPEN)]
        change = open_.records_per_s / without.records_per_s - 1
        print(f"\ndashboard cost, {without.scenario}: {without.records_per_s:,.0f} -> {open_.records_per_s:,.0f} "
              f"records/s with one page open ({change:+.1%}); dashboard server "
              f"{without.cpu_s.get('dashboard', 0) / without.seconds:.3f} cores closed, "
              f"{open_.cpu_s.get('dashboard', 0) / open_.seconds:.3f} cores open; the page itself "
              f"{open_.cpu_s[BROWSER] / open_.seconds:.3f} cores")


def run_sql(settings: dict[str, str], statement: str) -> None:
    """One statement through SQL, as Impala would run it (Kudu DDL included)."""
    execute(statement, settings["SQL_HOST"], int(settings["SQL_PORT"]), settings["KUDU_MASTER"])


def prepare_table(settings: dict[str, str]) -> None:
    """A fresh table like `sensors` (the lab-9 DDL), `sensors_bench` in SQL, `impala::default.sensors_bench` in
    Kudu."""
    drop_table(settings)
    run_sql(settings, sensors_ddl(SQL_TABLE))


def drop_table(settings: dict[str, str]) -> None:
    """The bench table, from SQL and from Kudu."""
    run_sql(settings, f"DROP TABLE IF EXISTS {SQL_TABLE}")


def interrupt(*_args) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000, help="flat-out readings, batch scoring")
    parser.add_argument("--baseline-readings", type=int, default=20_000,
                        help="flat-out readings, per-record scoring (the baseline is slow)")
    parser.add_argument("--rates", type=int, nargs="*", default=[], help="fixed rates to offer, readings/s")
    parser.add_argument("--rate-seconds", type=int, default=60, help="duration of each fixed-rate scenario")
    parser.add_argument("--workshop-seconds", type=int, default=60, help="duration at the workshop's 1 reading/s")
    parser.add_argument("--probe-rate", type=float, default=5.0, help="latency probes per second")
    parser.add_argument("--publishers", type=int, default=2, help="simulator processes for the fast scenarios")
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--scoring", nargs="+", choices=["batch", "per-record"], default=["batch", "per-record"])
    parser.add_argument("--timeout", type=float, default=1800, help="give up on a scenario after this many seconds")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the results to FILE as JSON (records_per_s, p50_s, p99_s, "
                             "cpu_us_per_record by process, per scenario and scoring mode)")
    parser.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                        help="batch scoring: run the flat-out and workshop-rate scenarios again with a headless "
                             "browser open on the stack's dashboard, and report what it costs (default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # stop like Ctrl+C: the bench's own processes are stopped too
    settings = connection_settings()
    require(settings, "MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP", "KUDU_MASTER",
            "SQL_HOST", "SQL_PORT", "MODEL_URL", "MODEL_ACCESS_KEY", *(["DASHBOARD_URL"] if args.dashboard else []))
    sim = dataclasses.replace(load_simulator_config(REPO_ROOT / "simulator" / "mqtt.iot.config"), topic=MQTT_TOPIC,
                              verbose=False, publishers=args.publishers)
    print(f"pipeline bench: {os.cpu_count()} cores shared by simulator, brokers, gateway, job, model and SQL; "
          f"gateway workers {args.gateway_workers}, trigger 1 s, {args.probe_rate:g} latency probes/s")
    prepare_table(settings)
    bench, outcomes = Bench(args, settings, sim), []
    stamp = time.strftime("%Y%m%d%H%M%S")
    try:
        with tempfile.TemporaryDirectory(prefix="pbench-") as workdir:
            for scoring in args.scoring:
                outcomes += bench.run_mode(scoring, Path(workdir), stamp)
    except KeyboardInterrupt:
        print("\ninterrupted: the bench's gateway, job, topic and table are removed; no figures", file=sys.stderr)
        return 130
    finally:
        drop_table(settings)
    print_report(outcomes)
    if args.json:
        write_json(args.json, outcomes, args)
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
