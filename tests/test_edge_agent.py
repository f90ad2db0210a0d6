"""Edge agents (`python -m edge`): model jobs, downloads and edge scoring.

Without services: what a job document means (`plan`, Hypothesis over any bytes and near-miss documents), the job
thread over any payload (every status it publishes follows the contract), a reading scored or refused (Hypothesis),
models that must not load, the options, the single-reading scoring latency.
Against a real Mosquitto and a real model server (tests/fixtures/edge.py), with agents as processes: a job
reaches three agents and their verdicts carry the new version; failed jobs (sha256, size, 404, 401, a model that
gets the examples wrong) leave the old model scoring; a kill -9 mid-download resumes with HTTP Range; a restart
scores at once without downloading again; a newer job replaces one in progress; a model server away for a while
is waited for; garbage on the job and readings topics never stops an agent.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from contract import (
    JOB_ID_PATTERN,
    MAX_ARTIFACT_BYTES,
    MODEL_JOB_FIELDS,
    SENSOR_TS_RANGE,
    SHA256_PATTERN,
    WORKSHOP_EXAMPLES,
    InvalidReading,
    model_job_json,
    parse_job_status,
    parse_model_job,
    parse_verdict,
)
from edge.__main__ import build_parser
from edge.jobs import Downloader, Ignore, JobRunner, Reject, Report, Run, content_range, plan
from edge.scoring import BadModel, Scorer, load_model
from edge.state import AgentState, StateError, load_state, save_state
from model.edge_model import to_onnx
from model.train import build_pipeline, held_out_split
from runtime.health import read_health
from runtime.waiting import wait_until
from tests.fixtures.edge import BAD_MODEL_VERSION, FIRST_TS, model_job, reading

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEALTHY, FAILING = 0, 1  # indexes of the workshop examples


# ---- without services

@pytest.fixture(scope="module")
def small_model():
    """A 3-tree forest's ONNX export, loaded as version 1 (fitted here: no services needed)."""
    split = held_out_split()
    onnx_bytes = to_onnx(build_pipeline(3, 4).fit(split.x_train, split.y_train))
    return load_model(1, onnx_bytes, "0" * 64)


def job_document(**changes) -> dict:
    job = {"job_id": "v2-abc", "model_version": 2, "artifact_url": "http://127.0.0.1:1/model/versions/2/onnx",
           "sha256": "a" * 64, "size_bytes": 1000, "issued_at": 1_764_150_000_000_000}
    return {**job, **changes}


def test_a_job_document_is_run_once_and_then_only_reported():
    payload = model_job_json(job_document())
    assert plan(payload, {}, None) == Run(job_document())
    assert plan(payload, {}, "v2-abc") == Ignore("job v2-abc is already in progress")
    done = {"v2-abc": {"state": "SUCCEEDED"}}
    assert plan(payload, done, None) == Report("v2-abc", {"state": "SUCCEEDED"})
    assert plan(payload, done, "v3-other") == Report("v2-abc", {"state": "SUCCEEDED"})


@pytest.mark.parametrize("payload, expected", [
    (b"", Ignore("no job: the retained job document was cleared")),
    (json.dumps(job_document(size_bytes="big")).encode(),
     Reject("v2-abc", "invalid job document: size_bytes: must be an integer, got str 'big'")),
    (json.dumps(job_document(sha256="ABC")).encode(),
     Reject("v2-abc", "invalid job document: sha256: 'ABC' must match [0-9a-f]{64}")),
    (json.dumps({k: v for k, v in job_document().items() if k != "artifact_url"}).encode(),
     Reject("v2-abc", "invalid job document: artifact_url: missing")),
    (json.dumps(job_document(job_id="no/slashes", model_version=0)).encode(),
     Ignore("invalid job document: job_id: 'no/slashes' must match [A-Za-z0-9][A-Za-z0-9._-]{0,127} (and no usable "
            "job_id to report it)", error=True)),
    (b"\xff\xfe\x00garbage", Ignore("invalid job document: not JSON: Expecting value: line 1 column 1 (char 0) "
                                    "(and no usable job_id to report it)", error=True)),
])
def test_a_bad_job_document_is_failed_naming_the_field_if_it_has_a_job_id(payload, expected):
    assert plan(payload, {}, None) == expected


