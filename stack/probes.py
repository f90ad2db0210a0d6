"""Readiness probes: each asks a service to do real work (log in, list topics, answer a query)."""

from __future__ import annotations

import json
import logging
import time
import urllib.request

import paho.mqtt.client as mqtt

from runtime.waiting import port_open

# Probing a starting SQL server means refused connections, which thrift would log as errors, one per try.
logging.getLogger("thrift.transport.TSocket").setLevel(logging.CRITICAL)


def mqtt_connack(host: str, port: int, username: str | None, password: str | None,
                 timeout_s: float = 5.0) -> mqtt.ReasonCode:
    """Connect to an MQTT broker and return the broker's CONNACK reason code (success or why refused)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    answer: list[mqtt.ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, reason_code, _p: answer.append(reason_code)
    client.connect(host, port, keepalive=10)
    deadline = time.monotonic() + timeout_s
    try:
        while not answer and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        client.disconnect()
    if not answer:
        raise TimeoutError(f"no CONNACK from MQTT broker {host}:{port} within {timeout_s} s")
    return answer[0]


def mqtt_login_ok(host: str, port: int, username: str, password: str) -> bool:
    return not mqtt_connack(host, port, username, password).is_failure


def kafka_topics(bootstrap: str) -> set[str]:
    """Topic names, listed through the broker's admin API."""
    from kafka import KafkaAdminClient

    if not port_open(*bootstrap.rsplit(":", 1)):
        raise ConnectionRefusedError(f"nothing listens on {bootstrap}")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, client_id="stack-probe")
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def sql_answers(host: str, port: int) -> bool:
    """True when the HiveServer2 endpoint runs a query."""
    from impala.dbapi import connect

    if not port_open(host, port):
        return False

    with connect(host=host, port=port, auth_mechanism="PLAIN", user="probe", password="unused",
                 timeout=10) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        return cur.fetchall() == [(1,)]


def kafka_brokers(bootstrap: str) -> list[int]:
    """The ids of the brokers the cluster's metadata lists as registered and not fenced (taking traffic)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, client_id="stack-probe")
    try:
        return sorted(broker["broker_id"] for broker in admin.describe_cluster()["brokers"] if not broker["is_fenced"])
    finally:
        admin.close()


def spark_master_state(web_url: str) -> dict:
    """The standalone master's state (`status`, `workers` with their `state` and `port`) from its JSON page."""
    with urllib.request.urlopen(f"{web_url}/json/", timeout=5) as answer:
        return json.load(answer)
