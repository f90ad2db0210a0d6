"""From approval to the edge, through the real CLI: `python -m model approve N` exports the version, and rolls it
out to every edge agent, which reports SUCCEEDED and scores with it; a version that is not approved can be neither
served nor rolled out. Real Mosquitto, model server and agents (tests/fixtures/edge.py); the session's MLflow store.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from model.edge_model import stored_versions
from model.registry import NotApproved, promote, register, version_record
from model.train import train
from runtime.settings import REPO_ROOT
from tests.fixtures.edge import reading

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def pending_version(edge_services) -> int:
    """A small forest, registered and not yet approved, under a version number that none of the edge fixtures'
    own artifacts (stored in the same directory as made-up versions 1, 2, 3 and 90) has."""
    run = train(5, 5)
    version = run.version
    while version in stored_versions(edge_services.onnx_dir):
        version = register(f"runs:/{run.run_id}/model")
    return version


def model_cli(edge_services, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **edge_services.settings, "MODEL_ONNX_DIR": str(edge_services.onnx_dir),
           "STACK_DIR": str(edge_services.root / "stack")}
    return subprocess.run([sys.executable, "-m", "model", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_a_version_that_is_not_approved_is_neither_served_nor_rolled_out(edge_services, pending_version, tmp_path):
    assert version_record(pending_version).status == "pending"
    with pytest.raises(NotApproved, match=f"python -m model approve {pending_version}"):
        promote(pending_version, tmp_path / "served.joblib")
    refused = model_cli(edge_services, "rollout", str(pending_version), "--agent", "edge-x", "--timeout", "5")
    assert refused.returncode != 0
    assert f"model version {pending_version} has no ONNX artifact" in refused.stderr


def test_approving_rolls_the_version_out_to_every_agent_which_scores_with_it(edge_services, pending_version,
                                                                            edge_watch, edge_agents):
    agents = ["approve-1", "approve-2", "approve-3"]
    edge_agents.start_many(agents)
    approved = model_cli(edge_services, "approve", str(pending_version), "--by", "test-operator", "--timeout", "10")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"approved model version {pending_version} as test-operator" in approved.stdout
    assert f"model v{pending_version} runs on 3 of 3 edge agent(s)" in approved.stdout
    for agent_id in agents:
        assert f"  {agent_id}: SUCCEEDED" in approved.stdout
    since = edge_watch.mark()
    edge_watch.publish("iot/4242", reading(4242))
    for agent_id in agents:
        verdict = edge_watch.wait_verdict(4242, agent_id, since=since)
        assert verdict["model_version"] == pending_version
