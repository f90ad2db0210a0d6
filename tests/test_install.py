"""What `make setup` installed: idempotent, and the Spark connectors work with no network at all."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from runtime.settings import REPO_ROOT
from runtime.spark import connector_packages, spark_environment, spark_submit_command
from stack.config import load_config


def test_install_again_installs_nothing():
    result = subprocess.run([sys.executable, "-m", "stack", "install"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already installed") == 3
    assert "installed: nothing new" in result.stdout.splitlines()[-1]


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
