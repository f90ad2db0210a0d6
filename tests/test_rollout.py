"""model/rollout.py, the operator's side of the edge: the fleet from the agents' retained statuses, jobs sent to
agents, canary rollouts that stop at a failing canary, and rollback to the previous version.

Against a real Mosquitto and a real model server with agents as processes (tests/fixtures/edge.py); the choice of
the version to roll back to also without services.
"""

from __future__ import annotations

import logging

import pytest

from contract import parse_model_job
from model.edge_model import store_artifact, stored_versions
from model.rollout import (
    NOT_SENT,
    RolloutError,
    fleet,
    previous_version,
    rollback,
    rollout,
    send_job,
    wait_for,
)
from runtime.mqtt import retained_messages
from tests.fixtures.edge import reading


@pytest.fixture()
def artifacts_here(edge_services, edge_models, monkeypatch):
    """The rollout finds the fixture's artifacts (MODEL_ONNX_DIR) as `python -m model` would."""
    monkeypatch.setenv("MODEL_ONNX_DIR", str(edge_services.onnx_dir))
    return edge_models


@pytest.mark.parametrize("running, versions, expected", [
    ([3, 1, None], [1, 2, 3, 90], (3, 2)),
    ([2, 2], [1, 2, 3], (2, 1)),
    ([5], [1, 3, 5, 7], (5, 3)),
])
def test_the_previous_version_is_the_newest_with_an_artifact_older_than_the_fleets(running, versions, expected):
    statuses = {f"a{n}": {"model_version": version} for n, version in enumerate(running)}
    assert previous_version(statuses, versions) == expected


@pytest.mark.parametrize("running, versions, message", [
    ([None, None], [1, 2], "no edge agent runs a model: there is nothing to roll back"),
    ([1], [1, 2], "no version older than v1 has an ONNX artifact: there is nothing to roll back to"),
])
def test_nothing_to_roll_back_says_why(running, versions, message):
    with pytest.raises(RolloutError, match=message):
        previous_version({f"a{n}": {"model_version": v} for n, v in enumerate(running)}, versions)


def test_stored_versions_are_those_with_a_whole_artifact(edge_models, tmp_path):
    for version, artifact in edge_models.items():
        store_artifact(version, artifact.path.read_bytes(), artifact.meta, tmp_path)
    (tmp_path / "v7.onnx").write_bytes(b"a model whose metadata was never written")
    (tmp_path / "v8.json").write_text('{"sha256": "0", "size_bytes": 1}')  # metadata of a model that is gone
    (tmp_path / "vx.json").write_text("{}")
    assert stored_versions(tmp_path) == sorted(edge_models)


def test_the_fleet_is_every_agent_with_a_status_and_garbage_is_skipped(edge_services, edge_watch, edge_agents,
                                                                       caplog):
    edge_agents.start_many(["fleet-a", "fleet-b"])
    edge_watch.publish("jobs/fleet-bogus/status", b"\x00 not a status", retain=True)
    edge_watch.publish("jobs/fleet-liar/status", b'{"agent_id": "fleet-a", "job_id": null, "state": "IDLE", '
                       b'"model_version": null, "target_version": null, "reason": "", "ts": 1764150000000000}',
                       retain=True)
    try:
        with caplog.at_level(logging.WARNING, logger="model.rollout"):
            agents = fleet(edge_services.settings)
    finally:
        for topic in ("jobs/fleet-bogus/status", "jobs/fleet-liar/status"):
            edge_watch.publish(topic, b"", retain=True)
    assert list(agents) == ["fleet-a", "fleet-b"]
    assert all(status["state"] == "IDLE" and status["agent_id"] == agent for agent, status in agents.items())
    assert "skipping the status on jobs/fleet-bogus/status: not JSON" in caplog.text
    assert "skipping the status on jobs/fleet-liar/status: it is agent 'fleet-a''s" in caplog.text


def test_a_version_without_an_artifact_is_not_sent(edge_services, artifacts_here):
    with pytest.raises(RolloutError, match="model version 42 has no ONNX artifact in .*: only approved versions with "
                                           r"acceptable ONNX parity are rolled out \(python -m model approve 42\)"):
        send_job(edge_services.settings, ["nobody"], 42)
    with pytest.raises(RolloutError, match="agent id 'a/#' must match"):
        send_job(edge_services.settings, ["a/#"], 1)


