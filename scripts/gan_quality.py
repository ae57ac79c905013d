"""Score a generator without any downloaded network, using the toolkit's own age model:

* Fréchet distance between real and generated faces in the age model's pooled-feature space,
  next to the distance between two random halves of the real set (the noise floor): both
  compare N/2 against N/2 images, since the estimate's bias depends on the sample size;
* the spread of the generated faces in that space over the real faces' spread (1 = as varied as
  real faces, near 0 = one face for every latent);
* how well the teacher's predicted age follows the conditioning age: MAE, Pearson r, bias.
* for the toolkit's own checkpoints, how far the generator was trained (steps, minutes).

    python scripts/gan_quality.py --generator ../runs/gan/utkface_dcgan64 \\
        --teacher output/utkface_resnet18_dex/best.pth --n 2000 [--json quality.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    from age_estimation.cli import setup_logging
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from age_estimation.cli import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", required=True, help="GAN run/checkpoint or TorchScript")
    parser.add_argument("--teacher", required=True, help="age model checkpoint")
    parser.add_argument("--data", default="", help="real faces KIND:PATH (default: teacher's)")
    parser.add_argument("--split", default="train", help="split of the real faces")
    parser.add_argument("--n", type=int, default=2000, help="real and generated images each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--z-dim", type=int, default=0, help="latent size (external, no metadata)")
    parser.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--json", default="", help="also write the scores to this file")
    args = parser.parse_args(argv)
    setup_logging()

    import numpy as np
    import torch

    from age_estimation.data.build import load_split
    from age_estimation.data.datasets import parse_data_spec
    from age_estimation.engine.checkpoint import load_model
    from age_estimation.gan.external import load_generator
    from age_estimation.gan.quality import (
        age_features,
        age_fidelity,
        frechet_distance,
        predict_ages,
        spread,
    )

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher, cfg = load_model(args.teacher)
    teacher.to(device)
    size = cfg.MODEL.IMG_SIZE
    dataset, root = parse_data_spec(args.data) if args.data else ("", "")
    _, real = load_split(cfg, args.split, dataset, root)
    rng = np.random.default_rng(args.seed)
    real = real[np.sort(rng.permutation(len(real))[:args.n])]
    generator = load_generator(args.generator, device, args.z_dim or None)
    z_generator = torch.Generator().manual_seed(args.seed)
    images, conditioned = [], []
    for start in range(0, args.n, args.batch_size):
        count = min(args.batch_size, args.n - start)
        ages = generator.draw_ages(count, rng)
        labels = (torch.from_numpy(generator.labels_for(ages, rng))
                  if generator.conditional else None)
        images.append(generator.generate(torch.randn(count, generator.z_dim,
                                                     generator=z_generator), labels))
        conditioned.append(ages)
    fake = torch.cat(images)
    real_features = age_features(teacher, real, size, args.batch_size, device)
    fake_features = age_features(teacher, fake, size, args.batch_size, device)
    half = min(len(real_features), len(fake_features)) // 2
    reference, other_real = real_features[:half], real_features[half:2 * half]
    scores = {"n_real": len(real_features), "n_generated": len(fake_features),
              "frechet_n": half,
              "frechet": frechet_distance(reference, fake_features[:half]),
              "frechet_real_halves": frechet_distance(reference, other_real),
              "spread_ratio": spread(fake_features) / spread(real_features),
              **generator.training}
    print(f"Frechet distance (age-model features, {half} vs {half}) {scores['frechet']:.3f} "
          f"(real vs real: {scores['frechet_real_halves']:.3f}); spread of generated / real "
          f"faces {scores['spread_ratio']:.3f}")
    if generator.conditional:
        predicted, _ = predict_ages(teacher, fake, size, args.batch_size, device)
        fidelity = age_fidelity(np.concatenate(conditioned), predicted)
        scores.update({f"age_{k}": v for k, v in fidelity.items()})
        print(f"age following: MAE {fidelity['mae']:.2f} years, Pearson r "
              f"{fidelity['pearson_r']:.3f}, bias {fidelity['bias']:+.2f} years")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
