"""Labs 2 and 7: the shipped history, training as MLflow runs registered as versions, the lab-7 grid, promotion
(approval: tests/test_registry_approval.py)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from contract import FEATURES, LABEL
from model.data import DEFAULT_ROWS, DEFAULT_SEED, load_history
from model.experiments import LAB7_GRID, run_grid
from model.registry import EXPERIMENT, PENDING, load_served_model, promote, version_record
from model.train import held_out_split, train
from world import historical_readings


def test_feature_order_is_sensor_0_to_sensor_11():
    assert tuple(f"sensor_{i}" for i in range(12)) == FEATURES


def test_shipped_history_is_what_the_seeded_generator_makes():
    shipped = load_history()
    assert len(shipped) == DEFAULT_ROWS
    pd.testing.assert_frame_equal(shipped, historical_readings(DEFAULT_ROWS, DEFAULT_SEED)[list(shipped.columns)],
                                  check_dtype=False)
    failure_share = (shipped[LABEL] == 0).mean()
    assert 0.05 < failure_share < 0.2  # failures are the minority


def test_workshop_run_meets_the_bar_and_is_reproducible(workshop_run):
    assert 0.84 <= workshop_run.auroc < 0.99
    again = train(20, 20)
    assert again.run_id != workshop_run.run_id and again.version > workshop_run.version
    assert (again.auroc, again.ap) == (workshop_run.auroc, workshop_run.ap)


def test_lab7_grid_is_tracked_in_mlflow_with_params_and_both_metrics():
    results = run_grid(LAB7_GRID)
    assert [r.auroc for r in results] == sorted((r.auroc for r in results), reverse=True)
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT])
    for result in results:
        run = runs[runs.run_id == result.run_id].iloc[0]
        assert (int(run["params.num_trees"]), int(run["params.max_depth"])) == (result.num_trees, result.max_depth)
        assert run["metrics.auroc"] == pytest.approx(result.auroc)
        assert run["metrics.ap"] == pytest.approx(result.ap)
        record = version_record(result.version)
        assert (record.run_id, record.status) == (result.run_id, PENDING)
    aurocs = [r.auroc for r in results]
    assert max(aurocs) - min(aurocs) > 0.005  # the runs really differ
    assert max(aurocs) < 0.99  # not a trivially separable toy


def test_promotion_serves_an_approved_version_under_its_registry_number(workshop_run, served_model_file, tmp_path):
    path = tmp_path / "served.joblib"  # the workshop run's version is approved: served_model_file approved it
    first = promote(workshop_run.version, path)
    again = promote(workshop_run.version, path)
    pipeline, info = load_served_model(path)
    assert first.version == again.version == info.version == workshop_run.version
    assert info.run_id == workshop_run.run_id and info.approved_by and first.promoted_at <= again.promoted_at
    assert info.params["num_trees"] == "20" and info.metrics["auroc"] == pytest.approx(workshop_run.auroc, abs=1e-6)
    split = held_out_split()
    assert (pipeline.predict(split.x_test[:1000]) == split.y_test[:1000]).mean() > 0.85
