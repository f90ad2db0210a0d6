"""Fixtures that start real services of the local stack on free loopback ports, in a temporary directory.

Tests never use a stack someone left running: each session starts its own under a pytest temp dir (the
installed parts, .stack/jvm and .stack/ivy, are shared read-only) and stops it at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from model.registry import ModelInfo, promote
from model.train import RunResult, train
from runtime.health import is_up
from runtime.settings import IOT_TOPIC
from runtime.waiting import wait_until
from sql.client import query
from stack.config import StackConfig, load_config
from stack.connection import local_stack_settings
from stack.launcher import Stack
from stack.secrets import ensure_secrets

PORT_SETTINGS = (
    "mqtt_port", "kafka_port", "kafka_controller_port", "kudu_master_port", "kudu_master_web_port",
    "kudu_tserver_port", "kudu_tserver_web_port", "sql_port", "model_port",
)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together while choosing, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stack_environment(stack_dir: Path) -> dict[str, str]:
    """Environment that points the stack's CLI and config at `stack_dir` with free ports."""
    env = dict(os.environ)
    env["STACK_DIR"] = str(stack_dir)
    for name, port in zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True):
        env["STACK_" + name.upper()] = str(port)
    return env


@pytest.fixture(scope="session", autouse=True)
def private_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the tests' MLflow runs out of the project's own store."""
    store = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        patch.setenv("MLFLOW_ARTIFACT_ROOT", str(store / "artifacts"))
        yield store


@pytest.fixture(scope="session")
def workshop_run() -> RunResult:
    """The workshop's first run, 20 trees of depth 20, trained once for the session (tracked in MLflow)."""
    return train(20, 20)


