"""Derive the UTKFace crop template used by `age_estimation.faces` (UTKFACE_TEMPLATE*).

Runs dlib's frontal HOG detector and its 68- and 5-point landmark predictors on random UTKFace
*train* crops, maps the landmarks to normalized crop coordinates (u = (x + 0.5) / width) and
prints the mean and spread of the five alignment points, ready to paste into faces.py.

    python scripts/derive_face_template.py [--data DIR] [--n 400] [--seed 0] [--upsample 1]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import random
import sys
from pathlib import Path

import cv2
import numpy as np

try:
    from age_estimation import faces
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from age_estimation import faces

NAMES_68 = ["image-left eye centre", "image-right eye centre", "nose tip",
            "image-left mouth corner", "image-right mouth corner"]
NAMES_5 = ["image-right eye outer corner", "image-right eye inner corner",
           "image-left eye outer corner", "image-left eye inner corner", "nose base"]


def default_data() -> Path:
    try:
        from age_estimation.data.datasets import default_data_dir

        return default_data_dir()
    except ImportError:
        return Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(folder: Path, files: list[str], upsample: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized (n, 5, 2) alignment points from the 68- and the 5-point predictor."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predict68 = dlib.shape_predictor(str(faces.model_path("68")))
    predict5 = dlib.shape_predictor(str(faces.model_path("5")))
    points68, points5 = [], []
    for name in files:
        bgr = cv2.imread(str(folder / name))
        if bgr is None:
            continue
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rects, _scores, _ = detector.run(image, upsample, 0.0)
        if not rects:
            continue
        rect = rects[int(np.argmax([r.area() for r in rects]))]
        size = np.array([image.shape[1], image.shape[0]], dtype=np.float64)
        lm68 = np.array([[p.x, p.y] for p in predict68(image, rect).parts()], np.float64)
        lm5 = np.array([[p.x, p.y] for p in predict5(image, rect).parts()], np.float64)
        points68.append((faces.alignment_points(lm68, "dlib68")[0] + 0.5) / size)
        points5.append((lm5 + 0.5) / size)
    return np.array(points68), np.array(points5)


def report(title: str, names: list[str], points: np.ndarray) -> None:
    mean, std, median = points.mean(axis=0), points.std(axis=0), np.median(points, axis=0)
    print(f"\n{title}")
    print(f"  {'point':30s} {'mean x':>8s} {'mean y':>8s} {'std x':>7s} {'std y':>7s}"
          f" {'median x':>9s} {'median y':>9s}")
    for name, m, s, md in zip(names, mean, std, median, strict=True):
        print(f"  {name:30s} {m[0]:8.4f} {m[1]:8.4f} {s[0]:7.4f} {s[1]:7.4f}"
              f" {md[0]:9.4f} {md[1]:9.4f}")


def as_python(name: str, points: np.ndarray) -> str:
    rows = "\n".join(f"        [{x:.4f}, {y:.4f}]," for x, y in points.mean(axis=0))
    return f"{name} = np.array(\n    [\n{rows}\n    ]\n)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="data dir holding utkface/")
    parser.add_argument("--n", type=int, default=400, help="number of train crops to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upsample", type=int, default=1, help="HOG detector upsamplings")
    args = parser.parse_args()

    folder = (args.data or default_data()) / "utkface"
    with open(folder / "splits.csv", newline="") as handle:
        train = sorted(row["file"] for row in csv.DictReader(handle) if row["split"] == "train")
    files = random.Random(args.seed).sample(train, min(args.n, len(train)))
    points68, points5 = measure(folder / "images", files, args.upsample)
    used = len(points68)
    print(f"{used} of {len(files)} UTKFace train crops had a detected face "
          f"(seed {args.seed}, upsample {args.upsample}, {datetime.date.today()})")
    if used == 0:
        raise SystemExit("no face detected: nothing to average")
    report("68-point predictor -> alignment points (normalized crop coords)", NAMES_68, points68)
    report("5-point predictor (dlib order, normalized crop coords)", NAMES_5, points5)
    eye_dist = np.linalg.norm(points68[:, 1] - points68[:, 0], axis=1)
    print(f"\ninter-ocular distance: mean {eye_dist.mean():.4f}, std {eye_dist.std():.4f}")
    print("\n" + as_python("UTKFACE_TEMPLATE", points68))
    print(as_python("UTKFACE_TEMPLATE_DLIB5", points5))


if __name__ == "__main__":
    main()
