"""The names every part agrees on: Kafka topics and the SQL table (one place; the contract has the fields)."""

IOT_TOPIC = "iot"
DEAD_LETTER_TOPIC = "iot.dlq"
SQL_TABLE = "sensors"
