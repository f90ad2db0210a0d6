"""The runtime settings every part reads, in one module: the names of topics and tables, the env-file format, and
the connection settings (the environment first, then the stack's `connection.env`).

The connection variables (written by `make up`; point them at a real cluster to use one):
    MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD KAFKA_BOOTSTRAP KUDU_MASTER SQL_HOST SQL_PORT MODEL_URL
    MODEL_ACCESS_KEY SPARK_MASTER (and the metrics and dashboard URLs)
KAFKA_BOOTSTRAP and KUDU_MASTER list every broker / master of a cluster, comma-separated; SPARK_MASTER is where the
streaming job runs (`local[*]`, or a standalone cluster's `spark://host:port`).
Where the stack keeps its files: `STACK_DIR` (default `.stack`, relative to the repository), which holds
`connection.env` and the served model; `STACK_INSTALL_DIR` (default `.stack`) holds the Spark connector cache.
What every process the project starts gets in its environment unless set there: `ENVIRONMENT_DEFAULTS` (no usage
telemetry).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

MQTT_TOPIC_PREFIX = "iot"  # readings arrive on MQTT `iot/<sensor_id>`
MQTT_TOPIC_FILTER = f"{MQTT_TOPIC_PREFIX}/#"
IOT_TOPIC = "iot"  # the Kafka topic of readings
DEAD_LETTER_TOPIC = "iot.dlq"
SCORED_TOPIC = "iot.scored"  # the streaming job's scored readings (contract.SCORED_FIELDS)
ALERTS_TOPIC = "iot.alerts"  # a machine's verdict changed (contract.ALERT_FIELDS)
MQTT_ALERTS_PREFIX = "alerts"  # the gateway republishes each alert on MQTT `alerts/<sensor_id>`, retained
ALERTS_SQL_TABLE = "alerts"
ALERTS_KUDU_TABLE = "impala::default.alerts"
# Edge agents (python -m edge): model jobs on `jobs/<agent_id>/model` (retained), their status on
# `jobs/<agent_id>/status` (retained), each verdict on `verdicts/<sensor_id>`, their log lines on `logs/<agent_id>`.
MQTT_JOBS_PREFIX = "jobs"
MQTT_VERDICTS_PREFIX = "verdicts"
MQTT_VERDICTS_FILTER = f"{MQTT_VERDICTS_PREFIX}/#"
MQTT_EDGE_LOGS_PREFIX = "logs"
VERDICTS_TOPIC = "iot.verdicts"  # the gateway carries edge verdicts here (contract.VERDICT_FIELDS)
EDGE_VERDICTS_SQL_TABLE = "edge_verdicts"
EDGE_VERDICTS_KUDU_TABLE = "impala::default.edge_verdicts"
EDGE_AGREEMENT_VIEW = "edge_agreement"  # per model version: edge verdicts that agree with the central ones
SQL_TABLE = "sensors"
KUDU_TABLE = "impala::default.sensors"

DEFAULT_STACK_DIR = ".stack"  # also the launcher's default for STACK_DIR and STACK_INSTALL_DIR (stack/stack.toml)

# Nothing the project runs phones home. MLflow 3 sends usage telemetry from each process that imports it unless
# MLFLOW_DISABLE_TELEMETRY is true (mlflow/telemetry/utils.py, `is_telemetry_disabled`); `import mlflow` decides
# once, so the variable must be in the environment the process starts with. Every process the project starts gets
# these unless its environment sets them: the Makefile exports them (everything `make` runs), `python -m stack`
# sets them for what it starts (services, the first training run, JupyterLab and its kernels), the Dockerfile for
# the Compose services (tests/test_privacy.py keeps the three the same and asks MLflow itself).
ENVIRONMENT_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true"}

CONNECTION_VARIABLES = (
    "MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP", "KUDU_MASTER",
    "SQL_HOST", "SQL_PORT", "MODEL_URL", "MODEL_ACCESS_KEY", "GATEWAY_METRICS_URL", "MODEL_METRICS_URL",
    "STREAMING_METRICS_URL", "EDGE_METRICS_URL", "DASHBOARD_URL", "SPARK_MASTER",
)


def _repo_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def model_job_topic(agent_id: str) -> str:
    return f"{MQTT_JOBS_PREFIX}/{agent_id}/model"


def job_status_topic(agent_id: str) -> str:
    return f"{MQTT_JOBS_PREFIX}/{agent_id}/status"


def stack_dir() -> Path:
    """`STACK_DIR`: where the running stack keeps its connection file, secrets and served model."""
    return _repo_path(os.environ.get("STACK_DIR") or DEFAULT_STACK_DIR)


def install_dir() -> Path:
    """`STACK_INSTALL_DIR`: where installed parts live (the Spark connector cache among them)."""
    return _repo_path(os.environ.get("STACK_INSTALL_DIR") or DEFAULT_STACK_DIR)


def served_model_file() -> Path:
    """`MODEL_PATH`, or the served-model file of the stack in `STACK_DIR`."""
    if os.environ.get("MODEL_PATH"):
        return Path(os.environ["MODEL_PATH"])
    return stack_dir() / "model" / "iot_model.joblib"


def with_environment_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: this process's), plus each of `ENVIRONMENT_DEFAULTS` that it does not set itself."""
    return {**ENVIRONMENT_DEFAULTS, **(os.environ if environ is None else environ)}


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `KEY=value` file as written by `write_env_file` (comments and blank lines ignored)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: line {line!r} is not KEY=value")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def write_env_file(path: Path, values: dict[str, str], header: str) -> None:
    """Write a sourceable `KEY=value` file readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{key}={value}\n" for key, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# {header}\n{body}")
    os.chmod(path, 0o600)


def connection_settings(connection_file: Path | None = None) -> dict[str, str]:
    """Each connection variable from the environment if set there, else from the stack's connection file."""
    settings = {name: os.environ[name] for name in CONNECTION_VARIABLES if os.environ.get(name)}
    path = connection_file or stack_dir() / "connection.env"
    if len(settings) < len(CONNECTION_VARIABLES) and path.exists():  # a service given them all need not read it
        settings = read_env_file(path) | settings
    return {name: settings[name] for name in CONNECTION_VARIABLES if settings.get(name)}


def require(settings: dict[str, str], *names: str) -> list[str]:
    """The values of `names`, or SystemExit saying which are missing and how to get them."""
    missing = [name for name in names if not settings.get(name)]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not set: run `make up` (writes .stack/connection.env) "
                         f"or export them")
    return [settings[name] for name in names]