# Near misses: a valid job with one field dropped or set to any JSON value.
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=10)
valid_jobs = st.fixed_dictionaries({
    "job_id": st.from_regex(JOB_ID_PATTERN, fullmatch=True), "model_version": st.integers(1, 2**31 - 1),
    "artifact_url": st.just("http://127.0.0.1:1/model/versions/1/onnx"),
    "sha256": st.from_regex(SHA256_PATTERN, fullmatch=True), "size_bytes": st.integers(1, MAX_ARTIFACT_BYTES),
    "issued_at": st.integers(*SENSOR_TS_RANGE)})


@FUZZ
@given(job=valid_jobs, name=st.sampled_from(MODEL_JOB_FIELDS), value=json_values, drop=st.booleans())
def test_a_near_miss_job_is_run_or_failed_naming_its_field(job, name, value, drop):
    document = {k: v for k, v in job.items() if k != name} if drop else {**job, name: value}
    action = plan(json.dumps(document).encode(), {}, None)
    try:
        expected = parse_model_job(json.dumps(document))
    except InvalidReading:
        expected = None
    if expected is not None:
        assert action == Run(expected)
    elif name == "job_id":
        assert isinstance(action, Ignore | Reject)
    else:
        assert isinstance(action, Reject) and action.job_id == job["job_id"]
        nested = not drop and isinstance(value, list | dict) and "nested deeper than 1 levels" in action.reason
        assert action.reason.startswith(f"invalid job document: {name}: ") or nested, action.reason


@FUZZ
@given(payload=st.binary(max_size=400) | st.text(max_size=200).map(str.encode),
       active=st.none() | st.sampled_from(["v1-a", "v2-b"]))
def test_plan_is_total_over_any_bytes(payload, active):
    action = plan(payload, {"v1-a": {"state": "SUCCEEDED"}}, active)
    assert isinstance(action, Run | Report | Reject | Ignore)
    if isinstance(action, Reject):
        assert JOB_ID_PATTERN.fullmatch(action.job_id) and action.reason.startswith("invalid job document: ")


@FUZZ
@given(payloads=st.lists(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
                         | st.builds(lambda job: json.dumps(job).encode(), valid_jobs), min_size=1, max_size=5))
def test_the_job_thread_outlives_any_payload_and_publishes_only_contract_statuses(payloads, tmp_path_factory):
    """The whole handler, thread included. Without an access key every runnable job fails before any download."""
    published: list[dict] = []
    runner = JobRunner("edge-fuzz", tmp_path_factory.mktemp("state"), AgentState(), Scorer("edge-fuzz"),
                       Downloader(access_key=None), published.append).start()
    try:
        for payload in payloads:
            runner.offer(payload)
        assert runner.wait_idle(10)
        assert runner.is_alive()
    finally:
        runner.stop()
    for status in published:
        assert parse_job_status(json.dumps(status)) == status
        if status["state"] == "FAILED":
            assert status["reason"]


def test_invalid_documents_offered_at_once_each_get_their_failed_status(tmp_path):
    """Offered before the job thread takes any (a burst on the MQTT thread): the last valid one runs, and none of the
    invalid ones goes unanswered."""
    published: list[dict] = []
    runner = JobRunner("burst", tmp_path, AgentState(), Scorer("burst"), Downloader(access_key=None), published.append)
    for job_id, field, value in (("bad-1", "model_version", "seven"), ("bad-2", "size_bytes", -1)):
        runner.offer(json.dumps(job_document(job_id=job_id, **{field: value})).encode())
    runner.start()
    try:
        assert runner.wait_idle(10)
    finally:
        runner.stop()
    failed = [(s["job_id"], s["reason"].split(":")[1].strip()) for s in published if s["state"] == "FAILED"]
    assert failed == [("bad-1", "model_version"), ("bad-2", "size_bytes")]


readings = st.fixed_dictionaries(
    {"sensor_id": st.integers(-5, 2**31 + 5), "sensor_ts": st.integers(SENSOR_TS_RANGE[0] - 1, SENSOR_TS_RANGE[1])},
    optional={f"sensor_{i}": st.integers(-200_000, 2_000_000) | st.floats() | st.text(max_size=3) for i in range(12)})


