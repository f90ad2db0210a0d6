"""The cluster profile, run for real (one cluster for this whole module: `cluster_stack`, on free ports).

Acceptance (every `make test`): a stream of readings lands in Kudu exactly; `iot` and `iot.dlq` are replicated
on all three brokers with min.insync.replicas 2; `sensors` has 3 replicas and `kudu cluster ksck` is OK;
connection.env names every broker and master and the Spark master; `status` shows every node up; the streaming
job's executors run on both Spark workers.

Failover drills (`make drills`; the two marked `quick_drill` in `make test` too), each under a steady stream of
readings and ending with an exact reconciliation (tests/fixtures/drills.py): a kill -9 of the Kafka broker
leading the most `iot` partitions, of the Kudu tablet server leading the most tablets, of the leader Kudu master,
of a Spark worker; a rolling restart of the three brokers. Each starts from a healthy cluster (every partition's
ISR full, ksck OK) and reports, besides the single-node drills' times, how soon a reading sent right after the
fault is queryable (the stream flowing again, while the killed node may still be restarting).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from runtime.kudu import kudu_cli
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, KUDU_TABLE, read_env_file
from runtime.waiting import wait_until
from stack.audit import Scope, audit, format_audit
from stack.launcher import Stack
from tests.fixtures.drills import Drill, Load, kill_9, start_readings
from tests.fixtures.local_stack import users_of_services

pytestmark = [pytest.mark.stack, pytest.mark.slow]

# Lower than the single-node drills' 400/s: the cluster's 19 processes share the machine's cores.
LOAD = Load(machines=20, rate=200, readings=6_000)  # 30 s of readings
ROLLING_LOAD = Load(machines=20, rate=200, readings=18_000)  # 90 s: the restarts of three brokers fit in it
STREAMING_APP = "iot-kafka-to-kudu"
drill = [pytest.mark.drill]
quick_drill = [pytest.mark.drill, pytest.mark.quick_drill]


def kafka_admin(stack: Stack) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=stack.cfg.kafka_bootstrap, client_id="test-cluster",
                            request_timeout_ms=10_000)


def describe_topics(stack: Stack, topics: list[str] | None = None) -> list[dict]:
    """The topics' metadata (every topic if None): per partition its leader, replicas and in-sync replicas."""
    admin = kafka_admin(stack)
    try:
        return admin.describe_topics(topics)
    finally:
        admin.close()


def isr_full(stack: Stack) -> bool:
    """Every partition of every topic has a leader and all its replicas in sync."""
    return all(p["leader_id"] >= 0 and sorted(p["isr_nodes"]) == sorted(p["replica_nodes"])
               for topic in describe_topics(stack) for p in topic["partitions"])


def ksck(stack: Stack) -> str:
    """`kudu cluster ksck` (it fails unless every master, tablet server and tablet is healthy)."""
    return kudu_cli(stack.cfg.kudu_home, "cluster", "ksck", stack.cfg.kudu_master_address)


def service_at(stack: Stack, prefix: str, address: str) -> str:
    """The name of the service `prefix`-n at `address` (host:port)."""
    names = [s.name for s in stack.services if s.name.startswith(prefix) and s.address == address]
    assert len(names) == 1, f"no single {prefix}* at {address}: {names}"
    return names[0]


