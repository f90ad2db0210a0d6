"""`python -m streaming [job options]`: print and run the lab-9 job's spark-submit command.

Connection settings (KAFKA_BOOTSTRAP, KUDU_MASTER, MODEL_URL, MODEL_ACCESS_KEY) come from the environment or
.stack/connection.env; job options (see `--help`) are checked here (streaming/options.py: a wrong one exits 2
before spark-submit starts) and passed through to streaming/kafka_to_kudu.py.
SPARK_MASTER (a connection setting too; default `local[*]`) picks the cluster, e.g. `spark://spark-master:7077`
under Compose or `spark://127.0.0.1:7077` in the local stack's cluster profile;
SPARK_LOCAL_IP (default 127.0.0.1) the driver's address; STACK_INSTALL_DIR (default `.stack`) holds the connector
cache (`ivy/`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from runtime.settings import connection_settings, require
from runtime.spark import connector_packages, spark_environment, spark_submit_command
from streaming.options import parse_args

JOB = Path(__file__).resolve().parent / "kafka_to_kudu.py"
SETTINGS = ("KAFKA_BOOTSTRAP", "KUDU_MASTER", "MODEL_URL", "MODEL_ACCESS_KEY")  # what the job reads


def spark_host() -> str:
    """The address the driver binds to: `SPARK_LOCAL_IP`, default loopback."""
    return os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")


def job_command(job_args: list[str], master: str = "local[*]") -> list[str]:
    return spark_submit_command(spark_host(), app=[str(JOB), *job_args], packages=connector_packages(),
                                master=master, conf={"spark.ui.enabled": "false"})


def main(argv: list[str] | None = None) -> None:
    job_args = sys.argv[1:] if argv is None else argv
    settings = connection_settings()
    # The job's own parser, on the environment the job will get: `--help` and a wrong option end here, in a second,
    # not after the JVM has started.
    parse_args(job_args, env={**os.environ, **settings})
    require(settings, *SETTINGS)
    command = job_command(job_args, settings.get("SPARK_MASTER", "local[*]"))
    print("$ " + " ".join(shlex.quote(part) for part in command), file=sys.stderr, flush=True)
    env = {**spark_environment(spark_host()), **settings}
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