@FUZZ
@given(payload=st.binary(max_size=300) | readings.map(lambda r: json.dumps(r).encode()))
def test_a_payload_is_scored_into_a_contract_verdict_or_refused_as_not_a_reading(payload, small_model):
    scorer = Scorer("edge-fuzz")
    scorer.swap(small_model)
    try:
        topic, verdict = scorer.score(payload)
    except InvalidReading:
        return
    parsed = parse_verdict(verdict)
    assert topic == f"verdicts/{parsed['sensor_id']}" and parsed["model_version"] == 1


def test_without_a_model_a_reading_is_checked_but_not_scored(small_model):
    scorer = Scorer("edge-1")
    assert scorer.score(reading(7)) is None
    with pytest.raises(InvalidReading, match="sensor_3: must be a number"):
        scorer.score(reading(7).replace(b'"sensor_3": 137', b'"sensor_3": "fast"'))


def test_the_workshop_examples_get_their_verdicts(small_model):
    scorer = Scorer("edge-1")
    scorer.swap(small_model)
    for index, (_, expected) in enumerate(WORKSHOP_EXAMPLES):
        topic, verdict = scorer.score(reading(7, example=index))
        assert topic == "verdicts/7"
        assert parse_verdict(verdict) | {"scored_ts": 0} == {
            "sensor_id": 7, "sensor_ts": 1_764_150_000_000_000, "is_healthy": expected, "model_version": 1,
            "agent_id": "edge-1", "scored_ts": 0}


def test_single_reading_edge_scoring_latency(small_model):
    """Parse, score and serialise one reading (what the MQTT thread does per message, but the publish)."""
    scorer = Scorer("edge-1")
    scorer.swap(small_model)
    payloads = [reading(7, example=i % 2, step=i) for i in range(3000)]
    for payload in payloads[:200]:
        scorer.score(payload)
    times = []
    for payload in payloads:
        began = time.perf_counter()
        scorer.score(payload)
        times.append(time.perf_counter() - began)
    median, p99 = statistics.median(times), np.percentile(times, 99)
    print(f"\nedge scoring, one reading: median {median * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us")
    assert median < 0.002


def test_a_model_that_does_not_load_or_gets_the_examples_wrong_is_refused():
    with pytest.raises(BadModel, match="not a loadable ONNX model"):
        load_model(2, b"not onnx at all", "0" * 64)
    split = held_out_split()
    inverted = to_onnx(build_pipeline(3, 4).fit(split.x_train, 1 - split.y_train))
    with pytest.raises(BadModel, match="wrong verdicts"):
        load_model(2, inverted, "0" * 64)


def test_state_is_saved_whole_and_a_corrupt_file_is_named(tmp_path):
    assert load_state(tmp_path) == AgentState()
    state = AgentState(model_version=3, model_file="model-v3.onnx", model_sha256="b" * 64)
    for n in range(60):
        state.remember_success({"job_id": f"j{n}", "state": "SUCCEEDED"})
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded == state and list(loaded.succeeded) == [f"j{n}" for n in range(10, 60)]
    (tmp_path / "state.json").write_text("{half")
    with pytest.raises(StateError, match=r"state.json: unreadable"):
        load_state(tmp_path)


@pytest.mark.parametrize("header, expected", [("bytes 100-199/200", (100, 200)), ("bytes */200", (-1, -1)),
                                              ("", (-1, -1)), ("items 1-2/3", (-1, -1))])
def test_content_range(header, expected):
    assert content_range(header) == expected