def spark_json(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/json/", timeout=5) as answer:
        return json.load(answer)


def spark_master_url(stack: Stack) -> str:
    return f"http://{stack.cfg.host}:{stack.cfg.spark_master_web_port}"


def executors_on_every_worker(stack: Stack) -> bool:
    """The streaming job runs on the standalone cluster, with cores of both workers, each running an executor."""
    master = spark_json(spark_master_url(stack))
    apps = [app for app in master["activeapps"] if app["name"] == STREAMING_APP and app["state"] == "RUNNING"]
    workers = [w for w in master["workers"] if w["state"] == "ALIVE"]
    if len(apps) != 1 or len(workers) != len(stack.cfg.spark_workers):
        return False
    app_id = apps[0]["id"]
    on_worker = [any(e["appid"] == app_id for e in spark_json(w["webuiaddress"])["executors"]) for w in workers]
    return apps[0]["cores"] == sum(w["cores"] for w in workers) and all(on_worker)


@pytest.fixture(scope="module")
def cluster_pipeline(cluster_stack, pipeline_for, tmp_path_factory):
    return pipeline_for(cluster_stack, tmp_path_factory.mktemp("cluster-pipeline"))


# --- acceptance -------------------------------------------------------------------------------------------------


def test_every_node_is_up(cluster_stack):
    rows = {row.name: row for row in cluster_stack.status()}
    nodes = ["kafka-1", "kafka-2", "kafka-3", "kudu-master-1", "kudu-master-2", "kudu-master-3", "kudu-tserver-1",
             "kudu-tserver-2", "kudu-tserver-3", "spark-master", "spark-worker-1", "spark-worker-2"]
    assert set(nodes) <= set(rows), sorted(rows)
    assert {name: row.state for name, row in rows.items() if row.state != "up"} == {}


def test_the_spark_daemons_and_every_service_run_as_the_services_user(cluster_stack):
    """As in the images (`USER iot`): a daemon writing under the root-owned installation fails here too."""
    users = users_of_services(cluster_stack)
    users.pop("supervisor")
    expected = cluster_stack.cfg.run_as if os.geteuid() == 0 and cluster_stack.cfg.run_as else getpass.getuser()
    assert {"spark-master", "spark-worker-1", "spark-worker-2"} <= set(users)
    assert all(owners == {expected} for owners in users.values()), users


def test_a_stream_of_readings_lands_in_kudu_exactly(cluster_stack, cluster_pipeline):
    load = Load(machines=10, rate=100, readings=1_000)
    first_id = 3_900_000
    publisher, record_file, started_us = start_readings(cluster_pipeline, first_id, load)
    assert publisher.wait(timeout=300) == 0
    published = json.loads(record_file.read_text())
    scope = Scope(started_us, published["ended_us"], first_id, first_id + load.machines - 1, published["published"])
    result = audit(cluster_pipeline.settings(), cluster_stack.cfg.streaming_checkpoint, scope, wait_s=300)
    assert result.ok, format_audit(result)
    assert published["published"] == load.readings
    assert result.counts.kudu_rows == result.counts.kudu_distinct == load.readings, format_audit(result)


def test_the_topics_are_on_three_brokers_with_min_insync_replicas_2(cluster_stack):
    topics = {topic["name"]: topic for topic in describe_topics(cluster_stack, [IOT_TOPIC, DEAD_LETTER_TOPIC])}
    assert set(topics) == {IOT_TOPIC, DEAD_LETTER_TOPIC}
    for topic in topics.values():
        assert topic["partitions"], topic
        for partition in topic["partitions"]:
            assert sorted(partition["replica_nodes"]) == [1, 2, 3], (topic["name"], partition)
            assert sorted(partition["isr_nodes"]) == [1, 2, 3], (topic["name"], partition)
    admin = kafka_admin(cluster_stack)
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in topics],
                                         config_filter="all")
    finally:
        admin.close()
    for name in topics:
        assert configs["topic"][name]["min.insync.replicas"]["value"] == "2", configs["topic"][name]


def test_sensors_has_three_replicas_and_ksck_is_ok(cluster_stack):
    cfg = cluster_stack.cfg
    described = kudu_cli(cfg.kudu_home, "table", "describe", cfg.kudu_master_address, KUDU_TABLE)
    assert re.search(r"^REPLICAS 3$", described, re.M), described
    report = ksck(cluster_stack)
    assert report.rstrip().endswith("OK"), report
    assert re.search(rf"^\s*{re.escape(KUDU_TABLE)}\s*\|\s*3\s*\|\s*HEALTHY\s*\|", report, re.M), report


def test_connection_env_lists_every_broker_and_master_and_the_spark_master(cluster_stack):
    cfg = cluster_stack.cfg
    settings = read_env_file(cfg.connection_file)
    brokers = settings["KAFKA_BOOTSTRAP"].split(",")
    masters = settings["KUDU_MASTER"].split(",")
    assert brokers == [s.address for s in cluster_stack.services if s.name.startswith("kafka-")]
    assert masters == [s.address for s in cluster_stack.services if s.name.startswith("kudu-master-")]
    assert len(set(brokers)) == len(set(masters)) == 3
    assert settings["SPARK_MASTER"] == f"spark://{cfg.host}:{cfg.spark_master_port}"


def test_the_streaming_job_runs_its_executors_on_both_workers(cluster_stack):
    assert wait_until(lambda: executors_on_every_worker(cluster_stack), 60, "executors on both workers"), \
        spark_json(spark_master_url(cluster_stack))


# --- failover drills --------------------------------------------------------------------------------------------


