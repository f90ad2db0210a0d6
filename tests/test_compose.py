"""docker-compose.yml, checked without a Docker engine: the Compose specification's schema, healthchecks, pinned
images, no secrets, every variable each part reads; and the parts run unchanged on the settings it gives them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib

import pytest

from gateway.__main__ import SETTINGS as GATEWAY_SETTINGS
from runtime.health import is_up
from runtime.settings import REPO_ROOT
from runtime.spark import jvm_versions
from runtime.waiting import http_ok, wait_until
from simulator.config import load_simulator_config
from simulator.publisher import run
from sql.client import query
from stack.compose import COMPOSE_FILE, compose_settings, interpolate, load_compose
from streaming.__main__ import SETTINGS as STREAMING_SETTINGS

COMPOSE = load_compose()
SERVICES = COMPOSE["services"]
SECRETS = {"MQTT_USERNAME": "iot", "MQTT_PASSWORD": "from-dot-env", "MODEL_ACCESS_KEY": "from-dot-env"}
MQTT = ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD")  # simulator/config.py reads these
# What each part reads, by the Compose service that runs it.
READS = {
    "gateway": GATEWAY_SETTINGS,
    "streaming": (*STREAMING_SETTINGS, "SPARK_MASTER"),
    "simulator": MQTT,
    "model": ("MODEL_ACCESS_KEY", "MODEL_PATH"),  # model/__main__.py, model/registry.py
    "model-train": ("MODEL_PATH",),
    "sql-init": ("SQL_HOST", "SQL_PORT"),  # sql/__main__.py
    # dashboard/: Kafka (iot.scored, iot.alerts), the model server, and the metrics endpoints it shows
    "dashboard": ("KAFKA_BOOTSTRAP", "MODEL_URL", "MODEL_ACCESS_KEY", "GATEWAY_METRICS_URL", "STREAMING_METRICS_URL",
                  "MODEL_METRICS_URL"),
}


def test_the_file_follows_the_compose_specification():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The loader Docker Compose itself is built on, from the Go module proxy: it parses and normalises the whole file
# (every profile) as `docker compose config` would, beyond what the schema says.
COMPOSE_GO = "github.com/compose-spec/compose-go/v2/cmd@v2.16.2"


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go to build compose-go's loader")
def test_the_compose_loader_accepts_the_file():
    result = subprocess.run(["go", "run", COMPOSE_GO, "-no-interpolation", str(COMPOSE_FILE)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "spark-worker-2:" in result.stdout  # profile services are loaded and checked too


def test_every_service_has_a_healthcheck_or_says_why_not():
    missing = [name for name, service in SERVICES.items()
               if "healthcheck" not in service and not service.get("x-healthcheck-exempt")]
    assert not missing


def test_every_long_running_service_is_restarted_unless_stopped():
    one_shots = {name for name, service in SERVICES.items() if service.get("restart") == "no"}
    assert one_shots == {"kafka-topics", "sql-init", "model-train"}
    for name in SERVICES.keys() - one_shots:
        assert SERVICES[name].get("restart") == "unless-stopped", name


def test_the_gateway_and_the_job_are_healthy_by_the_signal_make_status_reads():
    for name in ("gateway", "streaming"):
        command = SERVICES[name]["command"]
        health_file = command[command.index("--health-file") + 1]
        assert SERVICES[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "runtime.health", health_file]


def test_start_order_waits_for_health_or_completion():
    for name, service in SERVICES.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = "service_healthy" if "healthcheck" in SERVICES[dependency] else "service_completed_successfully"
            assert condition == {"condition": wanted}, f"{name} -> {dependency}"


def test_images_are_pinned_to_the_local_stacks_versions():
    versions = jvm_versions()
    project_version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {service["image"] for service in SERVICES.values()}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
    assert f"apache/kafka:{versions['kafka.version']}" in images
    assert f"apache/kudu:{versions['kudu.version']}" in images
    assert f"apache/spark:{versions['spark.version']}-scala{versions['scala.binary.version']}-java17-python3-ubuntu" \
        in images
    assert f"iot-predictive-maintenance:{project_version}" in images


def test_no_secret_is_written_in_the_file():
    for name, service in SERVICES.items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|KEY|SECRET|TOKEN", variable):
                assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", str(value)), f"{name}: {variable}={value}"
    with pytest.raises(KeyError, match="MODEL_ACCESS_KEY is not set: run `make compose-secrets`"):
        compose_settings(["model"], {})
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, ".env (the generated secrets) must be git-ignored"
    # ... and kept out of the image, with the local stack's secrets and the environments.
    build_context_excludes = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".env", ".stack", ".venv", ".git"} <= build_context_excludes


def test_every_variable_a_part_reads_is_set_for_the_service_that_runs_it():
    for service, variables in READS.items():
        environment = compose_settings([service], SECRETS)
        assert set(variables) <= set(environment), (service, set(variables) - set(environment))


def test_the_image_holds_every_package_a_service_runs():
    copied = set(re.findall(r"^COPY (\w+) \1$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE))
    for name, service in SERVICES.items():
        if service.get("image") != SERVICES["gateway"]["image"]:
            continue
        command = " ".join(service["command"]) if isinstance(service["command"], list) else service["command"]
        for package in re.findall(r"python -m (\w+)", command):
            assert package in copied, f"{name} runs `python -m {package}`: the Dockerfile must COPY {package}"


def test_every_long_running_jvm_or_native_service_has_a_memory_limit():
    small = {"mosquitto", "gateway", "simulator"}  # a few MiB to ~100 MiB each
    for name, service in SERVICES.items():
        if name in small or "x-healthcheck-exempt" in service and service.get("restart") == "no":
            continue
        assert service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory"), name


def test_published_ports_bind_to_the_configured_address_loopback_by_default():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
            assert interpolate(str(port), {}).startswith("127.0.0.1:")


def test_compose_secrets_writes_a_private_env_file_once(tmp_path):
    script = (REPO_ROOT / "compose" / "secrets.sh").read_text()
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "secrets.sh").write_text(script)
    subprocess.run(["bash", "compose/secrets.sh"], cwd=tmp_path, check=True, capture_output=True)
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().split())
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert len(env["MQTT_PASSWORD"]) >= 24 and len(env["MODEL_ACCESS_KEY"]) >= 24
    assert env["MQTT_PASSWORD"] != env["MODEL_ACCESS_KEY"]
    subprocess.run(["bash", "compose/secrets.sh"], cwd=tmp_path, check=True, capture_output=True)
    assert dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().split()) == env


@pytest.mark.stack
@pytest.mark.slow
def test_gateway_model_server_and_job_run_unchanged_on_the_settings_compose_gives_them(
        local_stack, secrets, served_model_file, tmp_path, free_ports):
    """The Compose services' variables, hosts mapped to the local stack: readings reach Kudu, scored."""
    cfg = local_stack.cfg
    (model_port,) = free_ports(1)
    addresses = {"mosquitto:1883": f"{cfg.host}:{cfg.mqtt_port}", "kafka-1:19092": cfg.kafka_bootstrap,
                 "kudu-master-1:7051": cfg.kudu_master_address, "impalad:21050": f"{cfg.host}:{cfg.sql_port}",
                 "model:8000": f"{cfg.host}:{model_port}"}
    variables = {name: secrets[name] for name in SECRETS}  # what .env would hold
    settings = compose_settings(["gateway", "model", "streaming"], variables, addresses)
    settings.update(MODEL_PATH=str(served_model_file), SPARK_MASTER="local[2]", SPARK_LOCAL_IP=cfg.host)
    settings.pop("SQL_AUTH_MECHANISM")  # Impala's; the local SQL endpoint takes the default
    connection = tmp_path / "connection.env"
    connection.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    env = {**os.environ, **dict(line.split("=", 1) for line in connection.read_text().splitlines())}
    first_id, readings = 700_000, 500
    job_health = tmp_path / "job.health"
    log = (tmp_path / "parts.log").open("w")
    local_stack.down(["gateway"])  # the readings must take the Compose-configured gateway, the only one
    parts = [
        subprocess.Popen([sys.executable, "-m", "model", "serve", "--host", cfg.host, "--port", str(model_port)],
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "gateway", "--gateway-id", "gw-compose-test"],
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "streaming", "--checkpoint", str(tmp_path / "checkpoint"),
                          "--health-file", str(job_health)],
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        wait_until(lambda: http_ok(f"http://{cfg.host}:{model_port}/health"), 60, "model server on compose settings")
        wait_until(lambda: is_up(job_health), 180, "streaming job on compose settings")
        sim_config = tmp_path / "sim.config"
        sim_config.write_text(json.dumps({
            "mqtt": {"host": env["MQTT_HOST"], "port": int(env["MQTT_PORT"]), "username": env["MQTT_USERNAME"],
                     "password": env["MQTT_PASSWORD"], "topic": "iot", "qos": 1},
            "misc": {"interval_ms": 0, "messages": readings},
            "machines": {"count": 10, "first_sensor_id": first_id}}))
        assert run(load_simulator_config(sim_config), progress=False).published == readings
        mine = f"from sensors where sensor_id >= {first_id} and sensor_id < {first_id + 10}"

        def scored_rows() -> bool:
            return query(f"select count(*) {mine} and is_healthy in (0, 1)", cfg.host, cfg.sql_port)[0][0] >= readings

        wait_until(scored_rows, 240, f"{readings} scored rows in Kudu")
        assert query(f"select count(*) {mine}", cfg.host, cfg.sql_port)[0][0] == readings
    finally:
        for part in parts:
            os.killpg(part.pid, signal.SIGTERM)
        for part in parts:
            part.wait(timeout=60)
        log.close()
        local_stack.up(["gateway"])