def test_help_and_options_that_name_the_bad_value(capsys):
    result = subprocess.run([sys.executable, "-m", "edge", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--agent-id", "--state-dir", "--readings-filter", "--health-file", "--log-level",
                   "--max-download-rate", "--metrics-port", "MODEL_ACCESS_KEY"):
        assert option in result.stdout
    for argv, message in ((["--agent-id", "a/b"], "agent id 'a/b' must match"),
                          (["--readings-filter", "iot/#/x"], "'iot/#/x' is not an MQTT topic filter"),
                          (["--max-download-rate", "fast"], "'fast' is not a rate in bytes per second")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert message in capsys.readouterr().err


def test_an_agent_without_its_broker_is_degraded_says_why_and_stops_cleanly(tmp_path, free_ports):
    (port,) = free_ports(1)
    health_file = tmp_path / "health.json"
    env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(port), "STACK_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "edge", "--agent-id", "lonely-1", "--state-dir", str(tmp_path / "state"),
               "--health-file", str(health_file)]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        try:
            report = wait_until(lambda: (h := read_health(health_file)) and h.state == "degraded" and h, 20,
                                "a degraded health report")
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=20)
    assert report.waiting_on == "mqtt" and report.detail == f"cannot reach the MQTT broker 127.0.0.1:{port}; retrying"
    assert process.returncode == 0 and not health_file.exists()
    assert "WARNING edge.agent [paho-mqtt-client-edge-agent-lonely-1] cannot reach the MQTT broker" in stderr
    assert "MODEL_ACCESS_KEY is not set: this agent cannot download models" in stderr


# ---- against Mosquitto and the model server, agents as processes

def statuses_of(watch, agent_id: str, job_id: str, since: int = 0) -> list[str]:
    return [s["state"] for s in watch.statuses(agent_id, since) if s["job_id"] == job_id]


def install(watch, services, agent_id: str, artifact) -> dict:
    """Send `artifact` to the agent and wait for SUCCEEDED."""
    job = model_job(services, artifact)
    watch.send_job(agent_id, job)
    status = watch.wait_status(agent_id, job["job_id"], ("SUCCEEDED", "FAILED"))
    assert status["state"] == "SUCCEEDED", status
    return job


def verdict_of(watch, agent_id: str, sensor_id: int, example: int = HEALTHY) -> dict:
    since = watch.mark()
    watch.publish(f"iot/{sensor_id}", reading(sensor_id, example))
    return watch.wait_verdict(sensor_id, agent_id, since=since)


def test_a_job_reaches_three_agents_and_their_verdicts_carry_the_new_version(edge_services, edge_models, edge_watch,
                                                                            edge_agents, free_ports):
    watch = edge_watch
    ids = ["site-a", "site-b", "site-c"]
    (metrics_port,) = free_ports(1)
    agents = edge_agents.start_many(ids[:2]) + [edge_agents.start("site-c", "--metrics-port", str(metrics_port))]
    for agent_id in ids:
        idle = watch.wait_for(lambda m, a=agent_id: m.topic == f"jobs/{a}/status" and m.payload, 5, "IDLE").json()
        assert (idle["state"], idle["job_id"], idle["model_version"]) == ("IDLE", None, None)
    for version in (1, 2):
        job = model_job(edge_services, edge_models[version])
        since, began = watch.mark(), time.monotonic()
        for agent_id in ids:
            watch.send_job(agent_id, job)
        for agent_id in ids:
            watch.wait_status(agent_id, job["job_id"], ("SUCCEEDED",), timeout_s=10, since=since)
        print(f"\njob v{version} SUCCEEDED on 3 agents {time.monotonic() - began:.2f} s after it was sent")
        for agent_id in ids:
            assert statuses_of(watch, agent_id, job["job_id"], since) == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
        since = watch.mark()
        for index in range(len(WORKSHOP_EXAMPLES)):
            watch.publish(f"iot/{4000 + version * 10 + index}", reading(4000 + version * 10 + index, index))
        for agent_id in ids:
            for index, (_, expected) in enumerate(WORKSHOP_EXAMPLES):
                verdict = watch.wait_verdict(4000 + version * 10 + index, agent_id, since=since)
                assert parse_verdict(json.dumps(verdict)) == verdict
                assert (verdict["model_version"], verdict["is_healthy"]) == (version, expected)
    for agent in agents:
        wait_until(lambda a=agent: (h := read_health(a.health_file)) and "model v2" in h.detail, 10,
                   f"{agent.agent_id} healthy with model v2")
        assert read_health(agent.health_file).state == "up"
        assert (agent.state_dir / "model-v2.onnx").exists() and not (agent.state_dir / "model-v1.onnx").exists()
        logs = "\n".join(watch.logs(agent.agent_id)) + agent.log()
        assert "SUCCEEDED: scoring with model v2" in logs
        assert edge_services.settings["MODEL_ACCESS_KEY"] not in logs
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    samples = {(s.name, s.labels.get("state")): s.value for f in families.values() for s in f.samples}
    assert samples[("iot_edge_readings_scored_total", None)] == 4
    assert samples[("iot_edge_jobs_total", "SUCCEEDED")] == 2
    assert samples[("iot_edge_model_version", None)] == 2
    assert samples[("iot_edge_scoring_latency_seconds_count", None)] == 4


