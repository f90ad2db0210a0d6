"""Issue 16: every run registered pending in the MLflow Model Registry; only approved versions served, centrally and
(through their ONNX export) at the edge; `python -m model versions|approve|reject|promote`."""

from __future__ import annotations

import getpass
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

import model.__main__ as model_cli
from contract import WORKSHOP_EXAMPLES
from model import experiments
from model import train as train_cli
from model.approval import approve, reject
from model.edge_model import find_artifact, onnx_scores, onnx_session, sha256_of
from model.registry import (
    APPROVED,
    PENDING,
    REGISTERED_MODEL,
    REJECTED,
    NotApproved,
    best_approved_version,
    list_versions,
    load_served_model,
    promote,
    version_record,
)
from model.server import create_app
from model.train import train
from runtime.settings import CONNECTION_VARIABLES
from tests.fixtures.model_server import AUTH, KEY


def small() -> int:
    """A quick run (5 trees, depth 5), registered pending; its version."""
    return train(5, 5).version


def recent(iso: str) -> bool:
    return timedelta(0) <= datetime.now(UTC) - datetime.fromisoformat(iso) < timedelta(minutes=5)


def test_training_registers_each_run_as_a_new_pending_version():
    first, second = train(5, 5), train(5, 4)
    assert second.version > first.version
    record = version_record(first.version)
    assert (record.run_id, record.status) == (first.run_id, PENDING)
    assert (record.params["num_trees"], record.params["max_depth"]) == ("5", "5")
    assert record.metrics["auroc"] == pytest.approx(first.auroc, abs=1e-6)
    assert (record.approved_by, record.rejected_by, record.onnx) == ("", "", {})


def test_a_pending_or_rejected_version_is_not_served(tmp_path):
    version, path = small(), tmp_path / "iot_model.joblib"
    with pytest.raises(NotApproved, match=rf"version {version} is pending, not approved.*python -m model approve "
                                          rf"{version}"):
        promote(version, path)
    reject(version, by="bob", reason="too shallow", path=path)
    with pytest.raises(PermissionError, match=rf"rejected by bob at .* \(too shallow\).*python -m model approve "
                                              rf"{version}"):
        promote(version, path)
    assert not path.exists()


def test_approval_records_who_and_when_and_stores_the_onnx_export(tmp_path):
    version, path = small(), tmp_path / "iot_model.joblib"
    approval = approve(version, by="alice", path=path)
    record = version_record(version)
    assert (record.status, record.approved_by, record.approved_at) == (APPROVED, "alice", approval.approved_at)
    assert recent(record.approved_at)
    assert record.onnx["parity"] == "ok" and record.onnx["examples_agree"] == "true"
    assert int(record.onnx["rows"]) == approval.parity.rows == 50_000
    assert float(record.onnx["share_differing"]) == pytest.approx(approval.parity.share_differing, abs=1e-6)

    artifact = find_artifact(version, tmp_path / "onnx")
    assert artifact is not None and artifact.path == approval.artifact.path == tmp_path / "onnx" / f"v{version}.onnx"
    assert sha256_of(artifact.path) == artifact.sha256 == hashlib.sha256(artifact.path.read_bytes()).hexdigest()
    assert artifact.meta["run_id"] == record.run_id and artifact.meta["approved_by"] == "alice"
    assert artifact.meta["parity"]["verdicts_differing"] == approval.parity.verdicts_differing
    assert f"GET /model/versions/{version}/onnx" in approval.summary()

    info = promote(version, path)
    assert (info.version, info.run_id, info.approved_by, info.approved_at) == (version, record.run_id, "alice",
                                                                               record.approved_at)
    assert load_served_model(path)[1] == info


