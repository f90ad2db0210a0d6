"""Lab 9: the Spark Structured Streaming job that scores Kafka `iot` into Kudu `sensors` (see kafka_to_kudu.py)."""
