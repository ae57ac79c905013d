"""Paired comparison of per-image predictions: is one model (or ensemble, or TTA) better than a
baseline on the same images?

    python scripts/compare_predictions.py BASE.csv OTHER.csv [OTHER.csv ...] [--out F.md]
    python scripts/compare_predictions.py A_seed0.csv+A_seed1.csv B_seed0.csv+B_seed1.csv

Each CSV is a test.py predictions file (columns id, age, pred). For every OTHER, on the images
both predicted: the MAE of each with a bootstrap 95 % CI (``--level`` sets another level), and
OTHER − BASE with a paired bootstrap CI (the same resampled images for both). A difference is
only one when its CI excludes zero. Prints a markdown table (and writes it with --out).

CSVs joined by ``+`` are one recipe's seeds: each image's absolute error is averaged over them
(on the images all of them predicted), as the report's seed-averaged errors are, so two recipes
are compared over several seeds and still paired by image. This is the expected error of one
seed's model, not an ensemble's (average the predictions with ``test.py --ensemble`` for that).

``--cluster COLUMN`` resamples whole groups of images instead of images, for images that are
not independent: FG-NET's ~12 photos of each of 41 people (``--cluster subject``; test.py
writes the column). The intervals are then wider and honest about how many people were seen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from age_estimation.analysis.report import absolute_errors
from age_estimation.metrics import bootstrap_ci, bootstrap_diff_ci

N_BOOT = 2000


def read_predictions(path: Path, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """One predictions CSV (id, age, pred and the ``extra`` columns); a bad file is an error
    naming it."""
    try:
        return pd.read_csv(path, usecols=["id", "age", "pred", *extra])
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: {err} (expected a test.py predictions CSV with id, age, "
                         f"pred{''.join(', ' + c for c in extra)})") from None


def read_clusters(spec: str, column: str) -> pd.Series:
    """The ``column`` (e.g. subject) by image id, from the first CSV of ``spec``."""
    path = Path(spec.split("+")[0])
    frame = read_predictions(path, (column,))
    if frame[column].isna().any():
        missing = frame["id"][frame[column].isna()].iloc[0]
        raise ValueError(f"{path}: image {missing!r} has no {column}, so it cannot be "
                         f"resampled with its group")
    return frame.drop_duplicates("id").set_index("id")[column].astype(str)


def read_errors(spec: str) -> pd.Series:
    """|pred - age| by image id of one CSV, or averaged over the seeds of ``a.csv+b.csv`` on the
    images every one of them predicted. Seeds that disagree on an image's age are an error
    naming both files: they were not scored against the same labels."""
    paths = [Path(part) for part in spec.split("+")]
    frames = [read_predictions(path) for path in paths]
    if len(frames) > 1:
        for path, frame in zip(paths, frames):
            if frame["id"].duplicated().any():
                raise ValueError(f"{path}: image {frame['id'][frame['id'].duplicated()].iloc[0]!r}"
                                 f" appears twice, so its seeds' errors cannot be paired")
    first_ages = frames[0].set_index("id")["age"]
    for path, frame in zip(paths[1:], frames[1:]):
        ages = frame.set_index("id")["age"]
        shared = ages.index.intersection(first_ages.index)
        clash = shared[(ages.loc[shared] - first_ages.loc[shared]).abs().to_numpy() > 1e-6]
        if len(clash):
            raise ValueError(f"{path} and {paths[0]} give image {clash[0]!r} different ages "
                             f"({ages[clash[0]]} and {first_ages[clash[0]]})")
    errors = pd.concat([absolute_errors(frame) for frame in frames], axis=1).dropna()
    if errors.empty:
        raise ValueError(f"the seeds of {spec} share no image ids")
    return errors.mean(axis=1)


def compare(base: str, others: list[str], cluster: str | None = None,
            level: float = 0.95) -> str:
    """The markdown table: one row per OTHER against BASE, intervals at ``level``; with
    ``cluster``, they resample BASE's groups of that column."""
    if not 0 < level < 1:
        raise ValueError(f"--level {level} is not a confidence level between 0 and 1")
    ci = dict(n_boot=N_BOOT, alpha=1 - level)
    name = f"{100 * level:g} % CI"
    base_errors = read_errors(base)
    clusters = read_clusters(base, cluster) if cluster else None
    rows = [f"| predictions | images | MAE ({name}) | baseline MAE ({name}) | "
            f"Δ MAE ({name}) | verdict |", "| --- | ---: | --- | --- | --- | --- |"]
    for other in others:
        errors = read_errors(other)
        common = errors.index.intersection(base_errors.index)
        if common.empty:
            raise ValueError(f"{other} and {base} share no image ids")
        a, b = errors.loc[common].to_numpy(), base_errors.loc[common].to_numpy()
        groups = None if clusters is None else clusters.reindex(common).to_numpy()
        mae, low, high = bootstrap_ci(a, groups=groups, **ci)
        base_mae, base_low, base_high = bootstrap_ci(b, groups=groups, **ci)
        diff, diff_low, diff_high = bootstrap_diff_ci(a, b, groups=groups, **ci)
        verdict = ("better" if diff_high < 0 else "worse" if diff_low > 0
                   else "no significant difference")
        rows.append(f"| `{other}` | {len(common)} | {mae:.3f} ({low:.3f}, {high:.3f}) | "
                    f"{base_mae:.3f} ({base_low:.3f}, {base_high:.3f}) | {diff:+.3f} "
                    f"({diff_low:+.3f}, {diff_high:+.3f}) | {verdict} |")
    resampled = ("" if clusters is None else
                 f" Intervals resample whole `{cluster}` groups ({clusters.nunique()} in the "
                 f"baseline), not images.")
    return (f"Baseline: `{base}`; Δ = MAE − baseline MAE on the same images.{resampled}\n\n"
            + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="predictions CSV, or seeds' CSVs joined by +")
    parser.add_argument("others", nargs="+", help="the same, one per compared model or recipe")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--cluster", metavar="COLUMN",
                        help="resample whole groups of this column (e.g. subject), not images")
    parser.add_argument("--level", type=float, default=0.95,
                        help="confidence level of the intervals, e.g. 0.9833 for a Bonferroni "
                             "correction over three comparisons (default 0.95)")
    args = parser.parse_args(argv)
    try:
        table = compare(args.base, args.others, args.cluster, args.level)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
