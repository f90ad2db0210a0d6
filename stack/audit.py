"""`python -m stack audit`: reconcile what each stage saw of the readings since a point in time (or of a
simulator run), say where any difference lies, and exit non-zero if one is unexplained.

Stages, in the order a reading passes them:
- published: the simulator's own count of readings the broker acknowledged (from its `--run-record` file);
- the gateway: readings in Kafka `iot` (distinct keys; duplicates are harmless, the key collapses them) and its
  dead letters in `iot.dlq` (by reason);
- the streaming job: records of `iot` it has not processed yet (its checkpoint against Kafka's end offsets),
  its dead letters (not a reading, or a conflict: a different reading under a stored key);
- Kudu: rows, and distinct keys, through SQL.

Explained: duplicates in Kafka, dead letters with a reason, conflicts, records still waiting for the job.
Unexplained (exit 1): a reading published but not in Kafka nor dead-lettered, a reading in Kafka but not in
Kudu nor dead-lettered nor pending, more rows than readings.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from contract import ID_FIELD, TS_FIELD, InvalidReading, parse_reading
from runtime.health import read_health
from runtime.kafka import end_offsets
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, SQL_TABLE
from sql.client import query


@dataclass(frozen=True)
class Scope:
    """Which readings the audit is about: sensor_ts in [since_us, until_us], sensor_id in [first_id, last_id]."""

    since_us: int
    until_us: int | None = None
    first_id: int | None = None
    last_id: int | None = None
    published: int | None = None  # the simulator's count, when a run record is given ...
    faults: int = 0  # ... of which malformed on purpose (its fault injection)
    poison: int = 0  # malformed messages sent besides, on MQTT topics of the scope's machines

    def has_id(self, sensor_id: int) -> bool:
        return (self.first_id is None or self.first_id <= sensor_id) and (
            self.last_id is None or sensor_id <= self.last_id)

    def has_ts(self, sensor_ts: int) -> bool:
        return self.since_us <= sensor_ts and (self.until_us is None or sensor_ts <= self.until_us)

    def sql_where(self) -> str:
        def ts(us: int) -> str:
            return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

        parts = [f"{TS_FIELD} >= '{ts(self.since_us)}'"]
        if self.until_us is not None:
            parts.append(f"{TS_FIELD} <= '{ts(self.until_us)}'")
        if self.first_id is not None:
            parts.append(f"{ID_FIELD} >= {self.first_id}")
        if self.last_id is not None:
            parts.append(f"{ID_FIELD} <= {self.last_id}")
        return " and ".join(parts)


def scope_of_run(record_file: Path) -> Scope:
    """The scope of one simulator run, from the record it wrote (`python -m simulator ... --run-record FILE`)."""
    run = json.loads(record_file.read_text())
    return Scope(run["started_us"], run["ended_us"], run["first_sensor_id"], run["last_sensor_id"],
                 run["published"], sum(run["faults"].values()))


@dataclass
class Counts:
    """What each stage saw of the scope's readings."""

    published: int | None = None
    faults: int = 0
    poison: int = 0
    kafka_records: int = 0
    kafka_distinct: int = 0
    gateway_dead_letters: int = 0
    gateway_dead_letters_distinct: int = 0
    gateway_reasons: dict[str, int] = field(default_factory=dict)
    job_pending: int = 0
    job_dead_letters: int = 0
    job_conflicts: int = 0
    job_reasons: dict[str, int] = field(default_factory=dict)
    kudu_rows: int = 0
    kudu_distinct: int = 0
    gateway_process: dict[str, float] = field(default_factory=dict)  # its own counters since it started


@dataclass(frozen=True)
class Finding:
    explained: bool
    text: str


