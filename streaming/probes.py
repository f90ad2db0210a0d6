"""What the job asks its dependencies when its own calls cannot tell it whether they are there. The job's main loop
runs these every few seconds (never a batch), and the job's health reports what they find:

- `idle_problem`: no batch for a while. Does the model server pass its health check, and does some Kafka broker
  and some Kudu master answer at its port? An idle job must not claim `up`.
- `overdue_problem`: a write to Kudu or Kafka has had no answer for a while (`SLOW_CALL_S`). Is a node it needs gone
  (its port closed): the tablet server leading a tablet of the readings' table, or a Kafka broker? A dead node is
  what the job waits on, and its health says so at once. The clients' own timeouts can take a minute to give up: a
  write to a stopped tablet server failed only after ~63 s. A node that is merely slow (a busy machine) is not
  reported: the stuck-batch limit covers slowness.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pyspark.sql import SparkSession

from runtime.waiting import any_answers, http_ok, unanswered

SLOW_CALL_S = 20.0  # a write to Kudu or Kafka this long without an answer: check that its nodes are there
LOOKUP_TIMEOUT_MS = 5_000  # asking Kudu's masters where the tablets are


def idle_problem(args: argparse.Namespace) -> tuple[str, str] | None:
    """(dependency, what is wrong) when the model server, every Kafka broker or every Kudu master is away."""
    try:
        if not http_ok(f"{args.model_url}/health"):
            return "model", f"the model server at {args.model_url} is not healthy"
    except Exception as exc:  # noqa: BLE001 - any failure to answer is the problem
        return "model", f"the model server at {args.model_url} does not answer ({type(exc).__name__})"
    for what, servers in (("kafka", args.bootstrap_servers), ("kudu", args.kudu_master)):
        if not any_answers(servers):
            return what, f"nothing answers at {servers} ({what})"
    return None


def kudu_tablet_leaders(spark: SparkSession, masters: str, table: str) -> list[str]:
    """`host:port` of the tablet server leading each tablet of `table`, as Kudu's masters know them now (a fresh
    client each time, through the Kudu client of the driver's JVM: no cached locations)."""
    client_package = spark.sparkContext._jvm.org.apache.kudu.client
    builder = getattr(client_package, "KuduClient$KuduClientBuilder")(masters)
    client = builder.defaultAdminOperationTimeoutMs(LOOKUP_TIMEOUT_MS).defaultOperationTimeoutMs(
        LOOKUP_TIMEOUT_MS).build()
    try:
        tablets = client.openTable(table).getTabletsLocations(LOOKUP_TIMEOUT_MS)
        leaders = [tablet.getLeaderReplica() for tablet in tablets]
        return sorted({f"{leader.getRpcHost()}:{leader.getRpcPort()}" for leader in leaders if leader is not None})
    finally:
        client.close()


def kafka_brokers_gone(spark: SparkSession, args: argparse.Namespace, waiting: str) -> str | None:
    """What is wrong when a write to Kafka (`waiting`: it and how long) waits on brokers that are gone, else None."""
    gone = unanswered(args.bootstrap_servers)
    return f"{waiting}; Kafka broker(s) {', '.join(gone)} do not answer" if gone else None


def kudu_leaders_gone(spark: SparkSession, args: argparse.Namespace, waiting: str) -> str | None:
    """What is wrong when a write to Kudu waits on a tablet leader that is gone, or on masters that cannot say
    where the tablets are; else None."""
    try:
        gone = unanswered(kudu_tablet_leaders(spark, args.kudu_master, args.kudu_table))
    except Exception as exc:  # noqa: BLE001 - the masters not answering is the problem itself
        return f"{waiting}; Kudu's masters at {args.kudu_master} cannot say where its tablets are " \
               f"({type(exc).__name__})"
    return (f"{waiting}; the tablet server(s) at {', '.join(gone)}, leading tablets of {args.kudu_table}, do not "
            "answer") if gone else None


# The dependencies whose unanswered writes the probes can check, and how: the job's status watches only these.
OVERDUE_PROBES: dict[str, Callable[[SparkSession, argparse.Namespace, str], str | None]] = {
    "kafka": kafka_brokers_gone, "kudu": kudu_leaders_gone}


def overdue_problem(spark: SparkSession, args: argparse.Namespace, dependency: str, what: str, waited_s: float
                    ) -> tuple[str, str] | None:
    """(dependency, what is wrong) when the write `what`, unanswered for `waited_s`, waits on a node that is gone;
    None when every node it needs answers (the write is slow, not stuck on an outage), or no probe checks it."""
    probe = OVERDUE_PROBES.get(dependency)
    problem = probe(spark, args, f"{what}: no answer for {waited_s:.0f} s") if probe else None
    return (dependency, problem) if problem else None
