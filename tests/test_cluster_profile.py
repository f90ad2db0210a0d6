"""The cluster profile's settings, without starting it: which services it runs, on which ports, and that the
project's own processes (job, gateway, SQL client, model server, edge agent) get no profile-specific code path:
the same command line in both profiles, and an environment that differs only in the connection settings."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.settings import CONNECTION_VARIABLES, REPO_ROOT
from stack.config import load_config
from stack.connection import local_stack_settings
from stack.services import CLIENT_CLASSES, SparkWorker, all_services

SECRETS = {"MQTT_USERNAME": "iot", "MQTT_PASSWORD": "p", "MODEL_ACCESS_KEY": "k"}
# The packages of the pipeline itself: they read connection settings, never the stack's configuration.
RUNTIME_PACKAGES = ("contract", "runtime", "gateway", "streaming", "sql", "model", "edge", "simulator", "dashboard")


def configs(tmp_path: Path):
    env = {"STACK_DIR": str(tmp_path)}
    return load_config(environ=env), load_config(environ={**env, "STACK_PROFILE": "cluster"})


def test_the_cluster_profile_runs_three_nodes_of_each_and_a_spark_cluster(tmp_path):
    single, cluster = configs(tmp_path)
    assert [s.name for s in all_services(cluster)] == [
        "mosquitto", "kafka-1", "kafka-2", "kafka-3", "kudu-master-1", "kudu-master-2", "kudu-master-3",
        "kudu-tserver-1", "kudu-tserver-2", "kudu-tserver-3", "spark-master", "spark-worker-1", "spark-worker-2",
        "sql", "model", "gateway", "streaming", "edge", "dashboard"]
    assert [s.name for s in all_services(single)] == [
        "mosquitto", "kafka", "kudu-master", "kudu-tserver", "sql", "model", "gateway", "streaming", "edge",
        "dashboard"]
    addresses = [s.address for s in all_services(cluster) if s.name.startswith(("kafka-", "kudu-"))]
    assert len(set(addresses)) == 9
    settings = local_stack_settings(cluster, SECRETS)
    assert settings["KAFKA_BOOTSTRAP"].split(",") == addresses[:3]
    assert settings["KUDU_MASTER"].split(",") == addresses[3:6]
    assert settings["SPARK_MASTER"] == f"spark://{cluster.host}:{cluster.spark_master_port}"
    assert local_stack_settings(single, SECRETS)["SPARK_MASTER"] == "local[*]"


def test_every_kudu_daemon_knows_all_three_masters(tmp_path):
    _, cluster = configs(tmp_path)
    masters = f"={cluster.kudu_master_address}"
    for service in all_services(cluster):
        if service.name.startswith("kudu-master-"):
            assert f"--master_addresses{masters}" in service.command()
            assert "--default_num_replicas=3" in service.command()
        elif service.name.startswith("kudu-tserver-"):
            assert f"--tserver_master_addrs{masters}" in service.command()


def test_a_spark_worker_works_in_a_directory_of_its_own_under_the_stack(tmp_path):
    # Without --work-dir, Spark writes under $SPARK_HOME/work: site-packages, which an unprivileged user cannot.
    _, cluster = configs(tmp_path)
    commands = [SparkWorker(cluster, n).command() for n in cluster.spark_workers]
    work_dirs = [Path(command[command.index("--work-dir") + 1]) for command in commands]
    assert len(set(work_dirs)) == 2 and all(tmp_path in path.parents for path in work_dirs)
    assert all(command[-1] == cluster.spark_master_url for command in commands)


@pytest.mark.parametrize("client", CLIENT_CLASSES, ids=lambda c: c.__name__)
def test_our_processes_get_the_same_command_in_both_profiles_and_only_other_connection_settings(tmp_path, client):
    single, cluster = (client(cfg) for cfg in configs(tmp_path))
    assert single.command() == cluster.command()
    single_env, cluster_env = single.environment(SECRETS), cluster.environment(SECRETS)
    differing = {name for name in single_env.keys() | cluster_env.keys()
                 if single_env.get(name) != cluster_env.get(name)}
    assert differing <= set(CONNECTION_VARIABLES), differing


def names_in(path: Path) -> set[str]:
    """Every identifier, attribute name and string constant of a Python file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return found


TELLTALES = {"STACK_PROFILE", "profile", "clustered", "cluster_port_step", "spark_workers", "nodes"}
ASKING = """
import json, sys
from pathlib import Path
from tests.test_cluster_profile import RUNTIME_PACKAGES, TELLTALES, names_in
root = Path(sys.argv[1])
print(json.dumps({str(path.relative_to(root)): sorted(names_in(path) & TELLTALES)
                  for package in RUNTIME_PACKAGES for path in (root / package).rglob("*.py")}))
"""


def test_no_runtime_part_asks_which_profile_runs():
    # In a fresh interpreter: late in a long run, CPython 3.11.7's ast.parse failed here with "SystemError: AST
    # constructor recursion depth mismatch" (a bug of the interpreter's state, not of the files parsed).
    result = subprocess.run([sys.executable, "-c", ASKING, str(REPO_ROOT)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    asking = json.loads(result.stdout)
    assert len(asking) > 50  # every module of the runtime packages was read
    assert not {path: names for path, names in asking.items() if names}
