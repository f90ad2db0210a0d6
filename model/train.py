"""Lab 2: train the random forest that predicts machine failure, as a tracked MLflow experiment run.

Usage:
    python -m model.train --num-trees 20 --max-depth 20            # the workshop's first run
    python -m model.train --num-trees 25 --max-depth 20 --promote  # ... approve it as you and serve it

Prints auroc and ap on the held-out split (computed from predicted probabilities) and the run's version in the
MLflow Model Registry (`iot-failure-model`), pending approval (`python -m model approve N`); the run, with its
params, metrics and model, appears in MLflow (`make mlflow-ui`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from contract import FEATURES, HEALTHY, LABEL
from model.data import HISTORY_FILE, load_history
from model.registry import REGISTERED_MODEL, register, tell_server_to_reload, use_tracking_store

DEFAULT_SEED = 42
DEFAULT_TEST_SIZE = 0.25


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class RunResult:
    """One trained run and its version in the Model Registry (pending approval)."""

    run_id: str
    version: int
    num_trees: int
    max_depth: int
    auroc: float
    ap: float
    ap_failure: float


def held_out_split(seed: int = DEFAULT_SEED, test_size: float = DEFAULT_TEST_SIZE, data=HISTORY_FILE) -> Split:
    """The training and held-out rows (features in contract order), stratified and reproducible."""
    history = load_history(data)
    x = history[list(FEATURES)].to_numpy(dtype=np.float64)
    y = history[LABEL].to_numpy()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return Split(x_train, x_test, y_train, y_test)


def build_pipeline(num_trees: int, max_depth: int, seed: int = DEFAULT_SEED) -> Pipeline:
    """The model: a random forest over the twelve sensors (trees need no scaling)."""
    forest = RandomForestClassifier(n_estimators=num_trees, max_depth=max_depth, random_state=seed, n_jobs=-1)
    return Pipeline([("forest", forest)])


def evaluate(pipeline: Pipeline, split: Split) -> dict[str, float]:
    """auroc and ap (healthy = positive, as the workshop scored) and ap for failures, from probabilities."""
    healthy_column = list(pipeline.classes_).index(HEALTHY)
    p_healthy = pipeline.predict_proba(split.x_test)[:, healthy_column]
    healthy = split.y_test == HEALTHY
    return {
        "auroc": float(roc_auc_score(healthy, p_healthy)),
        "ap": float(average_precision_score(healthy, p_healthy)),
        "ap_failure": float(average_precision_score(~healthy, 1.0 - p_healthy)),
    }


def train(num_trees: int, max_depth: int, seed: int = DEFAULT_SEED, split: Split | None = None,
          build: Callable[[int, int, int], Pipeline] = build_pipeline) -> RunResult:
    """Fit, evaluate and log one run to MLflow (params, metrics, model) and register its model as a new version,
    pending approval; `build(num_trees, max_depth, seed)` makes the pipeline (lab 2 passes its own copy)."""
    split = split or held_out_split(seed)
    mlflow = use_tracking_store()
    with mlflow.start_run(run_name=f"rf-{num_trees}-{max_depth}") as run:
        pipeline = build(num_trees, max_depth, seed).fit(split.x_train, split.y_train)
        # Trees are fitted in parallel, but predicted on one core: parallel prediction sums the trees'
        # probabilities in whatever order threads finish, and the metrics would differ in the last digits.
        pipeline.set_params(**{f"{name}__n_jobs": 1 for name, step in pipeline.steps if "n_jobs" in step.get_params()})
        metrics = evaluate(pipeline, split)
        mlflow.log_params({"num_trees": num_trees, "max_depth": max_depth, "seed": seed,
                           "train_rows": len(split.y_train), "test_rows": len(split.y_test)})
        mlflow.log_metrics(metrics)
        logged = mlflow.sklearn.log_model(pipeline, name="model", serialization_format="cloudpickle")
        version = register(logged.model_uri)
    return RunResult(run.info.run_id, version, num_trees, max_depth, metrics["auroc"], metrics["ap"],
                     metrics["ap_failure"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.train", description="Train one random forest run (lab 2).")
    parser.add_argument("--num-trees", type=int, required=True, help="trees in the forest (the workshop: 20)")
    parser.add_argument("--max-depth", type=int, required=True, help="maximum tree depth (the workshop: 20)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--promote", action="store_true",
                        help="then approve its version as you and serve it (the stack's first model, the labs)")
    args = parser.parse_args(argv)
    result = train(args.num_trees, args.max_depth, args.seed)
    print(f"run {result.run_id}: num_trees={result.num_trees} max_depth={result.max_depth} "
          f"auroc={result.auroc:.4f} ap={result.ap:.4f}")
    print(f"registered as {REGISTERED_MODEL} version {result.version}, pending approval")
    if not args.promote:
        print(f"approve it with `python -m model approve {result.version}`, "
              f"then serve it with `python -m model promote {result.version}`")
        return
    from model.approval import approve_and_promote  # here: model.approval imports this module's held-out split

    approval, info = approve_and_promote(result.version)
    print(approval.summary())
    print(f"promoted version {info.version} (run {info.run_id}) as the served model")
    print(tell_server_to_reload())


if __name__ == "__main__":
    main()
