"""runtime.spark with a real spark-submit: the connectors' jars stay off the Python workers' path, and the loggers
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
