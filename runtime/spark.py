"""How the project runs Spark: the pinned connector coordinates and the `spark-submit` command line.

The Spark connectors (Kafka source, Kudu) are resolved by spark-submit's own `--packages` into the ivy cache
(`<install dir>/ivy`) once, at setup; later runs find them there. Every JVM version is pinned in
`runtime/jvm/pom.xml`, read here (the job's connectors) and by the launcher (Kafka, Kudu).
"""

from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
import zipimport
from functools import cache
from pathlib import Path

import pyspark

from runtime.settings import install_dir

JVM_POM = Path(__file__).resolve().parent / "jvm" / "pom.xml"
# How `--packages` is resolved: from Maven Central only, into the ivy cache (`spark.jars.ivySettings`).
IVY_SETTINGS = JVM_POM.parent / "ivysettings.xml"
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


def spark_environment(host: str) -> dict[str, str]:
    """Environment for spark-submit: pyspark's Spark, this interpreter for Python workers, loopback only."""
    env = dict(os.environ)
    env["SPARK_HOME"] = str(spark_home())
    # Spark's Python workers must run the project's interpreter, not whatever `python3` is on PATH.
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["SPARK_LOCAL_IP"] = host
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def ivy_dir() -> Path:
    """The connector cache: `<STACK_INSTALL_DIR>/ivy`."""
    return install_dir() / "ivy"


def keep_jars_off_the_python_path(context: pyspark.SparkContext) -> list[str]:
    """Stop shipping the `--packages` jars to the Python workers' path; the jars left out.

    spark-submit lists them among a Python application's includes (a jar may hold Python code; the connectors hold
    none) and every task's Python worker puts them on sys.path and calls importlib.invalidate_caches(), which
    re-reads each jar's zip directory in pure Python: 0.33 s of CPU per task with the connectors' 13 jars (the
    Hadoop client's 50 MB among them), 95% of the workers' CPU in a py-spy profile under load. The JVM's classpath
    is not changed. SparkContext keeps the list in a private attribute (PySpark 3.5): tests/test_spark_runtime.py
    checks that a task's path no longer holds a connector's jar. (Spark's own core jar is on it too: see
    `skip_zip_rereads_in_this_worker`.)"""
    includes = context._python_includes
    jars = [name for name in includes if name.lower().endswith(".jar")]
    includes[:] = [name for name in includes if name not in jars]
    return jars


def skip_zip_rereads_in_this_worker() -> list[str]:
    """In a Python worker: take the jars off `sys.path`, and the zip importers out of the import system's cache;
    the entries taken out.

    Each task's importlib.invalidate_caches() (PySpark's worker calls it) makes every zip importer in that cache
    re-read its whole archive's directory, in pure Python: 13 of them in a worker of the job, one per package
    imported from pyspark.zip (9 x 8.5 ms) and two for Spark's core jar, which the worker factory puts on every
    worker's path with no Python in it (2 x 55 ms): 170 ms of CPU per task, before the task does anything. The
    modules are imported by then; an importer is made again (from zipimport's own cache, without reading the
    archive) only if a module not yet imported is looked up. A worker that calls this (a Python UDF, at its start)
    runs its next tasks without those reads."""
    jars = [path for path in sys.path if path.lower().endswith(".jar")]
    for path in jars:
        sys.path.remove(path)
    zips = [path for path, finder in sys.path_importer_cache.items() if isinstance(finder, zipimport.zipimporter)]
    for path in zips:
        del sys.path_importer_cache[path]
    return sorted(set(jars) | set(zips))


# Loggers that write a line per record, each line with nothing new in it.
PER_RECORD_WARNINGS = (
    # "KafkaDataConsumer is not running in UninterruptibleThread": at every record a Python UDF's input thread
    # reads (mapInPandas reads Kafka in such a thread); 152,623 lines for 150,000 readings, 18% of the JVM's
    # Java samples.
    "org.apache.spark.sql.kafka010.consumer.KafkaDataConsumer",
)


def quiet_per_record_warnings(context: pyspark.SparkContext) -> None:
    """Log only errors from PER_RECORD_WARNINGS' loggers, in this JVM (with `local[*]`, the executors' too)."""
    jvm = context._jvm
    for name in PER_RECORD_WARNINGS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, jvm.org.apache.logging.log4j.Level.ERROR)


def spark_submit_command(host: str, app: list[str], packages: list[str] | None = None,
                         conf: dict[str, str] | None = None, master: str = "local[*]",
                         submit_options: list[str] | None = None, ivy: Path | None = None) -> list[str]:
    """A `spark-submit` command line with the connector cache (`ivy`, default `ivy_dir()`), bound to `host`.

    `--packages` resolve from Maven Central only (`IVY_SETTINGS`) into that cache, and from the cache alone once
    they are there.
    """
    settings = {
        "spark.jars.ivy": str(ivy or ivy_dir()),
        "spark.jars.ivySettings": str(IVY_SETTINGS),
        "spark.driver.host": host,
        "spark.driver.bindAddress": host,
        **(conf or {}),
    }
    command = [str(spark_home() / "bin" / "spark-submit"), "--master", master]
    if packages:
        command += ["--packages", ",".join(packages)]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    return command + (submit_options or []) + app
