"""The streaming job's options, without Spark running."""

from __future__ import annotations

import pytest

from streaming.kafka_to_kudu import kafka_options, parse_args


def test_kafka_options_reach_spark_prefixed_for_the_source_and_the_sink():
    args = parse_args(["--bootstrap-servers", "broker:9093", "--kafka-option", "security.protocol=SASL_SSL",
                       "--kafka-option", "sasl.jaas.config=a=b c=d"])
    assert kafka_options(args) == {"kafka.bootstrap.servers": "broker:9093",
                                   "kafka.security.protocol": "SASL_SSL",
                                   "kafka.sasl.jaas.config": "a=b c=d"}


def test_a_kafka_option_without_a_value_is_refused_by_name():
    with pytest.raises(SystemExit, match="--kafka-option 'security.protocol' is not KEY=VALUE"):
        kafka_options(parse_args(["--kafka-option", "security.protocol"]))
