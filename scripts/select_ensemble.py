"""Choose an ensemble's members and mixture weights on held-out images, with an honest estimate:

    python scripts/select_ensemble.py A.pth B.pth C.pth ... --out-dir DIR
        [--split valid] [--data KIND:PATH] [--tta flip] [--point median]
        [--steps 25] [--folds 10] [--seed 0]

Every candidate checkpoint predicts the split once (with the test-time views, each at its own
input size, as test.py does); greedy forward selection with replacement (Caruana et al. 2004,
age_estimation/engine/ensemble_selection.py) picks weights that lower the MAE of the mixture's
`--point` estimate. Writes to DIR:
  selected_<split>.csv/.json  the selected mixture on the split it was selected on (optimistic:
                              the weights were fitted to these images);
  crossfit_<split>.csv/.json  each of --folds folds predicted with the weights selected on the
                              others: the honest estimate, to compare with a baseline by
                              scripts/compare_predictions.py;
  selection.json              candidates, each one's MAE alone, the picks and weights, the MAE
                              by step, each fold's weights, and the test.py command of the
                              selected ensemble (members of weight 0 left out).
Use the valid split: the test split is for scoring the chosen ensemble once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from age_estimation.cli import POINT_ESTIMATES, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", help="checkpoints (.pth) or run folders")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test", "all"))
    parser.add_argument("--data", default="", help="KIND:PATH (default: each checkpoint's own)")
    parser.add_argument("--tta", nargs="?", const="flip", default=None,
                        help="test-time views of every candidate (as test.py --tta)")
    parser.add_argument("--point", default="median", choices=POINT_ESTIMATES,
                        help="the point estimate selected for (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=25, help="greedy steps (default: 25)")
    parser.add_argument("--folds", type=int, default=10, help="cross-fitting folds (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--workers", type=int, default=-1,
                        help="DataLoader workers (default: the checkpoint's DATA.NUM_WORKERS)")
    args = parser.parse_args(argv)
    setup_logging()

    import numpy as np
    import torch

    from age_estimation.config import ConfigError
    from age_estimation.data.build import load_split
    from age_estimation.data.cache import BadImageError
    from age_estimation.data.datasets import DatasetError, parse_data_spec
    from age_estimation.engine.checkpoint import CheckpointError, load_model
    from age_estimation.engine.ensemble_selection import (
        check_candidates,
        cross_fit,
        greedy_selection,
        mixture,
    )
    from age_estimation.engine.evaluation import predict_outputs, predictions_frame
    from age_estimation.engine.inference import parse_tta
    from age_estimation.metrics import summarize

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        # Settings that would only fail after every candidate has predicted: refused first.
        if args.steps < 1 or args.folds < 2:
            raise ValueError(f"--steps {args.steps} --folds {args.folds}: expected at least 1 "
                             f"step and 2 folds")
        views = parse_tta(args.tta)
        kind, root = parse_data_spec(args.data) if args.data else ("", "")
        candidates, splits = [], {}
        for path in args.candidates:
            model, cfg = load_model(path)
            cfg.defrost()
            if args.workers >= 0:
                cfg.DATA.NUM_WORKERS = args.workers
            size = int(cfg.MODEL.IMG_SIZE)
            if size not in splits:  # one cache per input size
                splits[size] = load_split(cfg, args.split, dataset=kind, root=root)
            records, images = splits[size]
            candidates.append(predict_outputs([model.to(device)], cfg, records, images, views,
                                              device=device))
            print(f"predicted {path}", file=sys.stderr)
        records = next(iter(splits.values()))[0]
        ages = np.array([records[i].age for i in candidates[0]["index"]], dtype=np.float64)
        check_candidates(candidates, ages)
        selection = greedy_selection(candidates, ages, args.steps, args.point)
        crossfitted, fold_selections = cross_fit(candidates, ages, args.folds, args.seed,
                                                 args.steps, args.point)
    except (ConfigError, CheckpointError, DatasetError, BadImageError, FileNotFoundError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, outputs in (("selected", mixture(candidates, selection.counts)),
                          ("crossfit", crossfitted)):
        frame = predictions_frame(records, outputs, args.point)
        out = args.out_dir / f"{name}_{args.split}.csv"
        frame.to_csv(out, index=False)
        summary = summarize(frame)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
        results[name] = summary["mae"]
    alone = [float(np.abs(c[args.point] - ages).mean()) for c in candidates]
    kept = [j for j, count in enumerate(selection.counts) if count]
    weights = [int(selection.counts[j]) for j in kept]
    command = ["python", "test.py", "--resume", args.candidates[kept[0]]]
    if len(kept) > 1:
        command += ["--ensemble", *[args.candidates[j] for j in kept[1:]],
                    "--ensemble-weights", *map(str, weights)]
    if args.tta:
        command += ["--tta", ",".join(views)]
    command += ["--point", args.point]
    report = {
        "split": args.split, "data": args.data, "tta": list(views), "point": args.point,
        "steps": args.steps, "folds": args.folds, "seed": args.seed, "n": len(ages),
        "candidates": [{"checkpoint": path, "mae_alone": mae, "picks": int(count),
                        "weight": float(w)}
                       for path, mae, count, w in zip(args.candidates, alone, selection.counts,
                                                      selection.weights)],
        "mae_by_step": selection.mae_by_step, "best_step": selection.best_step,
        "mae_selected_in_sample": results["selected"], "mae_crossfit": results["crossfit"],
        "fold_weights": [s.weights.tolist() for s in fold_selections],
        "command": shlex.join(command),
    }
    (args.out_dir / "selection.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"| candidate | MAE alone ({args.split}) | picks | weight |\n"
          f"| --- | ---: | ---: | ---: |")
    for row in report["candidates"]:
        print(f"| {row['checkpoint']} | {row['mae_alone']:.3f} | {row['picks']} | "
              f"{row['weight']:.2f} |")
    print(f"\nselected at step {selection.best_step + 1} of {args.steps}: MAE "
          f"{results['selected']:.3f} on the images it was selected on (optimistic); "
          f"{args.folds}-fold cross-fitted: {results['crossfit']:.3f}")
    print(f"use: {report['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