def test_the_served_versions_onnx_export_scores_the_workshop_examples(served_model_file, workshop_run):
    record = version_record(workshop_run.version)
    assert record.approved_by == getpass.getuser()  # the fixture approved it without naming anyone
    artifact = find_artifact(workshop_run.version, served_model_file.parent / "onnx")
    assert artifact is not None and sha256_of(artifact.path) == artifact.sha256
    rows = np.array([features for features, _ in WORKSHOP_EXAMPLES], dtype=np.float64)
    verdicts, _ = onnx_scores(onnx_session(artifact.path.read_bytes()), rows)
    assert verdicts.tolist() == [verdict for _, verdict in WORKSHOP_EXAMPLES]


def test_rejection_withdraws_the_export_and_a_new_approval_restores_it(served_model_file, tmp_path):
    version, path = small(), tmp_path / "iot_model.joblib"
    approve(version, by="alice", path=path)
    client = create_app({"MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(served_model_file),
                         "MODEL_ONNX_DIR": str(tmp_path / "onnx")}).test_client()
    route = f"/model/versions/{version}/onnx"
    served = client.get(route, headers=AUTH)
    assert served.status_code == 200
    assert hashlib.sha256(served.data).hexdigest() == served.headers["X-Content-SHA256"]
    assert client.get(route).status_code == 401

    rejection = reject(version, by="bob", reason="drifts", path=path)
    assert (rejection.previous_status, rejection.removed_artifact, rejection.still_served) == (APPROVED, True, False)
    gone = client.get(route, headers=AUTH)
    assert gone.status_code == 404 and f"python -m model approve {version}" in gone.json["error"]
    assert client.get(route).status_code == 401
    record = version_record(version)
    assert (record.status, record.rejected_by, record.rejected_reason) == (REJECTED, "bob", "drifts")
    assert record.approved_by == "alice" and recent(record.rejected_at)  # the earlier decision stays on record

    again = approve(version, by="carol", path=path)  # the latest decision stands
    assert version_record(version).status == APPROVED
    assert client.get(route, headers=AUTH).headers["X-Content-SHA256"] == again.artifact.sha256


def test_rejecting_the_served_version_says_it_is_still_served(tmp_path):
    version, path = small(), tmp_path / "iot_model.joblib"
    approve(version, path=path)
    promote(version, path)
    rejection = reject(version, path=path)
    assert rejection.still_served and rejection.rejected_by == getpass.getuser()
    assert "still the served model" in rejection.summary()


def test_a_version_that_cannot_be_exported_is_approved_for_central_serving_only(tmp_path):
    def unexportable(num_trees: int, max_depth: int, seed: int) -> Pipeline:
        """skl2onnx converts no FunctionTransformer with a function."""
        forest = RandomForestClassifier(n_estimators=num_trees, max_depth=max_depth, random_state=seed)
        return Pipeline([("abs", FunctionTransformer(np.abs)), ("forest", forest)])

    version, path = train(3, 3, build=unexportable).version, tmp_path / "iot_model.joblib"
    approval = approve(version, path=path)
    assert approval.parity is None and approval.artifact is None and "FunctionTransformer" in approval.export_error
    assert "approved for central serving only" in approval.summary()
    record = version_record(version)
    assert (record.status, record.onnx["parity"]) == (APPROVED, "failed") and "FunctionTransformer" in record.onnx[
        "error"]
    assert find_artifact(version, tmp_path / "onnx") is None
    assert promote(version, path).version == version


def test_unknown_versions_are_a_lookup_error_saying_how_to_list_them(tmp_path):
    unknown = max((r.version for r in list_versions()), default=0) + 1000
    for act in (version_record, lambda v: approve(v, path=tmp_path / "m"), lambda v: reject(v, path=tmp_path / "m"),
                lambda v: promote(v, tmp_path / "m")):
        with pytest.raises(LookupError, match=rf"model version {unknown} of '{REGISTERED_MODEL}' does not exist.*"
                                              r"python -m model versions"):
            act(unknown)
    with pytest.raises(ValueError, match="0 is not a model version number"):
        version_record(0)


