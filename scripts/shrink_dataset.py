"""Write a smaller copy of a dataset, to move it to a machine it cannot be downloaded to
(e.g. a rented GPU box with a small upload limit):

    python scripts/shrink_dataset.py utkface ../shared/data/utkface /tmp/small/utkface --size 64
    python scripts/shrink_dataset.py fgnet ../shared/data/fgnet /tmp/small/fgnet --size 200

utkface: every image resized to SIZE x SIZE with INTER_AREA (what the image cache does when it
decodes at that size) and stored as JPEG (quality --quality); splits.csv copied. Training at SIZE
px from the copy then differs from training on the originals only by one JPEG re-encoding.
fgnet: each photo scaled so that its shorter side is at most SIZE, the landmarks in
points/*.pts scaled with it (pixel centres at integers), so the aligned crops stay the same face.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.data.cache import load_image, resize_square  # noqa: E402
from age_estimation.data.datasets import read_pts  # noqa: E402


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    path.write_bytes(data.tobytes())


def shrink_utkface(src: Path, dst: Path, size: int, quality: int) -> int:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "splits.csv", dst / "splits.csv")

    def one(path: Path) -> None:
        _write_jpeg(dst / "images" / path.name, resize_square(load_image(str(path)), size),
                    quality)

    files = sorted((src / "images").iterdir())
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, files))
    return len(files)


def shrink_fgnet(src: Path, dst: Path, size: int, quality: int) -> int:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "points").mkdir(parents=True, exist_ok=True)
    files = sorted((src / "images").iterdir())
    for path in files:
        image = load_image(str(path))
        scale = min(1.0, size / min(image.shape[:2]))
        height, width = (round(s * scale) for s in image.shape[:2])
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        _write_jpeg(dst / "images" / path.name, small, quality)
        pts_name = f"{path.stem.lower()}.pts"
        points = (read_pts(src / "points" / pts_name, 68) + 0.5) * scale - 0.5
        lines = ["version: 1", "n_points: 68", "{", *(f"{x:.3f} {y:.3f}" for x, y in points), "}"]
        (dst / "points" / pts_name).write_text("\n".join(lines) + "\n")
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["utkface", "fgnet"])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args(argv)
    shrink = shrink_utkface if args.kind == "utkface" else shrink_fgnet
    count = shrink(args.src, args.dst, args.size, args.quality)
    print(f"{args.kind}: {count} images -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