def failing_job(case: str, services, models) -> dict:
    if case == "sha256":
        return model_job(services, models[2], sha256=models[3].sha256)
    if case == "size":
        return model_job(services, models[2], size_bytes=models[2].size_bytes + 10)
    if case == "elsewhere":
        return model_job(services, models[2], artifact_url="http://127.0.0.2:9/model/versions/2/onnx")
    if case == "404":
        return model_job(services, models[2], job_id="v77-nothing", model_version=77,
                         artifact_url=services.artifact_url(77))
    return model_job(services, models[BAD_MODEL_VERSION] if case == "examples" else models[2])


@pytest.mark.parametrize("case, reason", [
    ("sha256", r"sha256 mismatch: the server's artifact has sha256 \w{64}, the job says \w{64}"),
    ("size", r"size mismatch: the server sends \S+ bytes from byte 0, the job's size_bytes \S+ needs"),
    ("404", r"model server has no artifact at http://\S+/model/versions/77/onnx \(HTTP 404: model version 77 has "
            r"no ONNX export: only approved versions have one"),
    ("examples", r"the model gives the workshop examples the wrong verdicts"),
    ("401", r"model server refused the access key \(HTTP 401\)"),
    ("elsewhere", r"artifact_url http://127.0.0.2:9/model/versions/2/onnx is not on the agent's model server "
                  r"http://127.0.0.1:\d+ \(MODEL_URL\): the access key is sent nowhere else"),
])
def test_a_failed_job_names_the_reason_and_the_previous_model_keeps_scoring(case, reason, edge_services, edge_models,
                                                                            edge_watch, edge_agents):
    watch = edge_watch
    agent = edge_agents.start(f"fail-{case}")
    install(watch, edge_services, agent.agent_id, edge_models[1])
    if case == "401":  # the same agent, restarted with a wrong key: it still scores with v1
        edge_agents.stop(agent.agent_id)
        agent.env["MODEL_ACCESS_KEY"] = "wrong-key-" + "x" * 20
        edge_agents.start(agent.agent_id)
    job = failing_job(case, edge_services, edge_models)
    watch.send_job(agent.agent_id, job)
    failed = watch.wait_status(agent.agent_id, job["job_id"], ("SUCCEEDED", "FAILED"))
    assert failed["state"] == "FAILED" and re.search(reason, failed["reason"]), failed
    assert (failed["model_version"], failed["target_version"]) == (1, job["model_version"])
    assert verdict_of(watch, agent.agent_id, 5000)["model_version"] == 1
    assert agent.part_files() == [] and agent.alive()
    assert f"job {job['job_id']} FAILED: " in "\n".join(watch.logs(agent.agent_id))
    assert "wrong-key" not in agent.log() and edge_services.settings["MODEL_ACCESS_KEY"] not in agent.log()


def ranged_requests(services, version: int) -> list[str]:
    return [line for line in services.access_log.read_text().splitlines()
            if f"/model/versions/{version}/onnx" in line and '" 206 ' in line]


