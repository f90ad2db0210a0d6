"""The connection settings every part of the project reads: the environment first, then `.stack/connection.env`.

The variables (written by `make up`; point them at a real cluster to use one):
    MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD KAFKA_BOOTSTRAP KUDU_MASTER SQL_HOST SQL_PORT MODEL_URL
    MODEL_ACCESS_KEY
"""

from __future__ import annotations

import os
from pathlib import Path

from stack.config import StackConfig, load_config
from stack.secrets import read_env_file

CONNECTION_VARIABLES = (
    "MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP", "KUDU_MASTER",
    "SQL_HOST", "SQL_PORT", "MODEL_URL", "MODEL_ACCESS_KEY",
)


def local_stack_settings(cfg: StackConfig, secrets: dict[str, str]) -> dict[str, str]:
    """The connection variables of the local stack described by `cfg` (what `make up` writes)."""
    return {
        "MQTT_HOST": cfg.host,
        "MQTT_PORT": str(cfg.mqtt_port),
        "MQTT_USERNAME": secrets["MQTT_USERNAME"],
        "MQTT_PASSWORD": secrets["MQTT_PASSWORD"],
        "KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
        "KUDU_MASTER": cfg.kudu_master_address,
        "SQL_HOST": cfg.host,
        "SQL_PORT": str(cfg.sql_port),
        "MODEL_URL": f"http://{cfg.host}:{cfg.model_port}",
        "MODEL_ACCESS_KEY": secrets["MODEL_ACCESS_KEY"],
    }


def connection_settings(connection_file: Path | None = None) -> dict[str, str]:
    """Each connection variable from the environment if set there, else from the stack's connection file."""
    path = connection_file or load_config().connection_file
    settings = read_env_file(path) if path.exists() else {}
    settings.update({name: os.environ[name] for name in CONNECTION_VARIABLES if os.environ.get(name)})
    return {name: settings[name] for name in CONNECTION_VARIABLES if settings.get(name)}


def require(settings: dict[str, str], *names: str) -> list[str]:
    """The values of `names`, or SystemExit saying which are missing and how to get them."""
    missing = [name for name in names if not settings.get(name)]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not set: run `make up` (writes .stack/connection.env) "
                         f"or export them")
    return [settings[name] for name in names]