def reconcile(c: Counts) -> list[Finding]:
    """Where the counts differ, and whether each difference is explained."""
    findings = []
    if c.kafka_records > c.kafka_distinct:
        findings.append(Finding(True, f"{c.kafka_records - c.kafka_distinct:,} duplicate records in Kafka `iot` "
                                      "(the gateway delivers at least once; the key collapses them)"))
    if c.published is not None:
        good = c.published - c.faults
        if c.kafka_distinct < good:
            findings.append(Finding(False, f"{good - c.kafka_distinct:,} of {good:,} good readings published are "
                                           "not in Kafka `iot`: lost between MQTT and Kafka"))
        elif c.kafka_distinct > good:
            findings.append(Finding(False, f"{c.kafka_distinct - good:,} more readings in Kafka than published"))
        if c.gateway_dead_letters_distinct != c.faults + c.poison:
            findings.append(Finding(False, f"{c.gateway_dead_letters_distinct:,} distinct gateway dead letters, "
                                           f"but {c.faults + c.poison:,} malformed messages were sent"))
    if c.job_pending:
        findings.append(Finding(True, f"{c.job_pending:,} records in Kafka `iot` not yet processed by the job"))
    # A conflict shares its key with the reading that is kept: keys in Kafka must all be keys in Kudu.
    if c.kafka_distinct > c.kudu_distinct and not c.job_pending:
        findings.append(Finding(False, f"{c.kafka_distinct - c.kudu_distinct:,} keys in Kafka are not in Kudu: "
                                       "lost between Kafka and Kudu"))
    if c.kudu_distinct > c.kafka_distinct:
        findings.append(Finding(False, f"{c.kudu_distinct - c.kafka_distinct:,} more rows in Kudu than readings "
                                       "in Kafka for this scope"))
    if c.kudu_rows != c.kudu_distinct:
        findings.append(Finding(False, f"{c.kudu_rows - c.kudu_distinct:,} duplicate keys in Kudu"))
    if c.job_conflicts:
        findings.append(Finding(True, f"{c.job_conflicts:,} conflicts (a different reading under a stored key) "
                                      "kept in `iot.dlq`"))
    return findings


