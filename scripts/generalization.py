"""Cross-dataset generalization of a (UTKFace-trained) checkpoint on FG-NET: plain, TTA (flip),
AdaBN and AdaBN + TTA, overall and by age group.

    python scripts/generalization.py CKPT [--fgnet PATH | --data KIND:PATH] [--split all]
        [--adapt-fraction 0.5] [--seed 0] [--out results/generalization/NAME]

AdaBN adapts the BatchNorm statistics on a seeded share of the target images (no labels) and
is evaluated on the rest (the evaluation half); plain and TTA are reported on all images and,
for a like-for-like comparison, on that same evaluation half, with the paired bootstrap CI of
each half condition's MAE minus plain's. Writes OUT/generalization.csv (condition, images, n,
mae, mae_ci_low, mae_ci_high, delta_vs_plain[_ci_low|_ci_high], n_<group>, mae_<group>) and
OUT/generalization.md (the same as a markdown table).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from age_estimation.data.build import load_split
from age_estimation.data.datasets import default_data_dir, parse_data_spec
from age_estimation.data.records import Record
from age_estimation.engine.adabn import adaptation_split
from age_estimation.engine.checkpoint import load_model
from age_estimation.engine.evaluation import adapt_to_target, predict_records
from age_estimation.engine.inference import parse_tta
from age_estimation.metrics import AGE_GROUPS, bootstrap_ci, bootstrap_diff_ci, mae_by_group

TTA = parse_tta("flip")


def condition_row(condition: str, images: str, frame: pd.DataFrame,
                  plain: pd.DataFrame | None = None, seed: int = 0) -> dict[str, object]:
    """MAE with its bootstrap CI and per age group; with `plain` (the same images, same order)
    also the paired bootstrap CI of MAE(frame) - MAE(plain)."""
    err = (frame["pred"] - frame["age"]).abs().to_numpy(dtype=float)
    mae, low, high = bootstrap_ci(err, seed=seed)
    row: dict[str, object] = {"condition": condition, "images": images, "n": len(frame),
                              "mae": mae, "mae_ci_low": low, "mae_ci_high": high}
    delta = (math.nan,) * 3
    if plain is not None:
        if list(plain["id"]) != list(frame["id"]):
            raise ValueError(f"{condition}: compared with plain on different images")
        plain_err = (plain["pred"] - plain["age"]).abs().to_numpy(dtype=float)
        delta = bootstrap_diff_ci(err, plain_err, seed=seed)
    row.update(zip(("delta_vs_plain", "delta_ci_low", "delta_ci_high"), delta))
    for group in mae_by_group(frame).itertuples():
        row[f"n_{group.group}"], row[f"mae_{group.group}"] = group.n, group.mae
    return row


def markdown(table: pd.DataFrame) -> str:
    """The table as markdown: MAE [95 % CI], the change vs plain, MAE (n) per age group."""
    groups = [g[0] for g in AGE_GROUPS]
    lines = ["| condition | images | n | MAE [95% CI] | Δ vs plain, same images [95% CI] | "
             + " | ".join(groups) + " |",
             "| --- | --- | ---: | --- | --- | " + " | ".join("---:" for _ in groups) + " |"]
    for r in table.to_dict(orient="records"):
        delta = ("—" if math.isnan(r["delta_vs_plain"]) else
                 f"{r['delta_vs_plain']:+.2f} [{r['delta_ci_low']:+.2f}, "
                 f"{r['delta_ci_high']:+.2f}]")
        cells = [f"{r[f'mae_{g}']:.2f} ({r[f'n_{g}']})" if r[f"n_{g}"] else "—" for g in groups]
        lines.append(f"| {r['condition']} | {r['images']} | {r['n']} | {r['mae']:.2f} "
                     f"[{r['mae_ci_low']:.2f}, {r['mae_ci_high']:.2f}] | {delta} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--fgnet", default=str(default_data_dir() / "fgnet"),
                        help="the FG-NET folder (images/, points/)")
    parser.add_argument("--data", default="",
                        help="KIND:PATH of another target dataset (overrides --fgnet)")
    parser.add_argument("--split", default="all", choices=("train", "valid", "test", "all"))
    parser.add_argument("--adapt-fraction", type=float, default=0.5,
                        help="share of the target images AdaBN adapts on")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the adaptation split, its shuffling and the bootstrap")
    parser.add_argument("--out", default="", help="output folder "
                        "(default: results/generalization/<checkpoint>_<data>)")
    args = parser.parse_args(argv)

    import torch

    kind, root = parse_data_spec(args.data or f"fgnet:{args.fgnet}")
    model, cfg = load_model(args.checkpoint)
    cfg.defrost()
    cfg.DATA.NUM_WORKERS = 0  # in-process: the images are already decoded
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    records, images = load_split(cfg, args.split, dataset=kind, root=root)

    def predict(views: Sequence[str], recs: Sequence[Record], imgs: np.ndarray) -> pd.DataFrame:
        return predict_records([model], cfg, recs, imgs, views, device=device)

    # Before adaptation: the model as trained, on all images and on the evaluation half.
    plain, tta = predict(("identity",), records, images), predict(TTA, records, images)
    _, evaluate = adaptation_split(len(records), args.adapt_fraction, args.seed)
    plain_half, tta_half = (f.iloc[evaluate].reset_index(drop=True) for f in (plain, tta))
    eval_records, eval_images = adapt_to_target([model], cfg, records, images,
                                                args.adapt_fraction, args.seed, device)
    adabn = predict(("identity",), eval_records, eval_images)
    adabn_tta = predict(TTA, eval_records, eval_images)

    rows = [condition_row("plain", "all", plain, seed=args.seed),
            condition_row("tta", "all", tta, plain, args.seed),
            condition_row("plain", "eval half", plain_half, seed=args.seed),
            condition_row("tta", "eval half", tta_half, plain_half, args.seed),
            condition_row("adabn", "eval half", adabn, plain_half, args.seed),
            condition_row("adabn+tta", "eval half", adabn_tta, plain_half, args.seed)]
    table = pd.DataFrame(rows)

    out = Path(args.out or f"results/generalization/{Path(args.checkpoint).stem}_{kind}")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "generalization.csv", index=False)
    text = (f"{Path(args.checkpoint).name} on {kind} ({args.split}, {len(records)} images); "
            f"AdaBN adapts on a seeded {args.adapt_fraction:g} share (seed {args.seed}) and is "
            f"evaluated on the other {len(evaluate)} images; TTA = {'+'.join(TTA)}.\n\n"
            + markdown(table))
    (out / "generalization.md").write_text(text)
    print(text)
    print(f"table: {out / 'generalization.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
