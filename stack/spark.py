"""How the project runs Spark: the pinned connector coordinates and the `spark-submit` command line.

The Spark connectors (Kafka source, Kudu) are resolved by spark-submit's own `--packages` into the stack's
ivy cache (`<install dir>/ivy`) once, at setup; later runs find them there.
"""

from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pyspark

from stack.config import JVM_POM, StackConfig

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


@cache
def jvm_versions(pom: Path = JVM_POM) -> dict[str, str]:
    """The <properties> of the JVM pom, with ${...} references resolved: the one place JVM versions live."""
    props = {
        el.tag.split("}", 1)[1]: (el.text or "").strip()
        for el in ET.parse(pom).getroot().find("m:properties", _POM_NS)
    }

    def resolve(value: str) -> str:
        return re.sub(r"\$\{([^}]+)\}",
                      lambda m: resolve(props[m.group(1)]) if m.group(1) in props else m.group(0), value)

    return {key: resolve(value) for key, value in props.items()}


def connector_packages() -> list[str]:
    """Maven coordinates of the Spark connectors, for `--packages`."""
    versions = jvm_versions()
    return [versions["spark.connector.kafka"], versions["spark.connector.kudu"]]


def spark_home() -> Path:
    return Path(pyspark.__file__).resolve().parent


def spark_environment(cfg: StackConfig) -> dict[str, str]:
    """Environment for spark-submit: pyspark's Spark, this interpreter for Python workers, loopback only."""
    env = dict(os.environ)
    env["SPARK_HOME"] = str(spark_home())
    # Spark's Python workers must run the project's interpreter, not whatever `python3` is on PATH.
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["SPARK_LOCAL_IP"] = cfg.host
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def spark_submit_command(cfg: StackConfig, app: list[str], packages: list[str] | None = None,
                         conf: dict[str, str] | None = None, master: str = "local[*]",
                         submit_options: list[str] | None = None) -> list[str]:
    """A `spark-submit` command line with the stack's connector cache and loopback binding."""
    settings = {
        "spark.jars.ivy": str(cfg.ivy_dir),
        "spark.driver.host": cfg.host,
        "spark.driver.bindAddress": cfg.host,
        **(conf or {}),
    }
    command = [str(spark_home() / "bin" / "spark-submit"), "--master", master]
    if packages:
        command += ["--packages", ",".join(packages)]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    return command + (submit_options or []) + app