def _records_since(consumer: KafkaConsumer, topic: str, since_ms: int) -> Iterator:
    """Every record of `topic` with a timestamp from `since_ms` on, up to the end offsets of now."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    if not partitions:
        return
    consumer.assign(partitions)
    ends = end_offsets(consumer, topic)
    starts = consumer.offsets_for_times({tp: since_ms for tp in partitions})
    remaining = {}
    for tp in partitions:
        end = ends[tp.partition]
        start = starts[tp].offset if starts.get(tp) else end
        consumer.seek(tp, start)
        if start < end:
            remaining[tp] = end
    while remaining:
        for tp, batch in consumer.poll(timeout_ms=1000, max_records=10_000).items():
            for record in batch:
                if record.offset < remaining.get(tp, 0):
                    yield record
            if tp in remaining and consumer.position(tp) >= remaining[tp]:
                del remaining[tp]


def count_kafka(bootstrap: str, scope: Scope, counts: Counts) -> None:
    """Readings in `iot` and dead letters in `iot.dlq` within the scope."""
    since_ms = scope.since_us // 1000 - 60_000  # a record's Kafka time is when it was produced: never before
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000,
                             client_id="stack-audit")
    try:
        keys = []
        for record in _records_since(consumer, IOT_TOPIC, since_ms):
            try:
                reading = parse_reading(record.value)  # what the job takes for a reading, whatever the record
            except InvalidReading:
                continue  # not a reading: the job dead-letters it, and its dead letter is counted below
            key = (reading[ID_FIELD], reading[TS_FIELD])
            if scope.has_id(key[0]) and scope.has_ts(key[1]):
                keys.append(key)
        counts.kafka_records, counts.kafka_distinct = len(keys), len(set(keys))
        count_dead_letters(_records_since(consumer, DEAD_LETTER_TOPIC, since_ms), scope, counts)
    finally:
        consumer.close()


def _reason_kind(reason: str) -> str:
    """A reason without its particulars, to count alike reasons together: numbers become N, quoted values '...'."""
    general = reason.split(";", 1)[0]
    general = re.sub(r"'[^']*(?:'|$)|\"[^\"]*(?:\"|$)", "'...'", general)
    return re.sub(r"(?<![\w.])-?\d[\d,.]*(?:e[+-]?\d+)?", "N", general)[:100]


def _in_scope_if_reading(value: bytes | None, scope: Scope) -> bool:
    """A job dead letter that is a reading (a conflict) counts only within the scope; others by time alone."""
    try:
        reading = parse_reading(value)
    except InvalidReading:
        return True
    return scope.has_id(reading[ID_FIELD]) and scope.has_ts(reading[TS_FIELD])


def count_dead_letters(records: Iterator, scope: Scope, counts: Counts) -> None:
    gateway, job = set(), set()
    gateway_reasons, job_reasons = Counter(), Counter()
    for record in records:
        headers = {key: value.decode(errors="replace") for key, value in record.headers}
        if headers.get("source") == "streaming":
            if record.timestamp < scope.since_us // 1000 or not _in_scope_if_reading(record.value, scope):
                continue
            identity = (headers.get("kafka_partition"), headers.get("kafka_offset"))
            if identity not in job:
                job.add(identity)
                job_reasons[_reason_kind(headers.get("reason", ""))] += 1
                counts.job_conflicts += headers.get("kind") == "conflict"
            counts.job_dead_letters += 1
            continue
        topic = headers.get("mqtt_topic", "")
        sensor = topic.rsplit("/", 1)[-1]
        received = int(headers.get("received_ts", "0") or 0)
        if not scope.has_ts(received) or (sensor.isdigit() and not scope.has_id(int(sensor))) or (
                not sensor.isdigit() and scope.first_id is not None):
            continue
        counts.gateway_dead_letters += 1
        identity = (topic, hashlib.sha256(record.value or b"").hexdigest())
        if identity not in gateway:
            gateway.add(identity)
            gateway_reasons[_reason_kind(headers.get("reason", ""))] += 1
    counts.gateway_dead_letters_distinct = len(gateway)
    counts.gateway_reasons, counts.job_reasons = dict(gateway_reasons), dict(job_reasons)


def job_pending(bootstrap: str, checkpoint: Path) -> int:
    """Records of `iot` after the last batch the job committed (all partitions; 0 if it has caught up)."""
    committed = _committed_offsets(checkpoint)
    ends = end_offsets(bootstrap, IOT_TOPIC)
    return sum(max(0, end - committed.get(partition, 0)) for partition, end in ends.items())


def _committed_offsets(checkpoint: Path) -> dict[int, int]:
    """The `iot` offsets up to which the job's last committed batch processed (from its checkpoint)."""
    commits = sorted((int(p.name) for p in (checkpoint / "commits").glob("[0-9]*")), reverse=True)
    for batch in commits:
        lines = (checkpoint / "offsets" / str(batch)).read_text().splitlines()
        return {int(partition): offset for partition, offset in json.loads(lines[2]).get(IOT_TOPIC, {}).items()}
    return {}


def count_kudu(cfg_host: str, cfg_port: int | str, scope: Scope, counts: Counts) -> None:
    where = scope.sql_where()
    counts.kudu_rows = query(f"select count(*) from {SQL_TABLE} where {where}", cfg_host, cfg_port)[0][0]
    counts.kudu_distinct = query(f"select count(*) from (select distinct {ID_FIELD}, {TS_FIELD} from {SQL_TABLE} "
                                 f"where {where}) keys", cfg_host, cfg_port)[0][0]


@dataclass
class AuditResult:
    scope: Scope
    counts: Counts
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return all(f.explained for f in self.findings) and not self.counts.job_pending

    def as_dict(self) -> dict:
        return {"scope": asdict(self.scope), "counts": asdict(self.counts), "ok": self.ok,
                "findings": [asdict(f) for f in self.findings]}


