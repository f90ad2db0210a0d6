"""The local stack lists its services' Prometheus endpoints (connection.env, `make status`) and they answer."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.settings import read_env_file
from stack.launcher import format_status

pytestmark = pytest.mark.stack


def scrape(url: str) -> set[str]:
    """The metric family names an endpoint serves (parsed as Prometheus does)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return {family.name for family in text_string_to_metric_families(response.read().decode())}


def test_connection_settings_and_status_name_the_metrics_endpoints_and_they_answer(local_stack):
    settings = read_env_file(local_stack.cfg.connection_file)
    assert "iot_gateway_received" in scrape(settings["GATEWAY_METRICS_URL"])
    assert "iot_model_requests" in scrape(settings["MODEL_METRICS_URL"])
    rows = {row.name: row for row in local_stack.status()}
    assert rows["gateway"].metrics == settings["GATEWAY_METRICS_URL"]
    assert rows["model"].metrics == settings["MODEL_METRICS_URL"]
    assert settings["GATEWAY_METRICS_URL"] in format_status(list(rows.values()))
