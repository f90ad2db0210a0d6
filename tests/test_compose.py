"""docker-compose.yml, checked without a Docker engine: the Compose specification's schema, healthchecks, pinned
images, no secrets, every variable each part reads; and the parts run unchanged on the settings it gives them."""

from __future__ import annotations

import base64
import contextlib
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
from runtime.settings import (
    ALERTS_TOPIC,
    DEAD_LETTER_TOPIC,
    IOT_TOPIC,
    REPO_ROOT,
    SCORED_TOPIC,
    VERDICTS_TOPIC,
)
from runtime.spark import jvm_versions
from runtime.waiting import http_ok, wait_until
from simulator.config import load_simulator_config
from simulator.publisher import run
from sql.client import query
from stack import services as local_services
from stack.compose import COMPOSE_FILE, compose_settings, interpolate, load_compose
from stack.config import StackConfig, load_config
from stack.process import kill_group
from streaming.__main__ import SETTINGS as STREAMING_SETTINGS
from streaming.__main__ import job_command

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
    assert one_shots == {"kafka-topics", "kudu-ready", "sql-init", "model-train"}
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
        try:
            stop_parts(parts)
        finally:  # the stack's own gateway comes back whatever happened: the later tests need it
            log.close()
            local_stack.up(["gateway"])


def stop_parts(parts: list[subprocess.Popen]) -> None:
    """SIGTERM each part's process group; one still running 60 s later is killed and named (the test fails)."""
    for part in parts:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(part.pid, signal.SIGTERM)
    hung = []
    for part in parts:
        try:
            part.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(part.pid)
            part.wait(timeout=30)
            hung.append(" ".join(part.args[:4]))
    assert not hung, f"did not stop within 60 s of SIGTERM: {hung}"


# --- The profiles: the same settings as the local stack's profiles, and the memory the file states -----------------

CLUSTER_ENV_FILE = REPO_ROOT / "compose" / "cluster.env"
# Compose profile -> (the --profile flags, the variables it is run with, the local stack's profile it mirrors)
PROFILES = {"default": ((), "", "single"), "cluster": (("cluster",), "cluster.env", "cluster"),
            "demo": (("demo",), "", "single")}


