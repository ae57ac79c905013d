"""Ensemble selection: which members, with which mixture weights, chosen on held-out images.

Greedy forward selection with replacement (Caruana, Niculescu-Mizil, Crew & Ksikes, "Ensemble
selection from libraries of models", ICML 2004): start from the empty ensemble and, at each step,
add (again) the candidate whose addition gives the lowest MAE of the mixture; a candidate's
weight is its share of the picks up to the best step. Mixtures go through `combine`, so the
median scored is the exact median of the weighted mixture of age distributions, as test.py
reports it. Because the weights are fitted on the images they are scored on, `cross_fit` gives
the honest estimate: each fold's images are predicted with the weights selected on the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from age_estimation.cli import POINT_ESTIMATES
from age_estimation.engine.inference import (
    combine,
    prediction_columns,
    prediction_from_columns,
)

Outputs = dict[str, np.ndarray]  # predict_outputs' arrays of one candidate, one row per image


@dataclass
class Selection:
    """The picks of a greedy run: `counts[j]` picks of candidate j up to `best_step` (0-based),
    the step of lowest MAE; `mae_by_step[s]` the MAE after step s."""

    counts: np.ndarray
    mae_by_step: list[float]
    best_step: int

    @property
    def weights(self) -> np.ndarray:
        return self.counts / self.counts.sum()

    @property
    def mae(self) -> float:
        return self.mae_by_step[self.best_step]


def _subset(outputs: Outputs, rows: np.ndarray) -> Outputs:
    return {k: v[rows] for k, v in outputs.items()}


def mixture(candidates: Sequence[Outputs], weights: Sequence[float]) -> Outputs:
    """The candidates' predictions mixed with `weights` (zeros allowed: those are left out),
    as predict_outputs' arrays of the first candidate's images."""
    used = [j for j, w in enumerate(weights) if w > 0]
    if not used:
        raise ValueError("mixture(): every weight is 0")
    prediction = combine([prediction_from_columns(candidates[j]) for j in used],
                         [float(weights[j]) for j in used])
    first = candidates[0]
    return {"index": first["index"], "id": first["id"], **prediction_columns(prediction)}


def mixture_mae(candidates: Sequence[Outputs], weights: Sequence[float], ages: np.ndarray,
                point: str = "median") -> float:
    return float(np.abs(mixture(candidates, weights)[point] - ages).mean())


def check_candidates(candidates: Sequence[Outputs], ages: np.ndarray) -> None:
    """Refuse candidates that do not predict the same images in one order (one ages per row)."""
    if not candidates:
        raise ValueError("ensemble selection needs at least one candidate")
    ids = candidates[0]["id"]
    for j, outputs in enumerate(candidates[1:], start=1):
        if not np.array_equal(outputs["id"], ids):
            raise ValueError(f"candidate {j} predicts other images (or another order) than "
                             f"candidate 0; expected the same ids in one order")
    if len(ages) != len(ids):
        raise ValueError(f"{len(ages)} ages for {len(ids)} predicted images")


def greedy_selection(candidates: Sequence[Outputs], ages: np.ndarray, steps: int = 25,
                     point: str = "median") -> Selection:
    """Greedy forward selection with replacement for `steps` steps (ties: the earlier
    candidate, then the earlier step); see the module's docstring."""
    if point not in POINT_ESTIMATES:
        raise ValueError(f"point estimate {point!r}: expected one of {', '.join(POINT_ESTIMATES)}")
    if steps < 1:
        raise ValueError(f"steps = {steps}: expected at least 1")
    check_candidates(candidates, ages)
    counts = np.zeros(len(candidates), dtype=np.int64)
    picks, mae_by_step = [], []
    for _ in range(steps):
        trials = [mixture_mae(candidates, counts + np.eye(len(candidates), dtype=np.int64)[j],
                              ages, point) for j in range(len(candidates))]
        best = int(np.argmin(trials))
        counts[best] += 1
        picks.append(best)
        mae_by_step.append(trials[best])
    best_step = int(np.argmin(mae_by_step))
    kept = np.bincount(picks[:best_step + 1], minlength=len(candidates))
    return Selection(kept, mae_by_step, best_step)


def fold_ids(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Each row's fold (0..folds-1), from a seeded permutation, folds differing by <= 1 row."""
    if not 2 <= folds <= n:
        raise ValueError(f"folds = {folds}: expected 2..{n} (the number of images)")
    assignment = np.empty(n, dtype=np.int64)
    assignment[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return assignment


def cross_fit(candidates: Sequence[Outputs], ages: np.ndarray, folds: int = 10, seed: int = 0,
              steps: int = 25, point: str = "median") -> tuple[Outputs, list[Selection]]:
    """Cross-fitted predictions: the rows of each fold mixed with the weights that
    greedy_selection chose on the other folds. Returns the arrays for every row, in the
    candidates' order, and each fold's Selection."""
    check_candidates(candidates, ages)
    assignment = fold_ids(len(ages), folds, seed)
    parts: list[tuple[np.ndarray, Outputs]] = []
    selections = []
    for fold in range(folds):
        train, held = np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)
        selection = greedy_selection([_subset(c, train) for c in candidates], ages[train], steps,
                                     point)
        selections.append(selection)
        parts.append((held, mixture([_subset(c, held) for c in candidates], selection.counts)))
    order = np.argsort(np.concatenate([rows for rows, _ in parts]), kind="stable")
    keys = parts[0][1].keys()
    pooled = {k: np.concatenate([part[k] for _, part in parts])[order] for k in keys}
    return pooled, selections
