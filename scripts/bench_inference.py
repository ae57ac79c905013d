"""Inference throughput of every uncertainty mode on the same images, in one run.

python scripts/bench_inference.py --resume CKPT [--ensemble CKPT CKPT] [--n 256] [--synthetic]

Modes: plain, TTA with 2 and 6 views, MC-Dropout with 20 head samples, and an ensemble of 3
(--resume plus --ensemble; when fewer are given the same checkpoint is repeated, which costs the
same and is said in the table). Images: the first N cached test images of the checkpoint's
dataset, or random uint8 images at the model's resolution with --synthetic.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from age_estimation.cli import setup_logging

MC_SAMPLES = 20
TTA_SIZES = (2, 6)
ENSEMBLE_SIZE = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", required=True, help="checkpoint (.pth) or run folder")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT",
                        help=f"up to {ENSEMBLE_SIZE - 1} more checkpoints for the ensemble")
    parser.add_argument("--n", type=int, default=256, help="number of images")
    parser.add_argument("--synthetic", action="store_true", help="random images, no dataset")
    parser.add_argument("--batch-size", type=int, default=0, help="default: TEST.BATCH_SIZE")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    setup_logging()

    import numpy as np
    import torch

    from age_estimation.data.build import load_split
    from age_estimation.engine.checkpoint import load_model
    from age_estimation.engine.inference import parse_tta, predict_loader
    from age_estimation.hardware import amp_enabled, precision_name

    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg = load_model(args.resume)
    others = [load_model(p)[0] for p in args.ensemble[:ENSEMBLE_SIZE - 1]]
    repeated = ENSEMBLE_SIZE - 1 - len(others)
    # Repeating a checkpoint costs exactly what distinct members would: each runs in full.
    members = [model, *others, *[model] * repeated]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    members = [m.to(device) for m in members]
    size = cfg.MODEL.IMG_SIZE
    if args.synthetic:
        images = torch.randint(0, 256, (args.n, 3, size, size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        source = f"{args.n} random uint8 images"
    else:
        _, cached = load_split(cfg, "test")
        images = torch.from_numpy(np.array(cached[:args.n])).permute(0, 3, 1, 2).contiguous()
        source = f"the first {len(images)} cached {cfg.DATA.DATASET} test images"
    batch_size = args.batch_size or cfg.TEST.BATCH_SIZE
    # Pre-built batches: the timing covers inference, not data loading.
    batches = [{"image": images[i:i + batch_size].to(device),
                "index": torch.arange(i, min(i + batch_size, len(images)))}
               for i in range(0, len(images), batch_size)]

    modes = [("plain", [model], 1, 0)]
    modes += [(f"tta-{n}", [model], n, 0) for n in TTA_SIZES]
    if model.dropout.p > 0:
        modes.append((f"mc-dropout-{MC_SAMPLES}", [model], 1, MC_SAMPLES))
    modes.append((f"ensemble-{ENSEMBLE_SIZE}", members, 1, 0))

    print(f"{source}, {size} px, batch {batch_size}, {device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"{precision_name(cfg.TRAIN.AMP, device)}, best of {args.repeats}")
    if model.dropout.p == 0:
        print(f"mc-dropout-{MC_SAMPLES}: skipped, the checkpoint has MODEL.DROPOUT 0")
    print(f"{'mode':<16} {'models':>6} {'views':>5} {'mc':>4} {'seconds':>8} {'img/s':>8} "
          f"{'vs plain':>8}")
    plain_speed, amp = None, amp_enabled(cfg.TRAIN.AMP, device)
    for name, models, n_views, mc in modes:
        views = parse_tta(n_views)
        predict_loader(models, batches[:1], views, mc, amp=amp, device=device)  # warm-up
        best = float("inf")
        for _ in range(max(1, args.repeats)):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            predict_loader(models, batches, views, mc, amp=amp, device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        speed = len(images) / best
        plain_speed = plain_speed or speed
        print(f"{name:<16} {len(models):>6} {len(views):>5} {mc:>4} {best:>8.2f} {speed:>8.1f} "
              f"{speed / plain_speed:>7.2f}x")
    if repeated:
        print(f"ensemble-{ENSEMBLE_SIZE}: {repeated} of its members are the same checkpoint "
              f"repeated ({args.resume}); distinct members cost the same")
    return 0


if __name__ == "__main__":
    sys.exit(main())