def test_a_kill_9_mid_download_resumes_with_a_range_request(edge_services, edge_models, edge_watch, edge_agents):
    watch, artifact = edge_watch, edge_models[3]
    rate = 4000  # bytes per second: the 28 KB artifact takes about 7 s
    agent = edge_agents.start("resume-1", "--max-download-rate", str(rate))
    install(watch, edge_services, agent.agent_id, edge_models[1])
    job = model_job(edge_services, artifact)
    ranged_before = len(ranged_requests(edge_services, 3))
    watch.send_job(agent.agent_id, job)
    part = agent.state_dir / f"{job['job_id']}.part"
    wait_until(lambda: part.exists() and part.stat().st_size >= rate, 10, "a quarter of the download")
    agent.kill_9()
    kept = part.stat().st_size
    assert 0 < kept < artifact.size_bytes
    assert statuses_of(watch, agent.agent_id, job["job_id"])[-1] == "IN_PROGRESS"

    since = watch.mark()
    edge_agents.start(agent.agent_id)  # without the rate cap
    first = watch.wait_for(lambda m: m.topic == f"jobs/{agent.agent_id}/status", 10, "its status again", since)
    assert first.json()["state"] == "IN_PROGRESS" and first.json()["model_version"] == 1
    done = watch.wait_status(agent.agent_id, job["job_id"], ("SUCCEEDED", "FAILED"), since=since)
    assert done["state"] == "SUCCEEDED" and done["model_version"] == 3, done
    logs = "\n".join(watch.logs(agent.agent_id, since))
    resumed = re.search(rf"job {job['job_id']}: resuming the download at byte ([\d,]+) of", logs)
    assert resumed and int(resumed.group(1).replace(",", "")) >= kept, logs
    assert len(ranged_requests(edge_services, 3)) == ranged_before + 1  # the model server answered 206
    assert verdict_of(watch, agent.agent_id, 5001)["model_version"] == 3
    assert agent.part_files() == []


def test_a_restarted_agent_scores_at_once_and_does_not_download_again(edge_services, edge_models, edge_watch,
                                                                      edge_agents):
    watch = edge_watch
    agent = edge_agents.start("restart-1")
    job = install(watch, edge_services, agent.agent_id, edge_models[2])
    assert edge_agents.stop(agent.agent_id) == 0
    downloads = edge_services.access_log.read_text().count("/model/versions/2/onnx")
    since = watch.mark()
    edge_agents.start(agent.agent_id)
    assert verdict_of(watch, agent.agent_id, 5002)["model_version"] == 2
    # Its saved status at connection, then the redelivered job, re-reported without a download.
    watch.wait_for(lambda _: len(statuses_of(watch, agent.agent_id, job["job_id"], since)) == 2, 10,
                   "the redelivered job re-reported", since)
    assert statuses_of(watch, agent.agent_id, job["job_id"], since) == ["SUCCEEDED", "SUCCEEDED"]
    assert any(f"job {job['job_id']} already SUCCEEDED: reporting it again" in line
               for line in watch.logs(agent.agent_id, since))
    assert edge_services.access_log.read_text().count("/model/versions/2/onnx") == downloads