def kafka_leading_most_partitions(drill: Drill) -> str:
    """The broker that leads the most `iot` partitions (KRaft node n is service kafka-n)."""
    [topic] = describe_topics(drill.stack, [IOT_TOPIC])
    leaders = Counter(p["leader_id"] for p in topic["partitions"])
    node, _ = leaders.most_common(1)[0]
    print(f"\nleaders of the `{IOT_TOPIC}` partitions: {dict(leaders)}")
    return drill.stack.select([f"kafka-{node}"])[0].name


def kudu_master_leader(drill: Drill) -> str:
    """The leader master, as `kudu master list` shows it (a row per master: uuid | rpc-addresses | role)."""
    cfg = drill.stack.cfg
    listing = kudu_cli(cfg.kudu_home, "master", "list", cfg.kudu_master_address)
    leaders = re.findall(r"^\s*\w+\s*\|\s*(\S+)\s*\|\s*LEADER\s*$", listing, re.M)
    assert len(leaders) == 1, listing
    return service_at(drill.stack, "kudu-master-", leaders[0])


def kudu_tserver_leading_most_tablets(drill: Drill) -> str:
    """The tablet server with the most tablet leaders (ksck's Tablet Server Summary: uuid | address | status |
    location | tablet leaders | active scanners)."""
    rows = re.findall(r"^\s*\w{32}\s*\|\s*(\S+)\s*\|\s*\w+\s*\|[^|\n]*\|\s*(\d+)\s*\|\s*\d+\s*$", ksck(drill.stack),
                      re.M)
    assert len(rows) == len(drill.stack.cfg.nodes), rows
    address, _ = max(rows, key=lambda row: int(row[1]))
    return service_at(drill.stack, "kudu-tserver-", address)


def rolling_restart_of_the_brokers(drill: Drill) -> None:
    """Each broker in turn: `down`, `up`, and wait until every partition's ISR is full again before the next."""
    for node in drill.stack.cfg.nodes:
        name, started = f"kafka-{node}", time.monotonic()
        drill.stack.down([name])
        drill.stack.up([name])
        wait_until(lambda: isr_full(drill.stack), 300, f"every partition's ISR full after restarting {name}")
        print(f"\n{name} restarted, every ISR full again, in {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def run_cluster_drill(cluster_stack, drill_runner) -> Callable:
    """`run_cluster_drill(name, fault, load=LOAD)`: a drill (tests/fixtures/drills.py) on the module's cluster,
    from a healthy cluster: every service up, every partition's ISR full, ksck OK."""
    runners: dict[Load, Callable] = {}

    def run(name: str, fault: Callable[[Drill], None], load: Load = LOAD):
        wait_until(lambda: all(row.state == "up" for row in cluster_stack.status()), 300, "every service up")
        wait_until(lambda: isr_full(cluster_stack), 300, "every partition's ISR full")
        wait_until(lambda: ksck(cluster_stack), 300, "kudu cluster ksck OK")
        if load not in runners:
            runners[load] = drill_runner(cluster_stack, load, flow_probe=True, first_id=3_000_000 + len(runners)
                                         * 100_000)
        return runners[load](name, fault)

    return run


@pytest.mark.parametrize("name, victim", [
    pytest.param("the Kafka broker leading the most partitions", kafka_leading_most_partitions, marks=quick_drill,
                 id="kafka-leader"),
    pytest.param("the Kudu tablet server leading the most tablets", kudu_tserver_leading_most_tablets, marks=drill,
                 id="kudu-tserver"),
    pytest.param("the leader Kudu master", kudu_master_leader, marks=drill, id="kudu-master-leader"),
    pytest.param("a Spark worker", "spark-worker-1", marks=quick_drill, id="spark-worker"),
])
def test_kill_9_under_load(run_cluster_drill, cluster_stack, name, victim):
    run_cluster_drill(f"cluster: kill -9 {name}", kill_9(victim))
    # The killed node is back in its role: the job has an executor on every worker again, every replica in sync.
    wait_until(lambda: executors_on_every_worker(cluster_stack), 120, "an executor on every Spark worker")
    wait_until(lambda: isr_full(cluster_stack), 120, "every partition's ISR full")


@pytest.mark.drill
@pytest.mark.timeout(1200)
def test_a_rolling_restart_of_the_brokers_under_load(run_cluster_drill, cluster_stack):
    run_cluster_drill("cluster: rolling restart of the 3 Kafka brokers", rolling_restart_of_the_brokers,
                      ROLLING_LOAD)
    assert isr_full(cluster_stack)
