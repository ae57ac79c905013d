"""Evaluate a checkpoint: python test.py --resume CKPT [--data KIND:PATH] [--split test|valid]
[--tta N|flip|VIEWS] [--mc-dropout N] [--ensemble CKPT ...] [--out preds.csv]

Prints MAE, CS@5, ChaLearn eps-error (when label stds are known), MAE by age group and by
attribute, uncertainty quality when the predictions have a spread; writes per-image predictions
(CSV) and the summary (JSON) next to them.
"""

import argparse
import json
import sys
from pathlib import Path

from age_estimation.cli import setup_logging
from age_estimation.config import ConfigError
from age_estimation.data.cache import BadImageError
from age_estimation.data.datasets import DatasetError, parse_data_spec
from age_estimation.engine.checkpoint import CheckpointError, load_model


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
    parser.add_argument("--tta", nargs="?", const="flip", default=None,
                        help="test-time augmentation: N views, 'flip', or a list of view names")
    parser.add_argument("--mc-dropout", type=int, default=0, metavar="N",
                        help="MC-Dropout samples of the head (needs MODEL.DROPOUT > 0)")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT",
                        help="more checkpoints whose predictions are combined with --resume's")
    parser.add_argument("--batch-size", type=int, default=0, help="override TEST.BATCH_SIZE")
    parser.add_argument("--workers", type=int, default=-1, help="override DATA.NUM_WORKERS")
    args = parser.parse_args(argv)
    setup_logging()

    import torch

    from age_estimation.data.build import load_split
    from age_estimation.engine.evaluation import predict_records
    from age_estimation.engine.inference import parse_tta
    from age_estimation.metrics import format_summary, summarize

    try:
        views = parse_tta(args.tta)
        loaded = [load_model(p) for p in [args.resume, *args.ensemble]]
        models = [model for model, _ in loaded]
        cfg = loaded[0][1].clone()
        sizes = {c.MODEL.IMG_SIZE for _, c in loaded}
        if len(sizes) > 1:
            raise ConfigError(f"ensemble members use different MODEL.IMG_SIZE: {sorted(sizes)}")
        cfg.defrost()
        if args.batch_size:
            cfg.TEST.BATCH_SIZE = args.batch_size
        if args.workers >= 0:
            cfg.DATA.NUM_WORKERS = args.workers
        kind, root = parse_data_spec(args.data) if args.data else ("", "")
        records, images = load_split(cfg, args.split, dataset=kind, root=root)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        models = [m.to(device) for m in models]
        frame = predict_records(models, cfg, records, images, views, args.mc_dropout, device)
    except (ConfigError, CheckpointError, DatasetError, BadImageError, FileNotFoundError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    ckpt = Path(args.resume)
    ckpt_dir = ckpt if ckpt.is_dir() else ckpt.parent
    name = f"predictions_{kind + '_' if kind else ''}{args.split}"
    out = Path(args.out) if args.out else ckpt_dir / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    summary = summarize(frame)
    summary["inference"] = {"checkpoints": [args.resume, *args.ensemble], "tta": list(views),
                            "mc_dropout": args.mc_dropout, "split": args.split,
                            "data": args.data or f"{cfg.DATA.DATASET}:{cfg.DATA.ROOT}"}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=float))
    print(format_summary(summary))
    print(f"predictions: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
