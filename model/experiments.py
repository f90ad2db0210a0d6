"""Lab 7: run the workshop's grid of experiments, rank the runs by auroc, and optionally serve the best.

Usage:
    python -m model.experiments                  # (20, 20) (15, 25) (25, 20) (20, 25)
    python -m model.experiments --promote-best   # ... approve the best run's version as you and serve it
    python -m model.experiments --grid 50x8 100x12

Every run is registered in the MLflow Model Registry as a version pending approval (`python -m model versions`).
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from model.approval import approve_and_promote
from model.registry import tell_server_to_reload
from model.train import DEFAULT_SEED, RunResult, held_out_split, train

LAB7_GRID: tuple[tuple[int, int], ...] = ((20, 20), (15, 25), (25, 20), (20, 25))


def run_grid(grid=LAB7_GRID, seed: int = DEFAULT_SEED) -> list[RunResult]:
    """Train one run per (num_trees, max_depth) on the same split; return them best auroc first."""
    split = held_out_split(seed)
    results = []
    for num_trees, max_depth in tqdm(grid, desc="experiments", unit="run"):
        results.append(train(num_trees, max_depth, seed, split))
    return sorted(results, key=lambda r: r.auroc, reverse=True)


def ranked_table(results: list[RunResult]) -> str:
    """The runs in the order given, with their registry versions."""
    lines = [f"{'rank':>4}  {'version':>7}  {'num_trees':>9}  {'max_depth':>9}  {'auroc':>7}  {'ap':>7}  "
             f"{'ap_failure':>10}  run_id"]
    lines += [f"{i:>4}  {r.version:>7}  {r.num_trees:>9}  {r.max_depth:>9}  {r.auroc:>7.4f}  {r.ap:>7.4f}  "
              f"{r.ap_failure:>10.4f}  {r.run_id}"
              for i, r in enumerate(results, start=1)]
    return "\n".join(lines)


def _grid_point(text: str) -> tuple[int, int]:
    try:
        trees, depth = text.lower().split("x")
        return int(trees), int(depth)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not TREESxDEPTH, e.g. 20x20") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.experiments", description="Run the lab-7 grid.")
    parser.add_argument("--grid", nargs="+", type=_grid_point, default=list(LAB7_GRID), metavar="TREESxDEPTH",
                        help="runs to make (default: the workshop's 20x20 15x25 25x20 20x25)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--promote-best", action="store_true",
                        help="then approve the best run's version as you and serve it")
    args = parser.parse_args(argv)
    results = run_grid(tuple(args.grid), args.seed)
    print(ranked_table(results))
    if not args.promote_best:
        print("every run is registered, pending approval: `python -m model versions`, `python -m model approve N`")
        return
    best = results[0]
    print(f"the best run: version {best.version} ({best.num_trees} trees, depth {best.max_depth}, "
          f"auroc {best.auroc:.4f}); approving it as you and serving it")
    approval, info = approve_and_promote(best.version)
    print(approval.summary())
    print(f"promoted version {info.version} (run {info.run_id}) as the served model")
    print(tell_server_to_reload())


if __name__ == "__main__":
    main()
