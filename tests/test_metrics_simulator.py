"""The simulator's Prometheus metrics: summed over its publisher processes, equal to what it reports."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from runtime.metrics import start_metrics_server
from runtime.waiting import port_open, wait_until
from simulator.__main__ import build_parser
from simulator.config import load_simulator_config
from simulator.fleet import FAULT_KINDS
from simulator.publisher import PublisherMetrics, run


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample at `url`, parsed by prometheus_client: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def malformed(samples: dict) -> dict[str, float]:
    return {dict(labels)["kind"]: v for (name, labels), v in samples.items() if name == "iot_simulator_malformed_total"}


def served(registry: CollectorRegistry) -> dict:
    server = start_metrics_server(0, registry=registry)
    try:
        return scrape(server.url)
    finally:
        server.close()


def test_the_metrics_read_the_counters_the_publishers_share():
    context = mp.get_context("fork")
    published, faults, sent = context.RawArray("q", 2), context.Array("q", len(FAULT_KINDS)), context.RawArray("q", 2)
    published[0], published[1], sent[0], sent[1], faults[1] = 4, 3, 6, 4, 2
    registry = CollectorRegistry()
    registry.register(PublisherMetrics(published, sent, faults))
    samples = served(registry)
    assert samples[("iot_simulator_published_total", ())] == 7
    assert samples[("iot_simulator_unacknowledged", ())] == 3
    assert malformed(samples) == {kind: (2 if kind == FAULT_KINDS[1] else 0) for kind in FAULT_KINDS}


def test_help_documents_the_metrics_options():
    text = build_parser().format_help()
    for option in ("--metrics-port PORT", "--metrics-host HOST", "iot_simulator_published_total",
                   "iot_simulator_unacknowledged", "iot_simulator_malformed_total{kind}"):
        assert option in text
    assert build_parser().parse_args([]).metrics_port == 0


def config_file(tmp_path, cfg, secrets, **misc) -> object:
    """A config on the test stack's broker, on a topic of its own (no gateway bridges it)."""
    path = tmp_path / "sim.config"
    path.write_text(json.dumps({
        "mqtt": {"host": cfg.host, "port": cfg.mqtt_port, "username": secrets["MQTT_USERNAME"],
                 "password": secrets["MQTT_PASSWORD"], "topic": "metrics-sim", "qos": 1},
        "misc": {"interval_ms": 0, "verbose": False, "seed": 11, **misc},
        "machines": {"count": 10, "first_sensor_id": 820_000}}))
    return path


@pytest.mark.stack
def test_two_publishers_metrics_equal_the_summary(local_stack, secrets, tmp_path):
    registry = CollectorRegistry()
    sim = load_simulator_config(config_file(tmp_path, local_stack.cfg, secrets, messages=3_000, publishers=2,
                                            fault_share=0.05))
    summary = run(sim, progress=False, registry=registry)
    samples = served(registry)
    assert summary.published == 3_000
    assert samples[("iot_simulator_published_total", ())] == summary.published
    assert samples[("iot_simulator_unacknowledged", ())] == 0
    assert malformed(samples) == {kind: summary.faults[kind] for kind in FAULT_KINDS}
    assert sum(summary.faults.values()) > 50


@pytest.mark.stack
def test_the_command_serves_its_metrics_while_it_publishes(local_stack, secrets, tmp_path, free_ports):
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/metrics"
    config = config_file(tmp_path, local_stack.cfg, secrets, messages=2_500, interval_ms=2, fault_share=0.02)
    simulator = subprocess.Popen([sys.executable, "-m", "simulator", str(config), "--quiet", "--metrics-port",
                                  str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_until(lambda: scrape(url)[("iot_simulator_published_total", ())], 60,
                          "published messages on the simulator's metrics",
                          abort=lambda: simulator.poll() is not None and f"exited with {simulator.returncode}")
        output, errors = simulator.communicate(timeout=120)
    finally:
        if simulator.poll() is None:
            simulator.kill()
            simulator.wait()
    assert simulator.returncode == 0, errors
    assert f"Prometheus metrics at {url}" in errors
    reported = int(re.search(r"published ([\d,]+) messages", output).group(1).replace(",", ""))
    assert reported == 2_500 and 0 < seen <= reported
    assert not port_open("127.0.0.1", port)  # the endpoint went with the run
