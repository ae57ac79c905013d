"""Paired comparison of per-image predictions: is one model (or ensemble, or TTA) better than a
baseline on the same images?

    python scripts/compare_predictions.py BASE.csv OTHER.csv [OTHER.csv ...] [--out F.md]

Each CSV is a test.py predictions file (columns id, age, pred). For every OTHER, on the images
both predicted: the MAE of each with a bootstrap 95 % CI, and OTHER − BASE with a paired
bootstrap CI (the same resampled images for both). A difference is only one when its CI
excludes zero. Prints a markdown table (and writes it with --out).
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


def read_errors(path: Path) -> pd.Series:
    """|pred - age| by image id of one predictions CSV; a bad file is an error naming it."""
    try:
        frame = pd.read_csv(path, usecols=["id", "age", "pred"])
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: {err} (expected a test.py predictions CSV with id, age, "
                         f"pred)") from None
    return absolute_errors(frame)


def compare(base: Path, others: list[Path]) -> str:
    """The markdown table: one row per OTHER against BASE."""
    base_errors = read_errors(base)
    rows = ["| predictions | images | MAE (95 % CI) | baseline MAE (95 % CI) | "
            "Δ MAE (95 % CI) | verdict |", "| --- | ---: | --- | --- | --- | --- |"]
    for other in others:
        errors = read_errors(other)
        common = errors.index.intersection(base_errors.index)
        if common.empty:
            raise ValueError(f"{other} and {base} share no image ids")
        a, b = errors.loc[common].to_numpy(), base_errors.loc[common].to_numpy()
        mae, low, high = bootstrap_ci(a, n_boot=N_BOOT)
        base_mae, base_low, base_high = bootstrap_ci(b, n_boot=N_BOOT)
        diff, diff_low, diff_high = bootstrap_diff_ci(a, b, n_boot=N_BOOT)
        verdict = ("better" if diff_high < 0 else "worse" if diff_low > 0
                   else "no significant difference")
        rows.append(f"| `{other}` | {len(common)} | {mae:.3f} ({low:.3f}, {high:.3f}) | "
                    f"{base_mae:.3f} ({base_low:.3f}, {base_high:.3f}) | {diff:+.3f} "
                    f"({diff_low:+.3f}, {diff_high:+.3f}) | {verdict} |")
    return f"Baseline: `{base}`; Δ = MAE − baseline MAE on the same images.\n\n" + \
        "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("others", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        table = compare(args.base, args.others)
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
