"""Regenerate the results report: python scripts/make_report.py [--results results/runs]
[--out results/REPORT.md]

Reads what scripts/run_suite.py stored (suite.json, metrics.json, predictions CSVs) and writes
the Markdown report with PNG figures in <out folder>/figures/. Suites without runs are absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.analysis.report import write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=REPO / "results" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "REPORT.md")
    args = parser.parse_args(argv)
    print(f"report: {write_report(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