def audit(settings: dict[str, str], checkpoint: Path, scope: Scope, wait_s: float = 0.0,
          gateway_health: Path | None = None) -> AuditResult:
    """Count every stage; with `wait_s`, count again until nothing is pending or unexplained, or time is up.
    `gateway_health`: the gateway's health file, whose counters (since its start) are shown beside."""
    deadline = time.monotonic() + wait_s
    while True:
        report = read_health(gateway_health) if gateway_health else None
        counts = Counts(published=scope.published, faults=scope.faults, poison=scope.poison,
                        gateway_process=report.counters if report else {})
        count_kafka(settings["KAFKA_BOOTSTRAP"], scope, counts)
        counts.job_pending = job_pending(settings["KAFKA_BOOTSTRAP"], checkpoint)
        count_kudu(settings["SQL_HOST"], settings["SQL_PORT"], scope, counts)
        result = AuditResult(scope, counts, reconcile(counts))
        if result.ok or time.monotonic() >= deadline:
            return result
        time.sleep(2)  # the pipeline is still moving: count again


def format_audit(result: AuditResult) -> str:
    c, s = result.counts, result.scope
    since = datetime.fromtimestamp(s.since_us / 1e6, UTC).isoformat(timespec="seconds")
    ids = "" if s.first_id is None else f", sensor ids {s.first_id}..{s.last_id}"

    def reasons(found: dict[str, int], shown: int = 4) -> str:
        ranked = sorted(found.items(), key=lambda kv: -kv[1])
        more = f"; and {len(ranked) - shown} more kinds" if len(ranked) > shown else ""
        return "; ".join(f"{n:,} {kind}" for kind, n in ranked[:shown]) + more or "-"

    rows = [
        ("published (simulator, acknowledged by the broker)",
         "-" if c.published is None else f"{c.published:,} ({c.faults:,} malformed on purpose; "
                                          f"{c.poison:,} poison messages besides)"),
        ("gateway -> Kafka `iot`: readings", f"{c.kafka_distinct:,} distinct ({c.kafka_records:,} records)"),
        ("gateway -> `iot.dlq`: dead letters",
         f"{c.gateway_dead_letters_distinct:,} distinct ({c.gateway_dead_letters:,} records): "
         f"{reasons(c.gateway_reasons)}"),
        ("job: records of `iot` not yet processed", f"{c.job_pending:,}"),
        ("job -> `iot.dlq`: dead letters", f"{len(c.job_reasons) and sum(c.job_reasons.values()):,} distinct "
                                           f"({c.job_conflicts:,} conflicts): {reasons(c.job_reasons)}"),
        ("Kudu `sensors` (SQL): rows", f"{c.kudu_rows:,} ({c.kudu_distinct:,} distinct keys)"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"Audit of the readings since {since}{ids}:"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    if c.gateway_process:
        lines.append("  (the running gateway's own counters since it started, all topics: " + ", ".join(
            f"{name.replace('_', '-')} {value:,.0f}" for name, value in c.gateway_process.items()) + ")")
    lines += [f"  {'explained' if f.explained else 'UNEXPLAINED'}: {f.text}" for f in result.findings]
    lines.append("OK: every reading is accounted for." if result.ok
                 else "NOT OK: see the differences above.")
    return "\n".join(lines)


def parse_since(text: str, now: float | None = None) -> int:
    """Microseconds since the epoch from "10m"/"2h"/"30s" ago (a leading "-" is allowed), an ISO time (UTC if it
    names no zone), or epoch seconds."""
    now = time.time() if now is None else now
    relative = re.fullmatch(r"-?(\d+(?:\.\d+)?)([smhd])", text.strip())
    if relative:
        seconds = float(relative.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative.group(2)]
        return int((now - seconds) * 1e6)
    try:
        return int(float(text) * 1e6)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text)
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1e6)

