"""The streaming job without Spark running: its options and launcher (every option is checked before Spark
starts), and the model versions its scoring keeps."""

from __future__ import annotations

import ast
import json
import re
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import streaming.__main__ as launcher
import streaming.scoring
from model.client import ModelUnavailable, RowsRefused, Scored, post_with_retries, score_or_refuse
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, KUDU_TABLE
from runtime.spark import connector_packages
from streaming.options import DESCRIPTION, REQUIRED_SETTINGS, kafka_options, parse_args
from streaming.scoring import check_and_score

JOB = Path(launcher.__file__).resolve().parent / "kafka_to_kudu.py"


def job_docstring() -> str:
    return ast.get_docstring(ast.parse(JOB.read_text()), clean=False)


SETTINGS = {"KAFKA_BOOTSTRAP": "127.0.0.1:9092", "KUDU_MASTER": "127.0.0.1:7051", "MODEL_URL": "http://127.0.0.1:8000"}


def refusal(capsys, argv: list[str], env: dict[str, str] | None = None) -> str:
    """The argparse error for `argv` (which must be refused with exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, env={**SETTINGS, **(env or {})})
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_the_docstrings_spark_submit_names_the_pinned_connectors():
    (packages,) = re.findall(r"--packages (\S+)", job_docstring())
    assert packages.split(",") == connector_packages()
    assert "<" not in job_docstring().split("\n\n")[1], "no placeholder in the usage"


def test_the_help_describes_the_job_with_its_docstrings_first_line():
    assert job_docstring().split("\n\n")[0] == DESCRIPTION


def test_kafka_options_reach_spark_prefixed_for_the_source_and_the_sink():
    args = parse_args(["--bootstrap-servers", "broker:9093", "--kafka-option", "security.protocol=SASL_SSL",
                       "--kafka-option", "sasl.jaas.config=a=b c=d", "--kafka-option",
                       "ssl.endpoint.identification.algorithm="], env=SETTINGS)
    assert kafka_options(args) == {"kafka.bootstrap.servers": "broker:9093",
                                   "kafka.security.protocol": "SASL_SSL",
                                   "kafka.sasl.jaas.config": "a=b c=d",
                                   "kafka.ssl.endpoint.identification.algorithm": ""}


def test_the_defaults_and_good_values_pass():
    args = parse_args([], env=SETTINGS)
    assert (args.bootstrap_servers, args.kudu_master, args.model_url) == (
        "127.0.0.1:9092", "127.0.0.1:7051", "http://127.0.0.1:8000")
    assert (args.topic, args.dead_letter_topic, args.kudu_table) == (IOT_TOPIC, DEAD_LETTER_TOPIC, KUDU_TABLE)
    args = parse_args(["--bootstrap-servers", "k1:9092, k2:9093,[::1]:9094", "--model-url", "https://m.example/api/",
                       "--trigger-seconds", "0.5", "--max-offsets-per-trigger", "1", "--topic", "iot.pbench_x-1",
                       "--restart-delay-seconds", "2", "--max-backoff-seconds", "2"], env=SETTINGS)
    assert args.model_url == "https://m.example/api" and args.trigger_seconds == 0.5


@pytest.mark.parametrize(("option", "variable"), REQUIRED_SETTINGS)
def test_where_the_services_are_is_never_guessed(capsys, option, variable):
    """No built-in address: a missing setting is an error that says how to give it."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args([], env={name: value for name, value in SETTINGS.items() if name != variable})
    assert exit_info.value.code == 2
    assert f"argument {option}: not given, and {variable} is not set" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["--kafka-option", "security.protocol"],
     "argument --kafka-option: 'security.protocol' is not KEY=VALUE"),
    (["--kafka-option", "=x"], "argument --kafka-option: '=x' is not KEY=VALUE"),
    (["--kafka-option", " acks=1"], "argument --kafka-option: ' acks=1' is not KEY=VALUE"),
    (["--kafka-option", "bootstrap.servers=b:1"], "bootstrap.servers cannot be set: use --bootstrap-servers"),
    (["--kafka-option", "auto.offset.reset=latest"], "'auto.offset.reset=latest': auto.offset.reset cannot be set"),
    (["--kafka-option", "a.b=1", "--kafka-option", "A.B=2"], "argument --kafka-option: a.b given more than once"),
    (["--topic", ""], "argument --topic: '' is not a Kafka topic name"),
    (["--topic", "a,b"], "argument --topic: 'a,b' is not a Kafka topic name"),
    (["--dead-letter-topic", ".."], "argument --dead-letter-topic: '..' is not a Kafka topic name"),
    (["--topic", "x", "--dead-letter-topic", "x"], "argument --dead-letter-topic: 'x' is the topic the job reads"),
    (["--bootstrap-servers", ""], "argument --bootstrap-servers: '': '' is not host:port"),
    (["--bootstrap-servers", "k1:9092,k2"], "argument --bootstrap-servers: 'k1:9092,k2': 'k2' is not host:port"),
    (["--bootstrap-servers", "k1:9092,"], "argument --bootstrap-servers: 'k1:9092,': '' is not host:port"),
    (["--kudu-master", "kudu:70510"], "argument --kudu-master: 'kudu:70510': 'kudu:70510' is not host:port"),
    (["--model-url", "127.0.0.1:8000"], "argument --model-url: '127.0.0.1:8000' is not an http(s)://host[:port]"),
    (["--model-url", "http://:8000"], "argument --model-url: 'http://:8000' is not an http(s)://host[:port]"),
    (["--model-url", "http://m:99999"], "argument --model-url: 'http://m:99999' is not an http(s)://host[:port]"),
    (["--kudu-table", ""], "argument --kudu-table: '': the Kudu table must be non-empty"),
    (["--checkpoint", " "], "argument --checkpoint: ' ': the checkpoint must be non-empty"),
    (["--health-file", ""], "argument --health-file: '': the health file must be non-empty"),
    (["--scoring", "fast"], "argument --scoring: invalid choice: 'fast'"),
    (["--trigger-seconds", "0"], "argument --trigger-seconds: '0' is out of range: between 0.001 and 86400"),
    (["--trigger-seconds", "nan"], "argument --trigger-seconds: 'nan' is out of range"),
    (["--trigger-seconds", "1s"], "argument --trigger-seconds: '1s' is not a number"),
    (["--max-offsets-per-trigger", "0"], "argument --max-offsets-per-trigger: '0' is out of range: at least 1"),
    (["--max-offsets-per-trigger", "1.5"], "argument --max-offsets-per-trigger: '1.5' is not an integer"),
    (["--max-payload-bytes", "-1"], "argument --max-payload-bytes: '-1' is out of range: at least 1"),
    (["--max-nesting", "0"], "argument --max-nesting: '0' is out of range: at least 1"),
    (["--restart-delay-seconds", "inf"], "argument --restart-delay-seconds: 'inf' is out of range"),
    (["--max-backoff-seconds", "0"], "argument --max-backoff-seconds: '0' is out of range"),
    (["--restart-delay-seconds", "10", "--max-backoff-seconds", "5"],
     "argument --max-backoff-seconds: 5 is less than --restart-delay-seconds 10"),
    (["--stuck-batch-seconds", "0"], "argument --stuck-batch-seconds: '0' is out of range"),
    (["--alert-needed", "2", "--alert-window", "4"], "argument --alert-needed: 2 of --alert-window 4: k must be more"),
    (["--alert-needed", "6"], "argument --alert-needed: 6 of --alert-window 5"),
    (["--alert-window", "0"], "argument --alert-window: '0' is out of range"),
    (["--alerts-topic", "iot.scored"], "the topics must differ: --topic iot, --dead-letter-topic iot.dlq, "
     "--scored-topic iot.scored, --alerts-topic iot.scored, --verdicts-topic iot.verdicts"),
    (["--metrics-port", "65536"], "argument --metrics-port: '65536'"),
])
def test_a_wrong_option_is_refused_by_name_and_value(capsys, argv, says):
    assert says in refusal(capsys, argv)


