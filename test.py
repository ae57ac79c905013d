"""Evaluate a checkpoint: python test.py --resume CKPT [--data KIND:PATH] [--split test|valid]
[--tta N|POLICY|VIEWS] [--mc-dropout N] [--ensemble CKPT ...] [--ensemble-weights W ...]
[--point mean|median]
[--sigma-scale-from valid] [--out preds.csv]

Prints MAE, CS@5, ChaLearn eps-error (when label stds are known), MAE by age group and by
attribute, uncertainty quality when the predictions have a spread, and the accuracy of the
attribute heads when the model has them (MODEL.ATTRIBUTES; the --resume model's, identity
view); writes per-image predictions (CSV: pred, mean, median, std, std_aleatoric,
std_epistemic [, std_scaled][, pred_<attribute>]), the summary (JSON) and, when the predictions
have a spread, a reliability diagram (<out>.reliability.png) next to them. The CSV's `pred`
is the --point estimate; `mean` and `median` are both always there.

Test-time augmentation (--tta): a number N uses the first N views of
  identity, flip, zoom_in, zoom_in_flip, zoom_out, zoom_out_flip
(zoom = x1.1 centre crop / shrink inside a replicated border); a policy: none, flip (identity +
flip; also what a bare --tta means), zoom (identity, zoom_in, zoom_out), all (the 6 views); or a
comma-separated list of view names, e.g. --tta identity,zoom_in.
Every source of several predictions per image (views, MC-Dropout samples, ensemble members) is
combined as an equal-weight mixture (ensemble members: weighted by --ensemble-weights, one
per checkpoint, --resume first, e.g. as chosen by scripts/select_ensemble.py): std_epistemic is
the spread of the members' means, std_aleatoric the mean of the heads' own stds (NaN for
l1/l2), std the total. Ensemble members may differ in MODEL.IMG_SIZE: each sees the images
cached at its own size.

Point estimate (--point): the predictive mean (default), or its median, which minimises the
expected absolute error: for heads with a distribution over whole-year ages (dex, dldl,
ordinal) the smallest age whose cumulative probability reaches 1/2, of the mixture for views,
MC-Dropout samples and ensembles; for the other heads the mean.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from age_estimation.cli import POINT_ESTIMATES, setup_logging
from age_estimation.config import ConfigError
from age_estimation.data.cache import BadImageError
from age_estimation.data.datasets import DatasetError, parse_data_spec
from age_estimation.engine.checkpoint import CheckpointError, load_checkpoint, load_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", required=True, help="checkpoint (.pth) or run folder")
    parser.add_argument("--data", default="",
                        help="KIND:PATH, e.g. fgnet:/x/fgnet, csv:/x/labels.csv, "
                             "utkface:/x/folder, appa_real:/x/appa-real-release "
                             "(default: the checkpoint's own dataset)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test", "all"))
    parser.add_argument("--out", default="", help="predictions CSV (default: next to the ckpt)")
    parser.add_argument("--tta", nargs="?", const="flip", default=None, metavar="N|POLICY|VIEWS",
                        help="test-time augmentation: a number of views (0-6), a policy "
                             "(none, flip, zoom, all) or comma-separated view names (see above)")
    parser.add_argument("--mc-dropout", type=int, default=0, metavar="N",
                        help="MC-Dropout samples of the head per view (needs MODEL.DROPOUT > 0)")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT",
                        help="more checkpoints whose predictions are combined with --resume's")
    parser.add_argument("--ensemble-weights", nargs="+", type=float, default=None, metavar="W",
                        help="mixture weights of the checkpoints, --resume first (default: equal)")
    parser.add_argument("--point", default="mean", choices=POINT_ESTIMATES,
                        help="the point estimate reported as pred and scored (see above)")
    parser.add_argument("--sigma-scale-from", choices=("valid",), default=None,
                        help="post-hoc recalibration: fit one std multiplier (Gaussian NLL) on "
                             "the valid split of the checkpoint's own dataset, with the same "
                             "inference options; report raw and scaled uncertainty metrics")
    parser.add_argument("--perturb", default="", metavar="KIND:LEVEL",
                        help="perturb every evaluated image, e.g. blur:3 (levels 1-5; kinds in "
                             "age_estimation/data/perturbations.py), seeded by --seed")
    parser.add_argument("--adapt-bn", action="store_true",
                        help="AdaBN: re-estimate BatchNorm statistics on the evaluated images "
                             "(no labels) before predicting")
    parser.add_argument("--adapt-split", type=float, default=0.0, metavar="FRACTION",
                        help="with --adapt-bn: adapt on this seeded share of the images and "
                             "evaluate on the rest (default 0: adapt and evaluate on all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the MC-Dropout masks, perturbations and adaptation split")
    parser.add_argument("--batch-size", type=int, default=0, help="override TEST.BATCH_SIZE")
    parser.add_argument("--workers", type=int, default=-1, help="override DATA.NUM_WORKERS")
    args = parser.parse_args(argv)
    setup_logging()

    import pandas as pd
    import torch

    from age_estimation.data.build import load_split
    from age_estimation.data.imbalance import ages_from_histogram, mae_by_shot
    from age_estimation.data.perturbations import parse_perturb, perturb_images
    from age_estimation.engine.evaluation import (
        adapt_to_target,
        combine_outputs,
        predict_attributes,
        predict_outputs,
        predictions_frame,
    )
    from age_estimation.engine.inference import member_weights, parse_tta
    from age_estimation.metrics import (
        fit_sigma_scale,
        format_summary,
        reliability_diagram,
        summarize,
        uncertainty_summary,
    )

    start = time.perf_counter()
    try:
        views = parse_tta(args.tta)
        perturbation = parse_perturb(args.perturb) if args.perturb else None
        if args.adapt_split and not (args.adapt_bn and 0.0 < args.adapt_split < 1.0):
            raise ValueError(f"--adapt-split {args.adapt_split}: expected a fraction in (0, 1) "
                             f"together with --adapt-bn")
        if args.mc_dropout < 0:
            raise ValueError(f"--mc-dropout {args.mc_dropout}: expected a number of samples >= 0")
        checkpoints = [args.resume, *args.ensemble]
        weights = member_weights(args.ensemble_weights, checkpoints) or [1.0] * len(checkpoints)
        loaded = [load_model(p) for p in checkpoints]
        models = [model for model, _ in loaded]
        cfg = loaded[0][1].clone()
        # Members at other input sizes get their own cache of the images at that size; each
        # group is mixed with its members' weights, the groups with their summed weights.
        groups: dict[int, list] = {}
        for (model, member_cfg), weight in zip(loaded, weights):
            groups.setdefault(member_cfg.MODEL.IMG_SIZE, []).append((model, weight))
        cfg.defrost()
        if args.batch_size:
            cfg.TEST.BATCH_SIZE = args.batch_size
        if args.workers >= 0:
            cfg.DATA.NUM_WORKERS = args.workers
        kind, root = parse_data_spec(args.data) if args.data else ("", "")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        models = [m.to(device) for m in models]

        def predict(split: str, dataset: str = "", dataset_root: str = "", target=False):
            """Predict a split; the evaluated target is perturbed and (AdaBN) adapted to, and
            gets the --resume model's attribute predictions (pred_<name>) and accuracy."""
            outputs = []
            for size, group in groups.items():  # the --resume model's size first
                members = [model for model, _ in group]
                torch.manual_seed(args.seed)  # the same MC-Dropout masks on every run
                size_cfg = cfg.clone()
                size_cfg.MODEL.IMG_SIZE = size
                records, images = load_split(size_cfg, split, dataset=dataset, root=dataset_root)
                if target and perturbation:
                    images = perturb_images(images, *perturbation, seed=args.seed)
                if target and args.adapt_bn:
                    records, images = adapt_to_target(members, size_cfg, records, images,
                                                      args.adapt_split, args.seed, device)
                outputs.append(predict_outputs(members, size_cfg, records, images, views,
                                               args.mc_dropout, device,
                                               [weight for _, weight in group]))
                if len(outputs) == 1:
                    first = size_cfg, records, images
            combined = combine_outputs(outputs, [sum(w for _, w in g) for g in groups.values()])
            if target and args.point == "median" and "probs" not in combined:
                print("warning: --point median: not every head has a distribution over ages "
                      "(dex, dldl, ordinal); the median reported is the mean", file=sys.stderr)
            frame = predictions_frame(first[1], combined, args.point)
            if not (target and models[0].attributes is not None):
                return frame, {}
            columns, accuracy = predict_attributes(models[0], *first, device)
            return pd.concat([frame, columns], axis=1), accuracy

        # The valid split first: it calibrates the models as trained, before any adaptation.
        calibration = predict("valid")[0] if args.sigma_scale_from else None
        frame, attribute_accuracy = predict(args.split, kind, root, target=True)
    except (ConfigError, CheckpointError, DatasetError, BadImageError, FileNotFoundError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    ckpt = Path(args.resume)
    ckpt_dir = ckpt if ckpt.is_dir() else ckpt.parent
    name = f"predictions_{kind + '_' if kind else ''}{args.split}"
    out = Path(args.out) if args.out else ckpt_dir / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = None
    if calibration is not None:
        scale = fit_sigma_scale(calibration["pred"], calibration["std"], calibration["age"])
        frame["std_scaled"] = frame["std"] * scale
    frame.to_csv(out, index=False)
    summary = summarize(frame)
    if attribute_accuracy:
        summary["attribute_accuracy"] = attribute_accuracy
    # Training images per integer age (checkpoints from before this key: no shot breakdown).
    counts = load_checkpoint(args.resume).get("train_age_counts")
    if counts:
        shots = mae_by_shot(frame, ages_from_histogram(counts))
        summary["by_shot"] = shots.to_dict(orient="records")
        summary["train_age_counts"] = counts  # the report's per-image shots and their CIs
    summary["inference"] = {"checkpoints": [args.resume, *args.ensemble],
                            "weights": args.ensemble_weights, "tta": list(views),
                            "mc_dropout": args.mc_dropout, "point": args.point,
                            "seed": args.seed,
                            "perturb": args.perturb, "adapt_bn": args.adapt_bn,
                            "adapt_split": args.adapt_split,
                            "split": args.split,
                            "data": args.data or f"{cfg.DATA.DATASET}:{cfg.DATA.ROOT}",
                            "seconds": time.perf_counter() - start}
    figures = []
    if summary["uncertainty"]["n_uncertainty"]:
        figures.append(reliability_diagram(frame, out.with_suffix(".reliability.png"),
                                           title=f"{out.stem}: raw std"))
    if scale is not None:
        if args.sigma_scale_from == args.split and not args.data:
            print("warning: the sigma scale is fitted on the evaluated split itself",
                  file=sys.stderr)
        summary["sigma_scale"] = {"value": scale, "fitted_on": args.sigma_scale_from,
                                  "n_fit": len(calibration)}
        summary["uncertainty_scaled"] = uncertainty_summary(frame, std_column="std_scaled")
        if summary["uncertainty_scaled"]["n_uncertainty"]:
            figures.append(reliability_diagram(
                frame, out.with_suffix(".reliability_scaled.png"), std_column="std_scaled",
                title=f"{out.stem}: std x {scale:.3f}"))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=float))
    print(format_summary(summary))
    if scale is not None:
        scaled = summary["uncertainty_scaled"]
        print(f"\nSigma-scaled (x{scale:.3f}, fitted on {args.sigma_scale_from}): "
              f"NLL {scaled['nll']:.3f}  coverage@90 {scaled['coverage_90']:.3f}  "
              f"calibration error {scaled['calibration_error']:.4f}")
    print(f"predictions: {out}")
    for figure in figures:
        print(f"reliability diagram: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
