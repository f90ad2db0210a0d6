"""The edge agent's Prometheus metrics (`--metrics-port`), read from its plain counters when scraped:

    iot_edge_readings_scored_total        readings scored with the agent's model
    iot_edge_readings_invalid_total       payloads on the readings filter that are not readings (not scored)
    iot_edge_verdicts_published_total     verdicts handed to MQTT (QoS 1) on verdicts/<sensor_id>
    iot_edge_verdicts_dropped_total       verdicts refused because the client's outgoing queue was full
    iot_edge_jobs_total{state}            model jobs ended, by final state (SUCCEEDED, FAILED)
    iot_edge_model_version                the version the agent scores with (absent before its first model)
    iot_edge_scoring_latency_seconds      from taking a reading to handing its verdict to MQTT

All carry the label agent_id. The scoring path only increments plain ints (edge.agent.Counters); nothing there
waits on metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.agent import LATENCY_BUCKETS_S, EdgeAgent
from edge.jobs import FINAL_STATES


class EdgeMetrics(Collector):
    """A prometheus_client collector over one agent's counters."""

    def __init__(self, agent: EdgeAgent):
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent, c = self.agent, self.agent.counters
        labels, values = ["agent_id"], [agent.agent_id]
        for name, text, value in (("readings_scored", "Readings scored with the agent's model.", c.scored),
                                  ("readings_invalid", "Payloads on the readings filter that are not readings.",
                                   c.invalid),
                                  ("verdicts_published", "Verdicts handed to MQTT on verdicts/<sensor_id>.",
                                   c.published),
                                  ("verdicts_dropped", "Verdicts refused: the client's outgoing queue was full.",
                                   c.dropped)):
            family = CounterMetricFamily(f"iot_edge_{name}", text, labels=labels)
            family.add_metric(values, value)
            yield family
        jobs = CounterMetricFamily("iot_edge_jobs", "Model jobs ended, by final state.", labels=[*labels, "state"])
        counts = agent.runner.counts if agent.runner else dict.fromkeys(FINAL_STATES, 0)
        for state in FINAL_STATES:
            jobs.add_metric([*values, state], counts[state])
        yield jobs
        model = agent.scorer.model
        gauge = GaugeMetricFamily("iot_edge_model_version", "The model version the agent scores with.",
                                  labels=labels)
        if model:
            gauge.add_metric(values, model.version)
        yield gauge
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), c.latency_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        histogram = HistogramMetricFamily("iot_edge_scoring_latency_seconds",
                                          "Seconds from taking a reading to handing its verdict to MQTT.",
                                          labels=labels)
        histogram.add_metric(values, buckets, c.latency_sum_s)
        yield histogram