@pytest.fixture(scope="session")
def served_model_file(workshop_run: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That run promoted to a served-model file."""
    path = tmp_path_factory.mktemp("model") / "iot_model.joblib"
    info: ModelInfo = promote(workshop_run.run_id, path)
    assert info.run_id == workshop_run.run_id
    return path


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    return load_config(environ=stack_environment(tmp_path_factory.mktemp("stack")))


@pytest.fixture(scope="session")
def local_stack(stack_config: StackConfig, served_model_file: Path) -> Iterator[Stack]:
    """The whole local stack, up for the test session, serving the session's workshop model."""
    stack_config.model_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(served_model_file, stack_config.model_file)
    stack = Stack(stack_config)
    try:
        # Without the streaming job: the tests that need one start their own, with their own checkpoint.
        stack.up([s.name for s in stack.services if s.name != "streaming"])
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def secrets(stack_config: StackConfig) -> dict[str, str]:
    return ensure_secrets(stack_config.secrets_file)


class Pipeline:
    """What end-to-end tests do with the session's stack: publish on MQTT, produce to Kafka, read dead letters,
    count rows through SQL, run a streaming job of their own. Handed out by the `pipeline` fixture."""

    def __init__(self, stack: Stack, secrets: dict[str, str], workdir: Path):
        self.stack, self.cfg, self.secrets, self.workdir = stack, stack.cfg, secrets, workdir

    def settings(self) -> dict[str, str]:
        return local_stack_settings(self.cfg, self.secrets)

    def publish(self, messages: list[tuple[str, bytes, bool]], timeout_s: float = 60) -> None:
        """Publish (topic, payload, retain) messages with QoS 1 and wait until the broker acknowledged each."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-publisher-{time.time_ns()}")
        client.username_pw_set(self.secrets["MQTT_USERNAME"], self.secrets["MQTT_PASSWORD"])
        client.connect(self.cfg.host, self.cfg.mqtt_port)
        client.loop_start()
        try:
            infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload, retain in messages]
            for info in infos:
                info.wait_for_publish(timeout_s)
                assert info.is_published()
        finally:
            client.disconnect()
            client.loop_stop()

    def produce(self, records: list[tuple[bytes | None, bytes | None]],
                topic: str = IOT_TOPIC) -> list[tuple[int, int]]:
        """Produce (key, value) records straight into Kafka, bypassing the gateway: their (partition, offset)."""
        producer = KafkaProducer(bootstrap_servers=self.cfg.kafka_bootstrap, acks="all")
        try:
            futures = [producer.send(topic, key=key, value=value) for key, value in records]
            return [(meta.partition, meta.offset) for meta in (future.get(timeout=30) for future in futures)]
        finally:
            producer.close()

    def end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        consumer = KafkaConsumer(bootstrap_servers=self.cfg.kafka_bootstrap)
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            return consumer.end_offsets(partitions)
        finally:
            consumer.close()

    def records_after(self, start: dict[TopicPartition, int], keep, expected: int, timeout_s: float = 120) -> list:
        """Records after `start` for which keep(record) is true, until `expected` of them (or the time is up),
        then a little longer to see any duplicate still on its way."""
        consumer = KafkaConsumer(bootstrap_servers=self.cfg.kafka_bootstrap, enable_auto_commit=False,
                                 max_partition_fetch_bytes=4 * 1024 * 1024)
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        kept, deadline = [], time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and len(kept) < expected:
                for batch in consumer.poll(timeout_ms=500).values():
                    kept.extend(r for r in batch if keep(r))
            for batch in consumer.poll(timeout_ms=2000).values():
                kept.extend(r for r in batch if keep(r))
        finally:
            consumer.close()
        return kept

    def rows(self, where: str) -> int:
        return query(f"select count(*) from sensors where {where}", self.cfg.host, self.cfg.sql_port)[0][0]

    def wait_for_rows(self, where: str, expected: int, timeout_s: float = 300) -> int:
        """Poll SQL until `expected` rows match `where`; the count then (the caller asserts on it)."""
        wait_until(lambda: self.rows(where) >= expected, timeout_s, f"{expected} rows where {where}")
        return self.rows(where)

    def start_job(self, name: str, *options: str, wait_up: bool = True) -> subprocess.Popen:
        """A streaming job of the test's own (`python -m streaming`, its own checkpoint), once it is up."""
        health = self.workdir / f"{name}.health"
        log = (self.workdir / f"{name}.log").open("a")
        job = subprocess.Popen([sys.executable, "-m", "streaming", "--checkpoint", str(self.workdir / name),
                                "--health-file", str(health), *options],
                               env={**os.environ, **self.settings()}, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        log.close()
        if wait_up:
            wait_until(lambda: is_up(health), 300, f"streaming job {name}",
                       abort=lambda: f"exited; see {log.name}" if job.poll() is not None else None)
        return job

    @staticmethod
    def stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)


@pytest.fixture(scope="session")
def pipeline(local_stack: Stack, secrets: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline(local_stack, secrets, tmp_path_factory.mktemp("pipeline"))


DRILL_RESULTS: list = []  # filled by the drills (tests/test_drills.py), printed at the end of the run


@pytest.fixture(scope="session")
def drill_results() -> list:
    return DRILL_RESULTS


def pytest_terminal_summary(terminalreporter) -> None:
    """The drills' table: drill, readings, lost, duplicated (in Kafka), times to recover; also to $DRILL_RESULTS."""
    if not DRILL_RESULTS:
        return
    terminalreporter.section("fault drills")
    terminalreporter.write_line("| drill | readings | lost | duplicated in Kafka (none in Kudu) | all `up` again | "
                                "recovered (a new reading queryable) |")
    terminalreporter.write_line("|---|---|---|---|---|---|")
    for r in DRILL_RESULTS:
        terminalreporter.write_line(f"| {r.drill} | {r.readings:,} | {r.lost} | {r.duplicated} | "
                                    f"{r.up_again_s:.0f} s | {r.recovery_s:.0f} s |")
    if os.environ.get("DRILL_RESULTS"):
        Path(os.environ["DRILL_RESULTS"]).write_text(json.dumps([vars(r) for r in DRILL_RESULTS], indent=2))