def test_the_best_approved_version_ignores_pending_ones(tmp_path):
    approved = small()
    approve(approved, path=tmp_path / "iot_model.joblib")
    pending = small()  # the same figures as the approved one, newer: it would win a tie
    best = version_record(best_approved_version())
    assert best.status == APPROVED and best.version != pending
    assert best.metrics["auroc"] == max(r.metrics["auroc"] for r in list_versions() if r.status == APPROVED)


def test_cli_lists_approves_and_rejects_versions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "iot_model.joblib"))
    monkeypatch.delenv("MODEL_ONNX_DIR", raising=False)
    # No connection settings: a stack running on this machine (its .stack/connection.env) must not get a rollout
    # (one did: its edge agent was sent this test's version, and failed to fetch it).
    monkeypatch.setenv("STACK_DIR", str(tmp_path))
    for name in CONNECTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    pending, approved, rejected = small(), small(), small()
    model_cli.main(["approve", str(approved), "--by", "alice"])
    said = capsys.readouterr().out
    assert f"approved model version {approved} as alice" in said and "ONNX parity ok" in said
    assert "no MQTT_HOST known (.stack/connection.env): no rollout to the edge" in said
    assert f"edge artifact stored: {tmp_path / 'onnx' / f'v{approved}.onnx'}" in said
    model_cli.main(["reject", str(rejected), "--by", "bob", "--reason", "overfits"])
    assert f"rejected model version {rejected} (was pending) as bob" in capsys.readouterr().out

    model_cli.main(["versions", "--json"])
    listed = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert [listed[v]["status"] for v in (pending, approved, rejected)] == [PENDING, APPROVED, REJECTED]
    assert (listed[approved]["approved_by"], listed[approved]["onnx"]["parity"]) == ("alice", "ok")
    assert (listed[rejected]["rejected_by"], listed[rejected]["rejected_reason"]) == ("bob", "overfits")
    model_cli.main(["versions"])
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "approved  alice" in table[str(approved)] and "ok: " in table[str(approved)]
    assert table[str(rejected)].endswith("; overfits") and "pending" in table[str(pending)]

    with pytest.raises(SystemExit, match=rf"error: model version {pending} is pending.*python -m model approve"):
        model_cli.main(["promote", str(pending)])
    with pytest.raises(SystemExit, match="does not exist"):
        model_cli.main(["approve", "999999"])
    assert not (tmp_path / "iot_model.joblib").exists()


def test_train_promote_registers_approves_as_you_and_serves(tmp_path, monkeypatch, capsys):
    """What the stack does for its first model (stack/services.py ModelServer.prepare)."""
    monkeypatch.setenv("STACK_DIR", str(tmp_path))
    for name in ("MODEL_PATH", "MODEL_ONNX_DIR", "MODEL_URL", "MODEL_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    train_cli.main(["--num-trees", "5", "--max-depth", "5", "--promote"])
    said = capsys.readouterr().out
    version = load_served_model(tmp_path / "model" / "iot_model.joblib")[1].version
    assert said.startswith("run ") and f"registered as {REGISTERED_MODEL} version {version}, pending" in said
    assert f"approved model version {version} as {getpass.getuser()}" in said
    assert f"promoted version {version}" in said
    assert find_artifact(version, tmp_path / "model" / "onnx") is not None


@pytest.mark.parametrize("argv", [[], ["serve"], ["versions"], ["approve"], ["reject"], ["promote"], ["info"]])
def test_every_model_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        model_cli.main([*argv, "--help"])
    assert exited.value.code == 0 and "usage: python -m model" in capsys.readouterr().out


@pytest.mark.parametrize("module", [train_cli, experiments])
def test_training_commands_say_promote_approves_as_you(module, capsys):
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0 and "approve" in capsys.readouterr().out


def test_the_model_module_runs_as_a_command():
    shown = subprocess.run([sys.executable, "-m", "model", "approve", "--help"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent.parent, check=True)
    assert "--by BY" in shown.stdout