@pytest.mark.parametrize(("variable", "value", "option"), [
    ("KAFKA_BOOTSTRAP", "kafka", "--bootstrap-servers"),
    ("KUDU_MASTER", "kudu:port", "--kudu-master"),
    ("MODEL_URL", "model:8000", "--model-url"),
    ("STREAMING_CHECKPOINT", "", "--checkpoint"),
    ("STREAMING_METRICS_PORT", "http", "--metrics-port"),
])
def test_a_wrong_default_from_the_environment_is_refused_too(capsys, variable, value, option):
    assert f"argument {option}: {value!r}" in refusal(capsys, [], env={variable: value})


def test_the_launcher_refuses_a_wrong_option_before_spark_submit_starts(monkeypatch, capsys):
    monkeypatch.setattr(launcher.os, "execve", lambda *args: pytest.fail(f"spark-submit started: {args}"))
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(["--kafka-option", "security.protocol"])
    assert exit_info.value.code == 2
    assert "--kafka-option: 'security.protocol' is not KEY=VALUE" in capsys.readouterr().err


def test_the_launcher_passes_good_options_through_to_the_job(monkeypatch, capsys):
    started = []
    monkeypatch.setattr(launcher, "connection_settings", lambda: dict.fromkeys(launcher.SETTINGS, "x:1"))
    monkeypatch.setattr(launcher.os, "execve", lambda path, command, env: started.append(command))
    monkeypatch.setenv("MODEL_URL", "http://m:8000")
    with pytest.raises(SystemExit) as exit_info:  # the settings' MODEL_URL x:1 is not a URL
        launcher.main(["--topic", "t"])
    assert "argument --model-url: 'x:1'" in capsys.readouterr().err and exit_info.value.code == 2
    monkeypatch.setattr(launcher, "connection_settings",
                        lambda: {**dict.fromkeys(launcher.SETTINGS, "x:1"), "MODEL_URL": "http://m:8000"})
    launcher.main(["--topic", "t", "--kafka-option", "security.protocol=SSL"])
    (command,) = started
    assert command[-5:] == [str(JOB), "--topic", "t", "--kafka-option", "security.protocol=SSL"]
    assert command[command.index("--packages") + 1].split(",") == connector_packages()


