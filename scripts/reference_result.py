"""Evaluate a finished training run and publish it as a reference result.

    python scripts/reference_result.py RUN_DIR [--name reference] [--command "python train.py ..."]

Runs test.py on the run's best checkpoint (UTKFace test split, and FG-NET as a cross-dataset
check when its folder exists), then writes results/NAME/ (config, per-epoch metrics, summaries,
per-image test predictions, a README with the numbers, the command, wall time and hardware) and
refreshes the README's generated reference block. Nothing in it is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.analysis.runner import hardware  # noqa: E402
from age_estimation.data.datasets import default_data_dir  # noqa: E402

BEGIN, END = "<!-- reference:begin (scripts/reference_result.py) -->", "<!-- reference:end -->"


def run_test(checkpoint: Path, out: Path, *extra: str) -> dict:
    subprocess.run([sys.executable, str(REPO / "test.py"), "--resume", str(checkpoint),
                    "--out", str(out), *extra], check=True, cwd=REPO)
    return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", default="reference")
    parser.add_argument("--command", default="", help="the train.py command that made the run")
    args = parser.parse_args()

    out = REPO / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    best = args.run_dir / "best.pth"
    test = run_test(best, out / "predictions_test.csv")
    fgnet_root = default_data_dir() / "fgnet"
    fgnet = (run_test(best, out / "predictions_fgnet.csv", "--data", f"fgnet:{fgnet_root}",
                      "--split", "all") if fgnet_root.is_dir() else None)
    for name in ("config.yaml", "metrics.csv"):
        shutil.copy(args.run_dir / name, out / name)
    metrics = pd.read_csv(args.run_dir / "metrics.csv")
    best_epoch = int(metrics.loc[metrics["valid_mae"].idxmin(), "epoch"])
    machine = hardware()
    info = {
        "command": args.command,
        "epochs": int(metrics["epoch"].max()),
        "best_epoch": best_epoch,
        "best_valid_mae": float(metrics["valid_mae"].min()),
        "train_wall_minutes": float(metrics["epoch_seconds"].sum() / 60),
        "train_images_per_s": float(metrics["images_per_s"].median()),
        "hardware": f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
                    f"{machine['gpu'] or 'CPU only'}",
        "test": {k: test[k] for k in ("n", "mae", "mae_ci", "cs5")},
        "fgnet": {k: fgnet[k] for k in ("n", "mae", "mae_ci", "cs5")} if fgnet else None,
    }
    (out / "summary.json").write_text(json.dumps(info, indent=2))
    block = render(info, args.name)
    (out / "README.md").write_text(f"# Reference result: {args.name}\n\n{block}\n")
    readme = REPO / "README.md"
    text = readme.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        readme.write_text(f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")
    print(block)


def render(info: dict, name: str) -> str:
    test, fgnet = info["test"], info["fgnet"]
    lines = [
        "| data | images | MAE (95 % bootstrap CI) | CS@5 |",
        "| --- | ---: | --- | ---: |",
        f"| UTKFace test split | {test['n']} | **{test['mae']:.2f}** "
        f"({test['mae_ci'][0]:.2f}–{test['mae_ci'][1]:.2f}) | {test['cs5']:.3f} |",
    ]
    if fgnet:
        lines.append(f"| FG-NET, 41 subjects (cross-dataset, landmark-aligned) | {fgnet['n']} | "
                     f"{fgnet['mae']:.2f} ({fgnet['mae_ci'][0]:.2f}–{fgnet['mae_ci'][1]:.2f}) | "
                     f"{fgnet['cs5']:.3f} |")
    lines += [
        "",
        f"Command: `{info['command']}` (seed 0), then `python scripts/reference_result.py "
        f"RUN_DIR --name {name}`. Best valid MAE {info['best_valid_mae']:.2f} at epoch "
        f"{info['best_epoch']} of {info['epochs']} (the checkpoint evaluated). Training wall time "
        f"{info['train_wall_minutes']:.0f} min at a median {info['train_images_per_s']:.0f} "
        f"images/s on {info['hardware']}. Per-epoch metrics, the config and per-image "
        f"predictions are in [`results/{name}/`](results/{name}/).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
