"""Draw faces from a generator, pseudo-label them with a teacher age model, write a dataset.

    python scripts/synthesize.py --generator ../runs/gan/utkface_dcgan64 \\
        --teacher output/utkface_resnet18_dex/best.pth --n 20000 --out ../runs/synth/all
    python scripts/synthesize.py --generator gan.ts --teacher CKPT \\
        --ages 60-100 --per-age 200 --min-confidence 6 --out ../runs/synth/old

--generator: a scripts/train_gan.py run folder or checkpoint (its EMA generator), or a
TorchScript generator (see age_estimation/gan/external.py for the expected signature).
Each image's label is the teacher's predicted mean age and std; --min-confidence STD keeps
only images the teacher is sure about (std < STD), drawing more until the quota is met.
--ages (60-100, or 20,30,40) picks the conditioning ages, e.g. to fill rare ages; without it
ages follow the generator's training distribution. OUT gets images/NNNNNNN.png, labels.csv
(`csv` dataset format: path,age,age_std[,conditioned_age, attributes]) and provenance.json
(what made it, and a summary of the teacher's labels: do they follow the asked-for ages?),
so `DATA.DATASET csv DATA.ROOT OUT/labels.csv` trains on it like any other dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

try:
    from age_estimation.cli import setup_logging
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from age_estimation.cli import setup_logging


def parse_ages(spec: str) -> list[float]:
    """`60-100` (inclusive, whole years) or a comma-separated list `20,30,42.5`."""
    text = spec.strip()
    low, dash, high = text.partition("-")
    if dash and low.strip():
        first, last = int(low), int(high)
        if first > last:
            raise ValueError(f"--ages {spec}: empty range")
        return [float(a) for a in range(first, last + 1)]
    return [float(a) for a in text.split(",") if a.strip()]


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", required=True, help="GAN run/checkpoint or TorchScript")
    parser.add_argument("--teacher", required=True, help="age model checkpoint for the labels")
    parser.add_argument("--out", required=True, help="output folder (a new csv dataset)")
    parser.add_argument("--n", type=int, default=0, help="images to write")
    parser.add_argument("--ages", default="", help="conditioning ages: LOW-HIGH or a,b,c")
    parser.add_argument("--per-age", type=int, default=0, help="images per age of --ages")
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="STD",
                        help="keep only images whose teacher std is below STD (0 = keep all)")
    parser.add_argument("--max-draws", type=int, default=0,
                        help="give up after this many drawn images (default 20 x the quota)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--z-dim", type=int, default=0, help="latent size (external, no metadata)")
    parser.add_argument("--unconditional", action="store_true",
                        help="the generator takes z only (external, no metadata)")
    parser.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    setup_logging()

    import cv2
    import numpy as np
    import pandas as pd
    import torch

    from age_estimation.engine.checkpoint import load_model
    from age_estimation.gan.quality import label_summary, predict_ages

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        targets = parse_ages(args.ages) if args.ages else []
        if args.per_age:
            if not targets:
                raise ValueError("--per-age needs --ages")
            targets = [a for a in targets for _ in range(args.per_age)]
        n = len(targets) if args.per_age else args.n
        if n < 1:
            raise ValueError("say how many images: --n N, or --ages with --per-age K")
        from age_estimation.gan.external import load_generator

        generator = load_generator(args.generator, device, args.z_dim or None,
                                   False if args.unconditional else None)
        if targets and not generator.conditional:
            raise ValueError("--ages needs a conditional generator")
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    teacher, teacher_cfg = load_model(args.teacher)
    teacher.to(device)
    rng = np.random.default_rng(args.seed)
    z_generator = torch.Generator().manual_seed(args.seed)
    # Ages still to fill, in order; a rejected image's age goes back in the queue.
    pending = list(np.resize(np.asarray(targets, dtype=np.float32), n)) if targets else []
    max_draws = args.max_draws or 20 * n
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, drawn = [], 0
    while len(rows) < n and drawn < max_draws:
        count = min(args.batch_size, n - len(rows), max_draws - drawn)
        if pending:
            ages, pending = np.asarray(pending[:count], dtype=np.float32), pending[count:]
            count = len(ages)
        else:
            ages = generator.draw_ages(count, rng)
        labels = generator.labels_for(ages, rng) if generator.conditional else None
        z = torch.randn(count, generator.z_dim, generator=z_generator)
        images = generator.generate(z, None if labels is None else torch.from_numpy(labels))
        drawn += count
        means, stds = predict_ages(teacher, images, teacher_cfg.MODEL.IMG_SIZE, device=device)
        if args.min_confidence and np.isnan(stds).all():
            print("error: --min-confidence needs a teacher that predicts a std (e.g. DEX, "
                  "Gaussian); this one has none", file=sys.stderr)
            return 2
        keep = stds < args.min_confidence if args.min_confidence else np.ones(count, bool)
        if targets:
            pending.extend(ages[~keep].tolist())
        pixels = images.permute(0, 2, 3, 1).numpy()
        for i in np.flatnonzero(keep):
            name = f"images/{len(rows):07d}.png"
            cv2.imwrite(str(out / name), pixels[i][:, :, ::-1])
            row = {"path": name, "age": round(float(np.clip(means[i], 0, 130)), 3),
                   "age_std": round(float(stds[i]), 3)}
            if labels is not None:
                row["conditioned_age"] = float(labels[i, 0])
                for j, attr in enumerate(generator.label_columns[1:]):
                    row[attr] = generator.vocab[attr][int(labels[i, 1 + j])]
            rows.append(row)
    columns = ["path", "age", "age_std"]
    if generator.conditional:
        columns += ["conditioned_age", *generator.label_columns[1:]]
    table = pd.DataFrame(rows, columns=columns)
    table.to_csv(out / "labels.csv", index=False)
    generator_path = Path(args.generator)
    if generator_path.is_dir():
        generator_path = generator_path / "last.pth"
    provenance = {
        "generator": str(generator_path.resolve()), "generator_sha256": sha256(generator_path),
        "teacher": str(Path(args.teacher).resolve()), "teacher_sha256": sha256(args.teacher),
        "seed": args.seed, "command": shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
        "requested": n, "written": len(rows), "drawn": drawn,
        "min_confidence": args.min_confidence or None, "ages": args.ages or None,
        "teacher_labels": label_summary(table),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {len(rows)} of {n} images ({drawn} drawn) to {out}")
    if len(rows) < n:
        print(f"warning: only {len(rows)} images passed --min-confidence {args.min_confidence} "
              f"in {drawn} draws", file=sys.stderr)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