def test_a_model_outage_is_told_by_name_through_sparks_wrapping():
    from streaming.kafka_to_kudu import dependency_of, first_line

    class Refusing:
        def post(self, url, **_request):
            return type("Response", (), {"status_code": 401, "text": "wrong key"})()

    with pytest.raises(ModelUnavailable) as caught:
        post_with_retries(Refusing(), "http://m:8000/predict/batch", attempts=3, timeout_s=1)
    # What a Python worker's failure looks like on the driver: Spark's text around the worker's traceback.
    wrapped = RuntimeError("org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
                           + "".join(traceback.format_exception(caught.value)))
    assert dependency_of(wrapped, "score") == "model"
    assert first_line(wrapped).startswith("model.client.ModelUnavailable: model server http://m:8000/predict/batch "
                                          "failed 3 time(s); last: HTTP 401: wrong key")


class SwappingServer:
    """A scorer (as model.client's SCORERS) whose server promotes a new model after each call, and refuses rows
    whose sensor_0 is 99 (HTTP 400)."""

    def __init__(self):
        self.version = 0

    def __call__(self, rows: np.ndarray, **_call) -> Scored:
        self.version += 1
        if (rows[:, 0] == 99).any():
            raise RowsRefused("HTTP 400: sensor_0 is 99")
        return Scored.by_one_model(np.ones(len(rows), dtype=np.int8), self.version)


def test_each_row_keeps_the_version_of_the_call_that_scored_it_across_model_swaps():
    features = np.zeros((4, 12))
    features[2, 0] = 99
    scored, refused = score_or_refuse(SwappingServer(), features)
    # call 1: all four, refused; 2: rows 2-3, refused; 3: row 3; 4: row 2, refused alone; 5: rows 0-1
    assert scored.verdicts.tolist() == [1, 1, -1, 1]
    assert scored.model_versions.tolist() == [5, 5, -1, 3]
    assert list(refused) == [2]
    with pytest.raises(ValueError, match=r"model versions \[-1, 3, 5\], not from one"):
        _ = scored.model_version


def test_the_jobs_scored_rows_carry_their_model_version(monkeypatch):
    monkeypatch.setitem(streaming.scoring.SCORERS, "batch", SwappingServer())
    reading = {"sensor_id": 7, "sensor_ts": 1_700_000_000_000_000, **{f"sensor_{i}": 1.0 for i in range(12)}}
    values = [json.dumps({**reading, "sensor_ts": reading["sensor_ts"] + i}).encode() for i in range(3)]
    first, second = (pd.DataFrame({"value": values[i:j], "partition": 0, "offset": range(i, j)})
                     for i, j in ((0, 2), (2, 3)))
    frames = list(check_and_score(iter([first, second]), "http://m:8000", "key"))
    assert [frame["model_version"].tolist() for frame in frames] == [[1, 1], [2]]
