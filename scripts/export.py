"""Export a checkpoint for deployment: the graph takes uint8 RGB faces [B, 3, S, S] (dynamic B,
S = MODEL.IMG_SIZE, UTKFace-aligned crops) and returns (age, std_aleatoric), each [B] in years.

    python scripts/export.py --resume models/age_model.pth --format onnx --out age_model.onnx
    python scripts/export.py --resume RUN/best.pth --format torchscript --out age_model.ts

Run an ONNX export with `python demo.py --onnx age_model.onnx` (onnxruntime, no torch).
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
    parser.add_argument("--resume", required=True, help="checkpoint, run folder or bundled model")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()

    from age_estimation.engine.checkpoint import CheckpointError
    from age_estimation.engine.deploy import export_onnx, export_torchscript

    try:
        if args.format == "onnx":
            out = export_onnx(args.resume, args.out, args.opset)
        else:
            out = export_torchscript(args.resume, args.out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
