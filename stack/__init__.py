"""The local stack: real Mosquitto, Apache Kafka (KRaft), Apache Kudu and a Spark Thrift Server on 127.0.0.1.

See stack/README.md, and `python -m stack --help`.
"""
