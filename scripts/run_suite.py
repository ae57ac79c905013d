"""Run an experiment suite resumably: python scripts/run_suite.py configs/suites/NAME.yaml
[--only PATTERN] [--dry-run] [--runs-dir runs] [--results-dir results/runs]

Each run trains with train.py (checkpoints in --runs-dir, shared by identical configs; an
interrupted training resumes) and evaluates with test.py; its small files land in
RESULTS_DIR/SUITE/RUN/. A run whose metrics.json exists is skipped. One progress line per run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.analysis.runner import SuiteRunner  # noqa: E402
from age_estimation.analysis.suites import SuiteError, load_suite  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="suite file (configs/suites/*.yaml)")
    parser.add_argument("--only", default=None,
                        help="runs whose name matches this glob or contains this text")
    parser.add_argument("--dry-run", action="store_true",
                        help="list each run's state and commands, run nothing")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs",
                        help="checkpoints (outside git; default runs/)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results" / "runs")
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.suite)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = suite.runs()
    print(f"suite {suite.name}: {len(runs)} runs ({len(suite.variants)} variants x "
          f"{len(suite.seeds)} seeds); {suite.budget}")
    failed = SuiteRunner(suite, args.runs_dir, args.results_dir).run(args.only, args.dry_run)
    if failed:
        print(f"{failed} run(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
