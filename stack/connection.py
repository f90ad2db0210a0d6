"""The connection variables of the local stack, which `make up` writes to `.stack/connection.env` (the runtime
parts read them with `runtime.settings.connection_settings`)."""

from __future__ import annotations

from stack.config import StackConfig


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
        "GATEWAY_METRICS_URL": f"http://{cfg.host}:{cfg.gateway_metrics_port}/metrics",
        "MODEL_METRICS_URL": f"http://{cfg.host}:{cfg.model_port}/metrics",
        "STREAMING_METRICS_URL": f"http://{cfg.host}:{cfg.streaming_metrics_port}/metrics",
        "EDGE_METRICS_URL": f"http://{cfg.host}:{cfg.edge_metrics_port}/metrics",
        "DASHBOARD_URL": f"http://{cfg.host}:{cfg.dashboard_port}/",
        "SPARK_MASTER": cfg.spark_master_url,
    }