def env_file(path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def resolve(value, variables: dict[str, str]):
    """`value` (a part of the file) as Compose gives it to the container: interpolated, `$$` unescaped."""
    if isinstance(value, dict):
        return {key: resolve(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, variables) for item in value]
    if isinstance(value, str):
        return interpolate(value, variables).replace("$$", "$")
    return value


def profile_services(profile: str) -> dict[str, dict]:
    """The services `docker compose [--env-file ...] --profile P up` starts, resolved."""
    flags, variables_file, _ = PROFILES[profile]
    variables = {**SECRETS, **(env_file(CLUSTER_ENV_FILE) if variables_file else {})}
    return {name: resolve(service, variables) for name, service in SERVICES.items()
            if not service.get("profiles") or set(service["profiles"]) & set(flags)}


def local_config(profile: str, tmp_path=None) -> StackConfig:
    environ = {"STACK_PROFILE": PROFILES[profile][2]}
    if tmp_path is not None:
        environ |= {"STACK_DIR": str(tmp_path / "stack"), "STACK_INSTALL_DIR": str(tmp_path / "install")}
    return load_config(environ=environ)


def environment(service: dict) -> dict[str, str]:
    return {name: str(value) for name, value in (service.get("environment") or {}).items()}


def flag_values(args: str | list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` / `-name=value` options of a command line, by name."""
    tokens = args.split() if isinstance(args, str) else args
    values: dict[str, str] = {}
    for i, token in enumerate(tokens):
        if not token.startswith("-") or token in ("-m", "-c"):
            continue
        name, equals, value = token.lstrip("-").partition("=")
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        values[name] = value if equals else ("" if following.startswith("--") else following)
    return values


def size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", str(text).lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


def memory_limit(service: dict) -> int:
    return size_bytes(service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory", "0"))


def gib(size: int) -> str:
    return f"{size / 2**30:g}"


def prose(path) -> str:
    """A file's text with comment markers and line breaks folded away, as one line of words."""
    return " ".join(re.sub(r"^\s*#", "", line) for line in path.read_text().splitlines()).replace("  ", " ")


def test_the_memory_the_file_readme_and_e2e_state_is_the_sum_of_the_limits():
    totals = {profile: sum(memory_limit(service) for service in profile_services(profile).values())
              for profile in PROFILES}
    stated = (f"limits add up to {gib(totals['default'])} GiB, {gib(totals['cluster'])} GiB in the cluster profile "
              f"and {gib(totals['demo'])} GiB in the demo profile")
    for path in (COMPOSE_FILE, REPO_ROOT / "README.md", REPO_ROOT / "compose" / "e2e.sh"):
        assert stated in " ".join(prose(path).split()), f"{path.name} must say: {stated}"
    # ... and the README's figure for each kind of service is its limit in the file (every one of that kind).
    readme = " ".join(prose(REPO_ROOT / "README.md").split())
    kinds = {"impalad": "impalad", "catalogd": "catalogd", "Kudu tablet servers": "kudu-tserver-",
             "Kafka nodes": "kafka-", "Spark workers": "spark-worker-", "the job's driver": "streaming",
             "the dashboard": "dashboard", "Prometheus": "prometheus"}
    for kind, prefix in kinds.items():
        figure = re.search(rf"{kind} (\d+(?:\.\d+)?) (GiB|MiB)", readme)
        assert figure, f"README states no limit for {kind}"
        size = float(figure[1]) * 2 ** (30 if figure[2] == "GiB" else 20)
        limits = {memory_limit(s) for name, s in SERVICES.items() if name.startswith(prefix) and "deploy" in s}
        assert limits == {size}, f"README: {kind} {figure[1]} {figure[2]}; the file: {limits}"


# What a JVM needs beyond its heap (metaspace, threads, code cache, buffers): a container limit that its heaps fill
# gets the JVM killed by the kernel instead of an OutOfMemoryError it could report.
JVM_OUTSIDE_HEAP = 256 * 2**20


def test_every_jvm_heap_leaves_headroom_under_its_container_limit():
    def xmx(options: str) -> int:
        return size_bytes(re.findall(r"-Xmx(\w+)", options)[-1])

    def fits(heaps: int, service: dict) -> bool:
        return heaps + JVM_OUTSIDE_HEAP <= memory_limit(service)

    cfg = local_config("cluster")
    services = profile_services("cluster")
    kafka_nodes = [s for name, s in services.items() if name.startswith("kafka-") and "deploy" in s]
    for node in kafka_nodes:
        heap = environment(node)["KAFKA_HEAP_OPTS"]
        assert heap == f"-Xmx{cfg.kafka_heap} -Xms{cfg.kafka_heap}"  # the local stack's Kafka heap
        # The healthcheck's tool runs in the same container every 5 s: with a heap of its own, not the broker's.
        check = " ".join(node["healthcheck"]["test"])
        assert "KAFKA_HEAP_OPTS=-Xmx" in check
        assert fits(xmx(heap) + xmx(check), node)
    for name in ("catalogd", "impalad"):  # the image's entrypoint defaults the JVM to -Xmx2g
        heap = xmx(environment(services[name])["JAVA_TOOL_OPTIONS"])
        queries = size_bytes(flag_values(services[name]["command"]).get("mem_limit", "0"))
        assert fits(heap + queries, services[name]), name
    daemon = local_services.SparkMaster(cfg).environment({})["SPARK_DAEMON_MEMORY"]
    for name, service in services.items():
        if name.startswith("spark-"):
            assert environment(service)["SPARK_DAEMON_MEMORY"] == daemon, name
            executors = size_bytes(flag_values(service["command"]).get("memory", "0"))
            assert fits(size_bytes(daemon) + executors, service), name


def test_the_kafka_cluster_id_is_a_uuid_as_kafka_makes_them():
    """22 characters of url-safe base64 without padding, 16 bytes (Kafka's Uuid.toString; `random-uuid`)."""
    ids = {environment(s)["CLUSTER_ID"] for s in profile_services("cluster").values() if "KAFKA_NODE_ID" in
           environment(s)}
    assert len(ids) == 1, ids
    (cluster_id,) = ids
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id) and not cluster_id.startswith("-"), cluster_id
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_the_cluster_env_file_sets_every_cluster_variable_the_file_reads():
    read = set(re.findall(r"\$\{(CLUSTER_[A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    assert read == set(env_file(CLUSTER_ENV_FILE)), read ^ set(env_file(CLUSTER_ENV_FILE))
    # One default (the single-node value) per variable, wherever the file reads it.
    defaults = {name: set(re.findall(rf"\$\{{{name}:-([^}}]*)\}}", COMPOSE_FILE.read_text())) for name in read}
    assert all(len(values) == 1 for values in defaults.values()), defaults


# The settings of a Kafka node that say where it is, not how it behaves (compared apart below).
KAFKA_ADDRESSES = {"node.id", "controller.quorum.voters", "controller.quorum.bootstrap.servers", "listeners",
                   "advertised.listeners", "listener.security.protocol.map", "log.dirs"}


def local_kafka_properties(cfg: StackConfig) -> list[dict[str, str]]:
    """The server.properties the local stack writes for each Kafka node (Kafka.prepare; storage taken as formatted)."""
    cfg.kafka_libs.mkdir(parents=True)
    properties = []
    for node in (local_services.Kafka(cfg, n) for n in cfg.nodes):
        node.data_dir.mkdir(parents=True)
        (node.data_dir / "meta.properties").touch()
        node.prepare({})
        lines = node.properties_file.read_text().splitlines()
        properties.append(dict(line.split("=", 1) for line in lines if line and not line.startswith("#")))
    return properties


@pytest.mark.parametrize("profile", ["default", "cluster"])
def test_kafka_nodes_have_the_local_stacks_settings(profile, tmp_path):
    cfg = local_config(profile, tmp_path)
    local = local_kafka_properties(cfg)
    nodes = {name: environment(s) for name, s in profile_services(profile).items() if "KAFKA_NODE_ID" in environment(s)}
    assert sorted(int(env["KAFKA_NODE_ID"]) for env in nodes.values()) == list(cfg.nodes)
    for env, properties in zip(nodes.values(), local, strict=True):
        for key, value in properties.items():
            if key not in KAFKA_ADDRESSES:
                variable = "KAFKA_" + key.upper().replace(".", "_")
                assert env.get(variable) == value, f"{variable}: Compose {env.get(variable)}, local stack {value}"
        # A quorum of every node: the same voters on each.
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == ",".join(f"{n}@kafka-{n}:9093" for n in cfg.nodes)
    assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == cfg.kafka_replication
    assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == cfg.kafka_min_insync_replicas
    # Every client is given every broker.
    bootstrap = ",".join(f"kafka-{n}:19092" for n in cfg.nodes)
    for name in ("gateway", "streaming", "dashboard", "kafka-topics"):
        assert environment(profile_services(profile)[name])["KAFKA_BOOTSTRAP"] == bootstrap, name


def fake_command(directory, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def run_one_shot(service: dict, fakes, tmp_path, cwd=None) -> subprocess.CompletedProcess:
    """A one-shot service's shell command, here, with `fakes` first on PATH (and a `sleep` that does not)."""
    fake_command(fakes, "sleep", "exit 0\n")
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c")
    env = {**os.environ, **environment(service), "PATH": f"{fakes}:{os.environ['PATH']}", "TMPDIR": str(tmp_path),
           "CALLS": str(tmp_path / "calls"), "LOG": str(tmp_path / "log")}
    return subprocess.run(["sh", "-c", script.replace("/opt/kafka/bin/", f"{fakes}/")], env=env, cwd=cwd or tmp_path,
                          capture_output=True, text=True, timeout=60)


# A fake tool that answers the n-th call with n of the 3 nodes (the others still starting).
NODES_SO_FAR = 'n=$(($(cat "$CALLS" 2>/dev/null || echo 0) + 1)); echo $n > "$CALLS"\n'


@pytest.mark.parametrize("profile", ["default", "cluster"])
def test_topics_are_created_once_every_broker_registered_with_the_local_stacks_replication(profile, tmp_path):
    cfg = local_config(profile)
    fakes = tmp_path / "bin"
    fakes.mkdir()
    fake_command(fakes, "kafka-broker-api-versions.sh", NODES_SO_FAR + 'echo "heap $KAFKA_HEAP_OPTS" >> "$LOG"\n'
                 'i=0; while [ $i -lt $n ] && [ $i -lt 3 ]; do i=$((i + 1));\n'
                 '  echo "kafka-$i:19092 (id: $i rack: null isFenced: false) -> ("; echo " Produce(0): 0 to 12"\n'
                 'done\n')
    fake_command(fakes, "kafka-topics.sh", 'echo "topics $*" >> "$LOG"\n')
    result = run_one_shot(profile_services(profile)["kafka-topics"], fakes, tmp_path)
    assert result.returncode == 0, result.stderr
    assert int((tmp_path / "calls").read_text()) == len(cfg.nodes)  # it waited for every broker, no longer
    log = (tmp_path / "log").read_text().splitlines()
    assert {line for line in log if line.startswith("heap")} == {"heap -Xmx64m"}
    created = {}
    for line in log:
        if line.startswith("topics"):
            flags = flag_values(line.split()[1:])
            assert "create" in flags and "if-not-exists" in flags
            assert flags["bootstrap-server"] == ",".join(f"kafka-{n}:19092" for n in cfg.nodes)
            assert flags["replication-factor"] == str(cfg.kafka_replication)
            assert flags["config"] == f"min.insync.replicas={cfg.kafka_min_insync_replicas}"
            created[flags["topic"]] = int(flags["partitions"])
    # As the local stack creates them (stack/services.py, Kafka.initialise; partitions from stack/stack.toml).
    partitions = cfg.kafka_iot_partitions
    assert created == {IOT_TOPIC: partitions, DEAD_LETTER_TOPIC: 1, SCORED_TOPIC: partitions, ALERTS_TOPIC: 1,
                       VERDICTS_TOPIC: partitions}


@pytest.mark.parametrize("profile", ["default", "cluster"])
def test_kudu_has_the_local_stacks_masters_and_replicas(profile, tmp_path):
    cfg = local_config(profile)
    services = profile_services(profile)
    masters = ",".join(f"kudu-master-{n}:7051" for n in cfg.nodes)
    master_services = sorted(name for name in services if name.startswith("kudu-master-"))
    assert master_services == [f"kudu-master-{n}" for n in cfg.nodes]
    assert sorted(name for name in services if name.startswith("kudu-tserver-")) == [
        f"kudu-tserver-{n}" for n in cfg.nodes]
    local_master = flag_values(local_services.KuduMaster(cfg).command())
    local_tserver = flag_values(local_services.KuduTabletServer(cfg).command())
    for name, service in services.items():
        env = environment(service)
        if name.startswith("kudu-master-"):
            assert env["KUDU_MASTERS"] == masters, name
            assert flag_values(env["MASTER_ARGS"])["default_num_replicas"] == local_master["default_num_replicas"] \
                == str(cfg.kudu_replicas)
            assert flag_values(env["MASTER_ARGS"])["fs_wal_dir"].startswith("/var/lib/kudu/")  # on its volume
        if name.startswith("kudu-tserver-"):
            assert env["KUDU_MASTERS"] == masters, name
            tserver = flag_values(env["TSERVER_ARGS"])
            for flag in ("memory_limit_hard_bytes", "block_cache_capacity_mb"):
                assert tserver[flag] == local_tserver[flag], (name, flag)
            assert tserver["fs_wal_dir"].startswith("/var/lib/kudu/")
    assert environment(services["streaming"])["KUDU_MASTER"] == masters
    assert flag_values(services["impalad"]["command"])["kudu_master_hosts"] == masters

    # kudu-ready waits for a tablet server per replica; sql-init (after it) creates every table with that many.
    fakes = tmp_path / "bin"
    fakes.mkdir()
    fake_command(fakes, "kudu", NODES_SO_FAR + 'echo "kudu $*" >> "$LOG"; echo "uuid,rpc-addresses"\n'
                 'i=0; while [ $i -lt $n ] && [ $i -lt 3 ]; do i=$((i + 1)); echo "u$i,kudu-tserver-$i:7050"; done\n')
    result = run_one_shot(services["kudu-ready"], fakes, tmp_path)
    assert result.returncode == 0, result.stderr
    assert int((tmp_path / "calls").read_text()) == cfg.kudu_replicas
    assert (tmp_path / "log").read_text().split("\n")[0].split()[:4] == ["kudu", "tserver", "list", masters]

    fake_command(fakes, "python", 'echo "$*" >> "$LOG"; cat "$4" > "$TMPDIR/ran-$(basename "$4")"\n')
    (tmp_path / "log").unlink()
    result = run_one_shot(services["sql-init"], fakes, tmp_path, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    ran = sorted(path.name for path in tmp_path.glob("ran-*"))
    assert ran == ["ran-create_alerts.sql", "ran-create_edge_agreement.sql", "ran-create_edge_verdicts.sql",
                   "ran-create_sensors.sql"]
    for path in tmp_path.glob("ran-*"):
        replicas = re.findall(r"'kudu.num_tablet_replicas' = '(\d+)'", path.read_text())
        original = (REPO_ROOT / "sql" / path.name.removeprefix("ran-")).read_text()
        assert len(replicas) == original.count("kudu.num_tablet_replicas"), path.name
        assert set(replicas) <= {str(cfg.kudu_replicas)}, path.name


def dockerfile() -> tuple[str, dict[str, str]]:
    """The Dockerfile with continuation lines joined, and its ENV settings."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line.split()[1:])
    return text, env


def spark_command_shape(command: list[str]) -> tuple[str, str, set[str]]:
    """What must agree between two Spark daemons' command lines: launcher, main class, option names."""
    return os.path.basename(command[0]), command[1], {token for token in command if token.startswith("--")}


@pytest.mark.parametrize("profile", ["default", "cluster"])
def test_spark_daemons_run_as_the_local_stacks_spark_master_and_worker(profile):
    cfg = local_config("cluster")  # the local single-node profile has no Spark daemons: compare with the cluster's
    services = profile_services(profile)
    master, worker = local_services.SparkMaster(cfg), local_services.SparkWorker(cfg, 1)
    assert spark_command_shape(services["spark-master"]["command"]) == spark_command_shape(master.command())
    master_url = environment(services["streaming"])["SPARK_MASTER"]
    assert master_url == f"spark://spark-master:{cfg.spark_master_port}"
    assert flag_values(services["spark-master"]["command"])["port"] == str(cfg.spark_master_port)
    workers = sorted(name for name in services if name.startswith("spark-worker-"))
    if profile == "cluster":
        assert workers == [f"spark-worker-{n}" for n in cfg.spark_workers]
    _, env = dockerfile()
    for name in workers:
        command = services[name]["command"]
        assert spark_command_shape(command) == spark_command_shape(worker.command()), name
        assert command[-1] == master_url, name
        assert command[0] == f"{env['SPARK_HOME']}/bin/spark-class", name  # the image's pyspark
        flags = flag_values(command)
        assert flags["host"] == name
        # A directory the image's user can create (not $SPARK_HOME/work, in root-owned site-packages).
        assert flags["work-dir"].startswith("/tmp/"), name
        local = flag_values(worker.command())
        assert flags["memory"] == local["memory"], name
        if profile == "cluster":
            assert flags["cores"] == local["cores"], name
    assert environment(services["spark-master"])["SPARK_DAEMON_MEMORY"] == \
        master.environment({})["SPARK_DAEMON_MEMORY"]


# Compose service -> the local stack's service that runs the same part. Options that only make sense in one place
# would be listed here, with the reason; there are none.
OUR_SERVICES = {"gateway": "gateway", "streaming": "streaming", "model": "model", "edge": "edge",
                "dashboard": "dashboard"}


def module_and_options(command: list[str]) -> tuple[list[str], set[str]]:
    start = command.index("-m") + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return command[start:end], {token for token in command if token.startswith("--")}


@pytest.mark.parametrize("profile", ["default", "cluster"])
def test_our_services_run_the_same_module_with_the_same_options_as_the_local_stack(profile):
    local = {service.name: service for service in local_services.all_services(local_config(profile))}
    services = profile_services(profile)
    for compose_name, local_name in OUR_SERVICES.items():
        assert module_and_options(services[compose_name]["command"]) == \
            module_and_options(local[local_name].command()), compose_name


def test_the_image_holds_the_connectors_where_the_job_looks_for_them(monkeypatch):
    """The Dockerfile resolves them at build time with the job's own spark-submit settings (runtime/spark.py): the
    same packages, ivy settings and cache (`$STACK_INSTALL_DIR/ivy`), so no container downloads them at start."""
    text, env = dockerfile()
    install_dir = env["STACK_INSTALL_DIR"]
    assert os.path.isabs(install_dir)
    run_step = next(line for line in text.splitlines() if line.startswith("RUN ") and "spark_submit_command" in line)
    # The cache is written by the image's user, who runs the job (Ivy writes to it at each resolution).
    assert text.index("USER iot") < text.index(run_step)
    assert text.index("ENV SPARK_HOME") < text.index(run_step)
    code = re.search(r'python -c "([^"]*)"', run_step)[1]
    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **_: commands.append(command))
    monkeypatch.setenv("STACK_INSTALL_DIR", install_dir)
    exec(code, {})  # what the RUN step runs, with spark-submit recorded instead of run
    (build,) = commands
    job = job_command([])

    def settings(command: list[str]) -> dict[str, str]:
        confs = dict(command[i + 1].split("=", 1) for i, token in enumerate(command) if token == "--conf")
        return {"packages": command[command.index("--packages") + 1], "ivy": confs["spark.jars.ivy"],
                "ivySettings": confs["spark.jars.ivySettings"]}

    assert settings(build) == settings(job)
    assert settings(job)["ivy"] == f"{install_dir}/ivy"
    for name, service in SERVICES.items():  # no service points the job elsewhere
        assert "STACK_INSTALL_DIR" not in (service.get("environment") or {}), name
