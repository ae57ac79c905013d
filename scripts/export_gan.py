"""Export a scripts/train_gan.py run's EMA generator as TorchScript, in the external-generator
format that synthesize.py and gan_quality.py accept (see age_estimation/gan/external.py):
forward(z [B, Z], labels [B, 1 + A]) -> images in [-1, 1], [B, 3, R, R], metadata inside.

    python scripts/export_gan.py --resume ../runs/gan/utkface_dcgan64 --out gan64.ts
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--resume", required=True, help="GAN run folder or checkpoint")
    parser.add_argument("--out", required=True, help="output TorchScript file")
    args = parser.parse_args(argv)
    setup_logging()

    from age_estimation.engine.checkpoint import CheckpointError
    from age_estimation.gan.external import export_torchscript

    try:
        out = export_torchscript(args.resume, args.out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
