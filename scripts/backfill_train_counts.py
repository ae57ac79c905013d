"""Add the training-age counts to suite runs stored before test.py recorded them:
python scripts/backfill_train_counts.py [--results results/runs]

The report needs them to place each test image in its many / medium / few-shot group and so to
give those MAEs a bootstrap CI. Each run's counts come from its own checkpoint (under runs/) or,
when that is gone, from a checkpoint trained on the same labels; they are written only when they
reproduce the shot sizes the run's metrics.json already holds. Nothing else in the file changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.analysis.runner import backfill_train_counts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=REPO / "results" / "runs")
    args = parser.parse_args(argv)
    done = backfill_train_counts(args.results)
    print(f"runs filled from their own checkpoint: {done['own']}, from one trained on "
          f"the same labels: {done['borrowed']}, left without counts: {done['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
