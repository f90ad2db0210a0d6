"""runtime.spark with a real spark-submit: the jars stay off the Python workers' path, and the loggers
that write a line per record log errors only (no services)."""

from __future__ import annotations

import json
import subprocess

from runtime.spark import connector_packages, spark_environment, spark_submit_command
from stack.config import load_config

APP = """\
import json, sys
from pyspark.sql import SparkSession
from runtime.spark import PER_RECORD_WARNINGS, keep_jars_off_the_python_path, quiet_per_record_warnings

spark = SparkSession.builder.getOrCreate()

def jars_on_a_workers_path():
    paths = spark.sparkContext.parallelize([0], 1).map(lambda _: sys.path).collect()[0]
    return sorted(path.rsplit("/", 1)[-1] for path in paths if path.endswith(".jar"))

before = jars_on_a_workers_path()
left_out = keep_jars_off_the_python_path(spark.sparkContext)
after = jars_on_a_workers_path()
quiet_per_record_warnings(spark.sparkContext)
LogManager = spark.sparkContext._jvm.org.apache.logging.log4j.LogManager
levels = {name: LogManager.getLogger(name).getLevel().toString() for name in PER_RECORD_WARNINGS}
print(json.dumps({"before": before, "left_out": sorted(left_out), "after": after, "levels": levels}))
"""


def test_the_connectors_jars_stay_off_the_workers_python_path_and_per_record_warnings_are_quiet(tmp_path):
    cfg = load_config()
    app = tmp_path / "python_path.py"
    app.write_text(APP)
    # A new worker per task: a reused one would keep what an earlier task put on its path.
    command = spark_submit_command(cfg.host, ivy=cfg.ivy_dir, app=[str(app)], packages=connector_packages(),
                                   master="local[1]", conf={"spark.ui.enabled": "false",
                                                            "spark.python.worker.reuse": "false"})
    result = subprocess.run(command, env=spark_environment(cfg.host), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    left_out = seen["left_out"]
    assert any("kudu-spark3" in jar for jar in left_out) and any("sql-kafka" in jar for jar in left_out), seen
    assert set(left_out) <= set(seen["before"])  # spark-submit put them there; the next task has none of them
    assert seen["after"] == [jar for jar in seen["before"] if jar not in left_out]
    # What stays is Spark's own core jar, which PySpark's worker factory always puts on the workers' PYTHONPATH.
    assert all(jar.startswith("spark-core_") for jar in seen["after"]), seen
    assert seen["levels"] == {"org.apache.spark.sql.kafka010.consumer.KafkaDataConsumer": "ERROR"}


REUSED_WORKER_APP = """\
import json, os, sys, zipimport
from pyspark.sql import SparkSession
from runtime.spark import skip_zip_rereads_in_this_worker

spark = SparkSession.builder.getOrCreate()

def a_task(skip):
    def task(_):
        zips = [path for path, finder in sys.path_importer_cache.items() if isinstance(finder, zipimport.zipimporter)]
        taken_out = skip_zip_rereads_in_this_worker() if skip else []
        return os.getpid(), zips, taken_out, [path for path in sys.path if path.endswith(".jar")]
    return spark.sparkContext.parallelize([0], 1).map(task).collect()[0]

print(json.dumps({"first": a_task(skip=True), "second": a_task(skip=False)}))
"""


def test_a_worker_that_skipped_the_zip_rereads_runs_its_next_tasks_without_them(tmp_path):
    cfg = load_config()
    app = tmp_path / "reused_worker.py"
    app.write_text(REUSED_WORKER_APP)
    command = spark_submit_command(cfg.host, ivy=cfg.ivy_dir, app=[str(app)], master="local[1]",
                                   conf={"spark.ui.enabled": "false", "spark.python.worker.reuse": "true"})
    result = subprocess.run(command, env=spark_environment(cfg.host), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    (first_pid, zips, taken_out, jars), (second_pid, zips_later, _, jars_later) = seen["first"], seen["second"]
    names = [path.rsplit("/", 1)[-1] for path in zips]
    # A task's worker re-reads these (importlib.invalidate_caches): pyspark.zip's packages, Spark's core jar.
    assert "pyspark.zip" in names and any(name.startswith("spark-core_") for name in names), seen
    assert set(zips) <= set(taken_out) and jars == [], seen
    assert second_pid == first_pid and zips_later == [] and jars_later == [], seen  # the same worker: none since
