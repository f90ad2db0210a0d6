"""compose/prometheus.yml, checked without a Docker engine: Prometheus scrapes every service of ours that serves
metrics, by its Compose service name at the port that service's command (or environment) gives it, and nothing
else; the `prometheus` service mounts this file; the dashboard reads the same endpoints; and Prometheus' own
`promtool check config`, of the image's version, accepts the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter

import pytest
import yaml

from runtime.metrics import DEFAULT_METRICS_HOST
from runtime.settings import REPO_ROOT
from stack.compose import interpolate, load_compose

PROMETHEUS_CONFIG = REPO_ROOT / "compose" / "prometheus.yml"
CONFIG = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
COMPOSE = load_compose()
SERVICES = COMPOSE["services"]

# Our parts that serve metrics on their own endpoint (runtime/metrics.py): `--metrics-host` / `--metrics-port`,
# the port else from this variable (None: the option only). The model server serves /metrics on its own port.
METRICS_PORT_VARIABLES = {"gateway": "GATEWAY_METRICS_PORT", "streaming": "STREAMING_METRICS_PORT",
                          "edge": "EDGE_METRICS_PORT", "simulator": None}
OURS = {*METRICS_PORT_VARIABLES, "model"}


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def metrics_endpoint(service: dict) -> tuple[str, int, str] | None:
    """(host it binds, port, path) of the metrics a service of ours serves, from its command and environment;
    None if it serves none."""
    command = service.get("command")
    if not isinstance(command, list) or command[:2] != ["python", "-m"]:
        return None
    module, environment = command[2], service.get("environment") or {}
    if module == "model" and command[3:4] == ["serve"]:
        return option(command, "--host") or DEFAULT_METRICS_HOST, int(option(command, "--port") or 0), "/metrics"
    if module not in METRICS_PORT_VARIABLES:
        return None
    variable = METRICS_PORT_VARIABLES[module]
    port = option(command, "--metrics-port") or (environment.get(variable) if variable else None) or 0
    if not int(port):
        return None
    return option(command, "--metrics-host") or DEFAULT_METRICS_HOST, int(port), "/metrics"


ENDPOINTS = {name: endpoint for name, service in SERVICES.items() if (endpoint := metrics_endpoint(service))}


def scrape_targets() -> list[tuple[str, str, str, str]]:
    """(job, host, port, path) of every target in the config."""
    targets = []
    for job in CONFIG["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.append((job["job_name"], host, port, job.get("metrics_path", "/metrics")))
    return targets


def test_prometheus_scrapes_every_five_seconds():
    assert CONFIG["global"]["scrape_interval"] == "5s"


def test_every_service_of_ours_serves_metrics_to_the_compose_network():
    assert set(ENDPOINTS) == OURS
    for name, (host, port, _) in ENDPOINTS.items():
        # Loopback (the parts' default) would be out of Prometheus' reach in another container.
        assert host == "0.0.0.0", f"{name} serves metrics on {host}:{port}, unreachable from the `prometheus` service"


def test_each_job_scrapes_static_targets_over_plain_http():
    names = [job["job_name"] for job in CONFIG["scrape_configs"]]
    assert len(names) == len(set(names)), names
    for job in CONFIG["scrape_configs"]:
        assert set(job) <= {"job_name", "static_configs", "metrics_path"}, job  # no other discovery, scheme, auth
        assert job["static_configs"], job


def test_every_target_is_a_compose_service_at_the_port_it_serves_metrics_on():
    for job, host, port, path in scrape_targets():
        assert host in SERVICES, f"job {job}: {host} is no service of docker-compose.yml"
        assert host in ENDPOINTS, f"job {job}: {host} serves no metrics (see its command)"
        _, served_port, served_path = ENDPOINTS[host]
        assert (int(port), path) == (served_port, served_path), f"job {job}: {host}:{port}{path}"


def test_every_service_that_serves_metrics_is_scraped_once():
    scraped = Counter(host for _, host, _, _ in scrape_targets())
    assert scraped == Counter(ENDPOINTS.keys()), scraped


def test_the_simulators_target_is_scraped_only_when_its_profile_runs_it():
    # The simulator is in the `demo` profile: its target is down without it, which Prometheus takes in its stride;
    # every other target is a default service.
    for _, host, _, _ in scrape_targets():
        assert SERVICES[host].get("profiles", []) == (["demo"] if host == "simulator" else []), host


def test_the_prometheus_service_mounts_this_file_read_only_and_publishes_its_ui_on_loopback():
    service = SERVICES["prometheus"]
    config_path = option([part for flag in service["command"] for part in flag.split("=", 1)], "--config.file")
    assert f"./compose/prometheus.yml:{config_path}:ro" in service["volumes"]
    assert any(interpolate(port, {}) == "127.0.0.1:9090:9090" for port in service["ports"])
    assert any(flag.startswith("--storage.tsdb.retention.size=") for flag in service["command"])  # a bound disk


def test_the_dashboard_reads_the_metrics_where_they_are_served():
    environment = SERVICES["dashboard"]["environment"]
    for variable, service in {"GATEWAY_METRICS_URL": "gateway", "STREAMING_METRICS_URL": "streaming",
                              "MODEL_METRICS_URL": "model"}.items():
        _, port, path = ENDPOINTS[service]
        assert environment[variable] == f"http://{service}:{port}{path}", variable
    assert environment["MODEL_METRICS_URL"] == environment["MODEL_URL"] + "/metrics"


def promtool_module(image: str) -> str:
    """promtool's Go module version of a prom/prometheus image tag: Prometheus v3.X.Y is Go module v0.3XX.Y."""
    match = re.fullmatch(r"prom/prometheus:v3\.(\d+)\.(\d+)", image)
    assert match, f"{image}: pin a v3.X.Y release"
    minor, patch = (int(part) for part in match.groups())
    return f"github.com/prometheus/prometheus/cmd/promtool@v0.{300 + minor}.{patch}"


# Prometheus' own check of the file, by promtool of the image's release built from the Go module proxy (as
# tests/test_compose.py builds Compose's loader). Debian's `prometheus` package (2.42 on bookworm) is not used:
# a v2 promtool judging a v3 configuration, and a system Prometheus on 0.0.0.0:9090 wherever systemd runs.
@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go to build promtool of the image's version")
@pytest.mark.timeout(900)  # the first build downloads and compiles Prometheus' dependencies: about 4 minutes
def test_promtool_of_the_images_version_accepts_the_config():
    result = subprocess.run(["go", "run", promtool_module(SERVICES["prometheus"]["image"]), "check", "config",
                             str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "SUCCESS" in result.stdout
