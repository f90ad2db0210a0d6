"""The gateway's Prometheus metrics, summed over its worker processes, served by the parent (`--metrics-port`).

    iot_gateway_received_total                        messages taken from MQTT (the gateway's own pings excluded)
    iot_gateway_produced_total                        readings Kafka acknowledged (topic `iot`)
    iot_gateway_verdicts_total{outcome}               messages on the verdicts topics (`verdicts/#`) Kafka
                                                      acknowledged: `produced` (to `iot.verdicts`) or
                                                      `dead_lettered` (also counted in dead_lettered_total)
    iot_gateway_dead_lettered_total{reason}           dead letters Kafka acknowledged (`iot.dlq`), by category
    iot_gateway_in_flight                             received, not yet acknowledged by Kafka (MQTT ack pending)
    iot_gateway_kafka_ack_latency_seconds{outcome}    from hand-over to the producer to Kafka's acknowledgement;
                                                      outcome `produced` (readings, verdicts) or `dead_lettered`
    iot_gateway_alerts_forwarded_total                alerts published on MQTT `alerts/<sensor_id>` that the broker
                                                      acknowledged (the forwarder, gateway/alerts.py)
    iot_gateway_alerts_dead_lettered_total            records of `iot.alerts` that are not alerts, dead-lettered to
                                                      `iot.dlq` and acknowledged by Kafka

`reason` is one of `bridge.DEAD_LETTER_REASONS` (a contract field of a reading or a verdict such as `sensor_5` or
`agent_id`, `extra_field`, `not_json`, `too_large`, `too_deep`, `not_an_object`, `unreadable`, `kafka_refused`,
`gateway_error`): every category, like every `outcome`, is exported from the start, at 0, so a rate over it needs
no special case for "never happened".

How the parent knows the workers' counts: each worker already sends its health report to the parent once a second
(a multiprocessing queue, see gateway/__main__.py); the report now carries `Counters.snapshot()` too, and this
collector adds up the latest snapshot of each worker when scraped. Chosen over prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR) because it reuses the one path the workers report on: no directory of memory-mapped files
to create, clean and keep per run, no environment variable that must be set before prometheus_client is first
imported, no special cases for gauges, and the same code for one worker or many. The price: a scrape sees the
workers' counts as of their last report, at most about a second old, which is far below any scrape interval.
The message path only increments plain counters (bridge.Counters); nothing there waits on metrics.
The alerts forwarder is a thread of the parent itself: `AlertMetrics` reads its counts directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.bridge import ACK_LATENCY_BUCKETS_S, DEAD_LETTER_REASONS, OUTCOMES


def sum_snapshots(snapshots: Iterable[dict]) -> dict:
    """The sum of several workers' `Counters.snapshot()`s, in the same shape (every reason and outcome present)."""
    total = {"received": 0, "produced": 0, "verdicts": dict.fromkeys(OUTCOMES, 0),
             "dead_lettered": dict.fromkeys(DEAD_LETTER_REASONS, 0),
             "ack_latency": {outcome: {"counts": [0] * (len(ACK_LATENCY_BUCKETS_S) + 1), "sum": 0.0}
                             for outcome in OUTCOMES}}
    for snapshot in snapshots:
        total["received"] += snapshot["received"]
        total["produced"] += snapshot["produced"]
        for outcome, count in snapshot["verdicts"].items():
            total["verdicts"][outcome] += count
        for reason, count in snapshot["dead_lettered"].items():
            total["dead_lettered"][reason] = total["dead_lettered"].get(reason, 0) + count
        for outcome, histogram in snapshot["ack_latency"].items():
            into = total["ack_latency"][outcome]
            into["counts"] = [a + b for a, b in zip(into["counts"], histogram["counts"], strict=True)]
            into["sum"] += histogram["sum"]
    return total


class GatewayMetrics(Collector):
    """A prometheus_client collector of the gateway's metrics: the sum of the snapshots `snapshots()` returns."""

    def __init__(self, snapshots: Callable[[], Iterable[dict]]):
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        total = sum_snapshots(self.snapshots())
        dead_lettered = sum(total["dead_lettered"].values())
        yield CounterMetricFamily("iot_gateway_received", "Messages taken from MQTT.", value=total["received"])
        yield CounterMetricFamily("iot_gateway_produced", "Readings Kafka acknowledged (topic iot by default).",
                                  value=total["produced"])
        family = CounterMetricFamily("iot_gateway_dead_lettered",
                                     "Dead letters Kafka acknowledged (topic iot.dlq by default), by reason category.",
                                     labels=["reason"])
        for reason, count in sorted(total["dead_lettered"].items()):
            family.add_metric([reason], count)
        yield family
        family = CounterMetricFamily("iot_gateway_verdicts",
                                     "Messages on the verdicts topics Kafka acknowledged: produced (topic iot.verdicts "
                                     "by default) or dead_lettered.", labels=["outcome"])
        for outcome in OUTCOMES:
            family.add_metric([outcome], total["verdicts"][outcome])
        yield family
        yield GaugeMetricFamily("iot_gateway_in_flight",
                                "Messages received and not yet acknowledged by Kafka (their MQTT ack is pending).",
                                value=total["received"] - total["produced"] - total["verdicts"]["produced"]
                                - dead_lettered)
        family = HistogramMetricFamily("iot_gateway_kafka_ack_latency_seconds",
                                       "Seconds from handing a record to the Kafka producer to Kafka's "
                                       "acknowledgement; outcome produced (readings, verdicts) or dead_lettered.",
                                       labels=["outcome"])
        for outcome in OUTCOMES:
            histogram = total["ack_latency"][outcome]
            cumulative, buckets = 0, []
            for bound, count in zip((*ACK_LATENCY_BUCKETS_S, float("inf")), histogram["counts"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([outcome], buckets, histogram["sum"])
        yield family


class AlertMetrics(Collector):
    """A prometheus_client collector of the alerts forwarder's counts (`AlertForwarder.counts`)."""

    def __init__(self, counts: Callable[[], dict[str, int]]):
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        yield CounterMetricFamily("iot_gateway_alerts_forwarded",
                                  "Alerts the MQTT broker acknowledged (published retained on alerts/<sensor_id>).",
                                  value=counts["forwarded"])
        yield CounterMetricFamily("iot_gateway_alerts_dead_lettered",
                                  "Records of the alerts topic that are not alerts, dead-lettered (topic iot.dlq by "
                                  "default) and acknowledged by Kafka.", value=counts["dead_lettered"])