def test_a_job_is_retained_for_each_agent_and_waited_for(edge_services, artifacts_here, edge_agents):
    edge_agents.start("send-a")
    try:
        job_id = send_job(edge_services.settings, ["send-a", "send-away"], 1)  # send-away: no such agent runs
        retained = retained_messages(edge_services.settings, "jobs/+/model")
        for agent_id in ("send-a", "send-away"):
            job = parse_model_job(retained[f"jobs/{agent_id}/model"])
            assert job["job_id"] == job_id and job["model_version"] == 1
            assert job["artifact_url"] == edge_services.artifact_url(1)
            assert (job["sha256"], job["size_bytes"]) == (artifacts_here[1].sha256, artifacts_here[1].size_bytes)
        answers = wait_for(edge_services.settings, ["send-a", "send-away"], job_id, timeout_s=3)
    finally:
        edge_agents.watch.publish("jobs/send-away/model", b"", retain=True)
    assert answers["send-a"]["state"] == "SUCCEEDED" and answers["send-away"] is None


def test_a_canary_rollout_sends_to_the_first_agents_then_to_the_rest(edge_services, artifacts_here, edge_watch,
                                                                     edge_agents):
    edge_agents.start_many(["canary-1", "canary-2", "canary-3"])
    since = edge_watch.mark()
    lines: list[str] = []
    summary = rollout(edge_services.settings, 2, canary=1, timeout_s=20, progress=lines.append)
    assert summary.ok and summary.waves == [["canary-1"], ["canary-2", "canary-3"]]
    assert summary.states == dict.fromkeys(["canary-1", "canary-2", "canary-3"], "SUCCEEDED")
    order = [(m.topic, m.json()["state"] if m.topic.endswith("/status") else None)
             for m in edge_watch.messages[since:] if m.topic.startswith("jobs/canary-")]
    canary_done = order.index(("jobs/canary-1/status", "SUCCEEDED"))
    assert order.index(("jobs/canary-1/model", None)) < canary_done
    assert order.index(("jobs/canary-2/model", None)) > canary_done
    assert order.index(("jobs/canary-3/model", None)) > canary_done
    assert lines[0] == f"canary: job {summary.job_id} (model v2) to canary-1"
    assert lines[2] == f"rollout: job {summary.job_id} (model v2) to canary-2, canary-3"
    assert all(status["model_version"] == 2 for status in fleet(edge_services.settings).values())


def test_a_failing_canary_stops_the_rollout(edge_services, artifacts_here, edge_watch, edge_agents):
    edge_agents.start("gate-1", env={"MODEL_ACCESS_KEY": "wrong-key-" + "x" * 20})
    edge_agents.start("gate-2")
    lines: list[str] = []
    summary = rollout(edge_services.settings, 1, canary=1, timeout_s=20, progress=lines.append)
    assert not summary.ok and summary.states == {"gate-1": "FAILED", "gate-2": NOT_SENT}
    assert "HTTP 401" in summary.statuses["gate-1"]["reason"]
    assert lines[-1] == "canary did not succeed everywhere: not sent to gate-2"
    assert "jobs/gate-2/model" not in retained_messages(edge_services.settings, "jobs/+/model")
    assert summary.lines()[0].startswith("gate-1: FAILED: model server refused the access key (HTTP 401)")


def test_rollback_installs_the_previous_version_everywhere(edge_services, artifacts_here, edge_watch, edge_agents):
    edge_agents.start_many(["back-1", "back-2"])
    assert rollout(edge_services.settings, 3, timeout_s=20, progress=lambda _: None).ok
    lines: list[str] = []
    summary = rollback(edge_services.settings, timeout_s=20, progress=lines.append)
    assert lines[0] == "rollback: the fleet runs up to v3; rolling back to v2"
    assert summary.ok and summary.version == 2
    assert {agent: status["model_version"] for agent, status in fleet(edge_services.settings).items()} == {
        "back-1": 2, "back-2": 2}
    since = edge_watch.mark()
    edge_watch.publish("iot/6001", reading(6001))
    for agent_id in ("back-1", "back-2"):
        assert edge_watch.wait_verdict(6001, agent_id, since=since)["model_version"] == 2