def test_a_kill_9_mid_stream_loses_no_verdict(edge_services, edge_models, edge_watch, edge_agents):
    """The agent's session outlives it and a reading is acknowledged only once its verdict is: readings published
    around a kill -9 (before, while it is down, after) all get a verdict once it is back."""
    watch = edge_watch
    agent = edge_agents.start("kill-stream-1")
    install(watch, edge_services, agent.agent_id, edge_models[2])
    machine, readings = 6001, 300
    since = watch.mark()

    def verdicts() -> set[int]:
        return {m.json()["sensor_ts"] for m in watch.messages[since:]
                if m.topic == f"verdicts/{machine}" and m.json()["agent_id"] == agent.agent_id}

    for step in range(readings // 3):
        watch.publish(f"iot/{machine}", reading(machine, step=step))
    watch.wait_for(lambda _: len(verdicts()) >= 10, 10, "the first verdicts", since)
    agent.kill_9()
    for step in range(readings // 3, 2 * readings // 3):
        watch.publish(f"iot/{machine}", reading(machine, step=step))
    edge_agents.start(agent.agent_id)
    for step in range(2 * readings // 3, readings):
        watch.publish(f"iot/{machine}", reading(machine, step=step))
    watch.wait_for(lambda _: len(verdicts()) == readings, 30, f"{readings} distinct verdicts", since)
    assert verdicts() == {FIRST_TS + step for step in range(readings)}


def test_a_newer_job_replaces_one_in_progress(edge_services, edge_models, edge_watch, edge_agents):
    watch = edge_watch
    agent = edge_agents.start("replace-1", "--max-download-rate", "4000")
    slow = model_job(edge_services, edge_models[3])
    watch.send_job(agent.agent_id, slow)
    wait_until(lambda: agent.part_files(), 10, "the slow download under way")
    newer = model_job(edge_services, edge_models[1])
    watch.send_job(agent.agent_id, newer)
    replaced = watch.wait_status(agent.agent_id, slow["job_id"], ("FAILED", "SUCCEEDED"))
    assert replaced["state"] == "FAILED" and replaced["reason"] == f"replaced by job {newer['job_id']}"
    assert watch.wait_status(agent.agent_id, newer["job_id"], ("SUCCEEDED",))["model_version"] == 1
    assert verdict_of(watch, agent.agent_id, 5003)["model_version"] == 1
    assert agent.part_files() == []


def test_a_model_server_away_for_a_while_is_waited_for(edge_services, edge_models, edge_watch, edge_agents,
                                                        free_ports):
    watch = edge_watch
    (port,) = free_ports(1)
    agent = edge_agents.start("patient-1", env={"MODEL_URL": f"http://127.0.0.1:{port}"})  # its server: not up yet
    job = model_job(edge_services, edge_models[2], artifact_url=f"http://127.0.0.1:{port}/model/versions/2/onnx")
    watch.send_job(agent.agent_id, job)
    waiting = watch.wait_for(lambda m: m.topic == f"jobs/{agent.agent_id}/status" and b"retrying" in m.payload, 10,
                             "IN_PROGRESS with the reason").json()
    assert waiting["state"] == "IN_PROGRESS"
    assert waiting["reason"].startswith("retrying: model server unreachable or too slow")
    with edge_services.another_model_server(port):
        done = watch.wait_status(agent.agent_id, job["job_id"], ("SUCCEEDED", "FAILED"), timeout_s=30)
    assert done["state"] == "SUCCEEDED", done
    assert re.search(r"retrying in [\d.]+ s \(attempt \d+\)", "\n".join(watch.logs(agent.agent_id)))


GARBAGE_JOBS = [b"", b"\x00\xff" * 50, b"[]", b"{", b"null", b'{"job_id": 5}', b"[" * 100_000,
                json.dumps(job_document(job_id="bad-1", model_version="seven")).encode(),
                json.dumps(job_document(job_id="bad-2", size_bytes=-1)).encode(), b"x" * 2_000_000]
GARBAGE_READINGS = [b"", b"\x00\xff", b"{}", b"[1, 2]", b'{"sensor_id": 1}', reading(9).replace(b"137", b"1e400"),
                    reading(9).replace(b"137", b"NaN"), b"{" * 50_000, b"y" * 200_000]


def test_garbage_on_the_job_and_readings_topics_never_stops_an_agent(edge_services, edge_models, edge_watch,
                                                                      edge_agents):
    watch = edge_watch
    agent = edge_agents.start("garbage-1")
    install(watch, edge_services, agent.agent_id, edge_models[1])
    noise = random.Random(7)
    garbage_readings = GARBAGE_READINGS + [noise.randbytes(noise.randrange(1, 400)) for _ in range(40)]
    for payload in garbage_readings:
        watch.publish(f"iot/{noise.randrange(100)}", payload)
    for payload in GARBAGE_JOBS + [noise.randbytes(noise.randrange(1, 400)) for _ in range(10)]:
        watch.publish(f"jobs/{agent.agent_id}/model", payload, retain=True)
    for job_id, field in (("bad-1", "model_version"), ("bad-2", "size_bytes")):
        failed = watch.wait_status(agent.agent_id, job_id, ("FAILED",))
        assert failed["reason"].startswith(f"invalid job document: {field}: ")
    assert verdict_of(watch, agent.agent_id, 5004)["model_version"] == 1
    install(watch, edge_services, agent.agent_id, edge_models[2])
    assert verdict_of(watch, agent.agent_id, 5005, FAILING) | {"scored_ts": 0} == {
        "sensor_id": 5005, "sensor_ts": 1_764_150_000_000_000, "is_healthy": 0, "model_version": 2,
        "agent_id": agent.agent_id, "scored_ts": 0}
    assert agent.alive()
    logs = "\n".join(watch.logs(agent.agent_id))
    assert "invalid reading on iot/" in logs and "unexpected error" not in logs
    wait_until(lambda: (h := read_health(agent.health_file)) and h.counters.get("invalid") == len(garbage_readings),
               10, "the invalid readings counted")
    assert read_health(agent.health_file).state == "up"
