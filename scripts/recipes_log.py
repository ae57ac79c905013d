"""Write the recipe-search log: python scripts/recipes_log.py [--suite recipes]
[--results results/runs] [--out results/recipes.md]

Every trial of the suite (configs/suites/recipes.yaml, run by scripts/run_suite.py on the valid
split) with what it changes, training minutes, valid MAE with its 95 % CI, CS@5 and machine,
best first; trials with no result (not run yet, or failed: see runs/logs/) are listed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.analysis.report import load_results, recipe_log  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="recipes")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "recipes.md")
    args = parser.parse_args(argv)
    suite = next((s for s in load_results(args.results) if s.name == args.suite), None)
    if suite is None:
        print(f"error: no suite {args.suite!r} under {args.results} (run scripts/run_suite.py "
              f"configs/suites/{args.suite}.yaml first)", file=sys.stderr)
        return 2
    args.out.write_text(recipe_log(suite))
    print(f"recipe log: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
