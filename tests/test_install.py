"""What `make setup` installed: idempotent, and the Spark connectors work with no network at all."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from runtime.settings import REPO_ROOT
from runtime.spark import IVY_SETTINGS, connector_packages, spark_environment, spark_submit_command
from stack.config import load_config
from stack.install import OUTPUT_TAIL_LINES, _run_quietly

PROGRESS_LINE = re.compile(r"\[install \d/\d\] .+|  already installed|setup done in .+")


def test_install_again_installs_nothing():
    result = subprocess.run([sys.executable, "-m", "stack", "install"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already installed") == result.stdout.count("[install ") >= 3  # 4 as root
    assert "installed: nothing new" in result.stdout.splitlines()[-1]
    assert [line for line in result.stdout.splitlines() if not PROGRESS_LINE.fullmatch(line)] == []
    assert result.stderr == ""


def test_spark_resolves_packages_from_maven_central_only():
    """Every spark-submit uses runtime/jvm/ivysettings.xml: one resolver, Maven Central, no other repository."""
    command = spark_submit_command("127.0.0.1", app=["x.py"], packages=["a:b:1"])
    assert f"spark.jars.ivySettings={IVY_SETTINGS}" in command
    root = ET.parse(IVY_SETTINGS).getroot()
    resolvers = list(root.find("resolvers"))
    assert [(r.tag, r.get("name"), r.get("root")) for r in resolvers] == [
        ("ibiblio", "central", "https://repo1.maven.org/maven2/")]
    assert root.find("settings").get("defaultResolver") == "central"


def test_a_failing_tool_shows_the_tail_of_its_output():
    """The install step hides a tool's output, but not when it fails: its last lines say why."""
    script = "for i in $(seq 1 100); do echo line $i; done; echo 'the reason' >&2; exit 3"
    with pytest.raises(RuntimeError) as failure:
        _run_quietly(["sh", "-c", script])
    message = str(failure.value)
    assert "exit code 3" in message
    assert "the reason" in message and "line 100" in message
    assert f"line {100 - OUTPUT_TAIL_LINES + 2}\n" in message and f"line {100 - OUTPUT_TAIL_LINES + 1}\n" not in message


def _can_unshare_network() -> bool:
    return bool(shutil.which("unshare") and shutil.which("ip")) and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare_network(), reason="needs `unshare -n` (root or user namespaces)")
def test_spark_connectors_resolve_from_the_local_cache_without_network(tmp_path):
    """spark-submit --packages in a network namespace with only loopback: everything comes from .stack/ivy."""
    cfg = load_config()
    app = tmp_path / "uses_connectors.py"
    app.write_text(
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate()\n"
        "jvm = spark.sparkContext._jvm\n"
        "for name in ('org.apache.spark.sql.kafka010.KafkaSourceProvider',\n"
        "             'org.apache.kudu.spark.kudu.DefaultSource'):\n"
        "    jvm.java.lang.Class.forName(name, True, jvm.Thread.currentThread().getContextClassLoader())\n"
        "print('CONNECTORS LOADED')\n"
    )
    command = spark_submit_command(cfg.host, ivy=cfg.ivy_dir, app=[str(app)], packages=connector_packages(),
                                   master="local[1]", conf={"spark.ui.enabled": "false"})
    offline = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "offline", *command]
    result = subprocess.run(offline, env=spark_environment(cfg.host), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CONNECTORS LOADED" in result.stdout
