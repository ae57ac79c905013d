"""End-to-end speed of the demo pipeline (decode → detect + align → predict) on a photo folder.

    python scripts/bench_demo.py [--img_dir /work/shared/data/fgnet/images] [--limit 100]
        [--resume CKPT | --onnx F] [--detector hog|cnn] [--upsample 0] [--threads N]

Prints a table: detection rate (images with at least one face), time per image of each stage,
faces/s and images/s end to end, with the command line and machine load to quote alongside.
The first image is a warm-up (model and detector loading, thread pools) and is not counted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

try:
    from age_estimation.cli import setup_logging
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from age_estimation.cli import setup_logging

from age_estimation.data.cache import BadImageError, load_image
from age_estimation.data.datasets import default_data_dir
from age_estimation.pipeline import DEFAULT_MIN_SCORE, AgeEstimator, image_files, load_age_model

STAGES = ("decode", "detect", "predict")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img_dir", default=str(default_data_dir() / "fgnet" / "images"))
    parser.add_argument("--limit", type=int, default=100, help="images to time (0 = all)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--resume", help="checkpoint (default: the bundled model)")
    model.add_argument("--onnx", help="ONNX export, run with onnxruntime")
    parser.add_argument("--detector", choices=("hog", "cnn"), default="hog")
    parser.add_argument("--upsample", type=int, default=0)
    parser.add_argument("--min_score", type=float, default=DEFAULT_MIN_SCORE)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    setup_logging()
    backend = "onnxruntime"
    if not args.onnx:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        backend = f"torch, {torch.get_num_threads()} threads"
    runner = load_age_model(args.resume, args.onnx)
    estimator = AgeEstimator(runner, args.detector, upsample=args.upsample,
                             min_score=args.min_score)
    paths = image_files(args.img_dir)
    paths = paths[: args.limit + 1] if args.limit else paths
    if len(paths) < 2:
        print(f"error: need at least 2 images in {args.img_dir}", file=sys.stderr)
        return 2

    seconds = dict.fromkeys(STAGES, 0.0)
    images = found = faces = unreadable = 0
    for i, path in enumerate(paths):
        times = [time.perf_counter()]
        try:
            image = load_image(str(path))
        except BadImageError as err:
            print(f"skipped: {err}", file=sys.stderr)
            unreadable += 1
            continue
        times.append(time.perf_counter())
        detected = estimator.detect(image)
        times.append(time.perf_counter())
        estimator.predict(detected)
        times.append(time.perf_counter())
        if i == 0:
            continue  # warm-up
        images += 1
        found += bool(detected)
        faces += len(detected)
        for stage, start, end in zip(STAGES, times[:-1], times[1:], strict=True):
            seconds[stage] += end - start

    total = sum(seconds.values())
    model_name = args.onnx or args.resume or "bundled model"
    given = sys.argv[1:] if argv is None else argv
    print(f"command: python {shlex.join(['scripts/bench_demo.py', *given])}")
    print(f"model: {model_name} ({backend}, "
          f"{runner.image_size} px); detector {args.detector}, upsample {args.upsample}, "
          f"min score {args.min_score}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    header = ("images", "with face", "detection rate", "faces", "decode ms/img",
              "detect+align ms/img", "predict ms/img", "faces/s", "images/s")
    row = (images, found, f"{found / images:.1%}", faces,
           *(f"{1000 * seconds[s] / images:.1f}" for s in STAGES),
           f"{faces / total:.2f}", f"{images / total:.2f}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("| " + " | ".join(map(str, row)) + " |")
    if unreadable:
        print(f"({unreadable} unreadable files skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
