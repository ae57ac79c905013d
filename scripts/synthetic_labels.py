"""Summarise synthetic datasets made by scripts/synthesize.py: what made each one and what its
teacher made of the faces (age mean, quantiles, share per decade, correlation with the
conditioning age), from its labels.csv and provenance.json. No images are read or copied.

    python scripts/synthetic_labels.py ../runs/synthetic/A ../runs/synthetic/B \\
        --json results/synthetic/synthetic_labels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path, help="synthesize.py output folders")
    parser.add_argument("--json", type=Path, required=True, help="where to write the summary")
    args = parser.parse_args(argv)

    import pandas as pd

    from age_estimation.gan.quality import label_summary

    summary = {}
    for folder in args.datasets:
        labels, provenance = folder / "labels.csv", folder / "provenance.json"
        if not labels.is_file() or not provenance.is_file():
            print(f"error: {folder} is not a synthesize.py output (labels.csv and "
                  f"provenance.json expected)", file=sys.stderr)
            return 2
        made = json.loads(provenance.read_text())
        made.pop("teacher_labels", None)  # recomputed below from the labels actually there
        summary[folder.name] = {"made_by": made,
                                "teacher_labels": label_summary(pd.read_csv(labels))}
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    for name, entry in summary.items():
        labels = entry["teacher_labels"]
        mean = labels.get("mean", float("nan"))
        r = labels.get("pearson_r_with_conditioned_age", float("nan"))
        print(f"{name}: {labels['n']} faces, teacher age mean {mean:.1f}, r with the "
              f"conditioning age {r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
