"""Run experiment suites resumably: python scripts/run_suite.py configs/suites/NAME.yaml [...]
[--only PATTERN] [--dry-run] [--jobs N] [--runs-dir runs] [--results-dir results/runs]

Each run trains with train.py (checkpoints in --runs-dir, shared by identical configs; an
interrupted training resumes) and evaluates with test.py; its small files land in
RESULTS_DIR/SUITE/RUN/. A run whose metrics.json exists is skipped. One progress line per run.
--jobs N (a machine with a GPU and many cores): N processes at a time, first every missing
training of all the given suites (each distinct model once), then every evaluation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.analysis.runner import SuiteRunner, run_parallel  # noqa: E402
from age_estimation.analysis.suites import SuiteError, load_suite  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="+", help="suite files (configs/suites/*.yaml)")
    parser.add_argument("--only", default=None,
                        help="runs whose name matches this glob or contains this text")
    parser.add_argument("--dry-run", action="store_true",
                        help="list each run's state and commands, run nothing")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes at a time (default 1: one run after the other)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs",
                        help="checkpoints (outside git; default runs/)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "results" / "runs")
    args = parser.parse_args(argv)
    try:
        suites = [load_suite(path) for path in args.suites]
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runners = [SuiteRunner(suite, args.runs_dir, args.results_dir) for suite in suites]
    for suite in suites:
        print(f"suite {suite.name}: {len(suite.runs())} runs ({len(suite.variants)} variants x "
              f"{len(suite.seeds)} seeds); {suite.budget}")
    if args.jobs > 1 and not args.dry_run:
        failed = run_parallel(runners, args.jobs, args.only)
    else:
        failed = sum(runner.run(args.only, args.dry_run) for runner in runners)
    if failed:
        print(f"{failed} run(s) failed", file=sys.stderr)
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
