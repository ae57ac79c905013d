"""MAE of a checkpoint under every test-time perturbation kind and severity.

    python scripts/robustness.py CKPT [--data KIND:PATH] [--split test] [--kinds blur jpeg ...]
        [--levels 1 2 3 4 5] [--limit N] [--seed 0] [--out results/robustness/NAME]

The split is decoded once; each (kind, level) perturbs the cached images
(`perturb_images`, seeded) and is predicted in-process. Writes OUT/robustness.csv (kind, level,
n, mae, mae_ci_low, mae_ci_high, bias; the clean row has kind "clean", level 0) and
OUT/robustness.png (MAE vs severity, one line per kind, the clean MAE as a horizontal line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from yacs.config import CfgNode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from age_estimation.data.build import load_split
from age_estimation.data.datasets import parse_data_spec
from age_estimation.data.perturbations import LEVELS, PERTURBATIONS, perturb_images
from age_estimation.data.records import Record
from age_estimation.engine.checkpoint import load_model
from age_estimation.engine.evaluation import predict_records
from age_estimation.metrics import bootstrap_ci
from age_estimation.models.model import AgeModel

COLUMNS = ("kind", "level", "n", "mae", "mae_ci_low", "mae_ci_high", "bias")


def error_row(kind: str, level: int, frame: pd.DataFrame, seed: int = 0) -> dict[str, object]:
    """One CSV row: MAE with its 95 % bootstrap CI, and the bias (mean pred - age)."""
    err = (frame["pred"] - frame["age"]).to_numpy(dtype=float)
    mae, low, high = bootstrap_ci(np.abs(err), seed=seed)
    return dict(zip(COLUMNS, (kind, level, len(frame), mae, low, high, float(err.mean()))))


def robustness_table(model: AgeModel, cfg: CfgNode, records: Sequence[Record], images: np.ndarray,
                     kinds: Sequence[str], levels: Sequence[int], seed: int = 0,
                     device: str = "cpu") -> pd.DataFrame:
    """The clean row, then one row per kind x level, all on the same images."""
    rows = [error_row("clean", 0, predict_records([model], cfg, records, images, device=device),
                      seed)]
    for kind in kinds:
        for level in levels:
            perturbed = perturb_images(images, kind, level, seed=seed)
            frame = predict_records([model], cfg, records, perturbed, device=device)
            rows.append(error_row(kind, level, frame, seed))
            print(f"{kind:<18} level {level}  MAE {rows[-1]['mae']:.3f}", flush=True)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot(table: pd.DataFrame, path: Path, title: str) -> Path:
    """MAE vs severity per kind (matplotlib's Agg canvas, no pyplot), clean MAE dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    perturbed = table[table["kind"] != "clean"]
    colours = [f"C{i}" for i in range(10)]
    for i, (kind, rows) in enumerate(perturbed.groupby("kind", sort=False)):
        # 13 kinds > 10 colours: the marker tells the ones sharing a colour apart.
        ax.plot(rows["level"], rows["mae"], marker="os^"[i // 10 % 3],
                color=colours[i % 10], label=kind)
    clean = table.loc[table["kind"] == "clean", "mae"].iloc[0]
    ax.axhline(clean, color="black", linestyle="--", label=f"clean ({clean:.2f})")
    ax.set_xticks(sorted(perturbed["level"].unique()))
    ax.set_xlabel("severity level")
    ax.set_ylabel("MAE (years)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def seeded_subset(records: Sequence[Record], images: np.ndarray, limit: int, seed: int
                  ) -> tuple[list, np.ndarray]:
    """`limit` images drawn without replacement by `seed` (in split order), or all of them."""
    if not 0 < limit < len(records):
        return list(records), images
    keep = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
    return [records[i] for i in keep], images[keep]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="", help="KIND:PATH (default: the checkpoint's data)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test", "all"))
    parser.add_argument("--kinds", nargs="+", default=list(PERTURBATIONS),
                        choices=sorted(PERTURBATIONS))
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS), choices=LEVELS)
    parser.add_argument("--limit", type=int, default=0,
                        help="evaluate a seeded subset of this many images (0: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subset, the perturbations and the bootstrap")
    parser.add_argument("--batch-size", type=int, default=0, help="override TEST.BATCH_SIZE")
    parser.add_argument("--out", default="", help="output folder "
                        "(default: results/robustness/<checkpoint>_<data>_<split>)")
    args = parser.parse_args(argv)

    import torch

    model, cfg = load_model(args.checkpoint)
    cfg.defrost()
    cfg.DATA.NUM_WORKERS = 0  # in-process: the images are already decoded
    if args.batch_size:
        cfg.TEST.BATCH_SIZE = args.batch_size
    kind, root = parse_data_spec(args.data) if args.data else ("", "")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    records, images = load_split(cfg, args.split, dataset=kind, root=root)
    records, images = seeded_subset(records, images, args.limit, args.seed)

    data_name = kind or cfg.DATA.DATASET
    out = Path(args.out or f"results/robustness/{Path(args.checkpoint).stem}_{data_name}_"
                           f"{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    table = robustness_table(model, cfg, records, images, args.kinds, args.levels, args.seed,
                             device)
    table.to_csv(out / "robustness.csv", index=False)
    figure = plot(table, out / "robustness.png",
                  f"{Path(args.checkpoint).name} on {data_name} {args.split} (n={len(records)})")
    print(f"clean MAE {table['mae'].iloc[0]:.3f} (n={len(records)})")
    print(f"table: {out / 'robustness.csv'}\nplot: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
