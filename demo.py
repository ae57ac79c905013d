"""Estimate the age of every face in photos, a video or a webcam stream.

  python demo.py                                    # sample photo -> output/demo/ (PNG, JSON)
  python demo.py --image a.jpg b.png --output_dir out/ --json out/ages.json
  python demo.py --img_dir photos/ --json ages.json --tta flip
  python demo.py --video clip.mp4 --output_dir out/ --max_frames 100
  python demo.py --webcam 0
  python demo.py --onnx age_model.onnx --image a.jpg  # onnxruntime, no torch
  python demo.py --resume A.pth --ensemble B.pth       # an ensemble of checkpoints
  python demo.py --resume A.pth --ensemble B.pth --ensemble-weights 2 1   # weighted

Faces are found with dlib (HOG or CNN), aligned like the UTKFace training crops and sent through
the model in one batch per image; each face gets "age ± std" (std: the model's predictive
spread, plus the spread over test-time views with --tta). Unreadable files are skipped with a
message; images without a face are reported as such (or, with --fallback, the whole image is
used as the face).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from age_estimation.cli import POINT_ESTIMATES, setup_logging
from age_estimation.pipeline import (
    DEFAULT_MIN_SCORE,
    DEFAULT_MODEL,
    AgeEstimator,
    Frame,
    FrameResult,
    SourceError,
    VideoSource,
    annotate,
    image_files,
    load_age_model,
    read_images,
    save_rgb,
)

DEFAULT_OUTPUT = Path("output/demo")
WINDOW = "age estimation (q to quit)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", nargs="+", metavar="F", help="image file(s)")
    source.add_argument("--img_dir", metavar="D", help="every image file in a folder")
    source.add_argument("--video", metavar="F", help="a video file")
    source.add_argument("--webcam", nargs="?", const=0, type=int, metavar="ID",
                        help="OpenCV camera index (default 0); shows a preview window")
    parser.add_argument("--output_dir", metavar="D",
                        help="write annotated images (videos: an annotated .mp4) here "
                             f"(default with no input given: {DEFAULT_OUTPUT})")
    parser.add_argument("--json", metavar="F",
                        help=f"write all results as JSON (default with no input given: "
                             f"{DEFAULT_OUTPUT / 'ages.json'})")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--resume", metavar="CKPT",
                       help=f"checkpoint or bundled model (default: {DEFAULT_MODEL})")
    model.add_argument("--onnx", metavar="F", help="run an ONNX export with onnxruntime instead")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT",
                        help="more checkpoints whose predictions are combined with --resume's "
                             "(or the bundled model's); members may differ in input size")
    parser.add_argument("--ensemble-weights", nargs="+", type=float, default=None, metavar="W",
                        help="mixture weights of the checkpoints, --resume first (default: equal)")
    parser.add_argument("--detector", choices=("hog", "cnn"), default="hog",
                        help="dlib face detector: hog (fast, frontal) or cnn (slow, more pose)")
    # 0 by default: on FG-NET photos (every 4th of 505) it finds as many faces as 1 at half the
    # time, and 1 also fires on the sample photo's round mission patch.
    parser.add_argument("--upsample", type=int, default=0,
                        help="detector upsamplings: 0 finds faces down to ~80 px, each one more "
                             "halves that at ~2-4x the time (default: %(default)s)")
    parser.add_argument("--min_score", type=float, default=DEFAULT_MIN_SCORE,
                        help="drop detections scoring below this (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="zoom out: the crop spans (1 + margin) times the training crops' "
                             "framing (default 0: the same framing)")
    parser.add_argument("--fallback", action="store_true",
                        help="with no face found, estimate on the whole image")
    parser.add_argument("--tta", nargs="?", const="flip", default=None,
                        help="test-time views: N, 'flip' or names (PyTorch models only)")
    parser.add_argument("--point", choices=POINT_ESTIMATES, default="mean",
                        help="the age shown: the predictive mean, or its median (the estimate "
                             "of least expected absolute error; PyTorch models only)")
    parser.add_argument("--max_frames", type=int, default=0,
                        help="video / webcam: stop after N frames (0 = all)")
    parser.add_argument("--no_display", action="store_true",
                        help="webcam: no preview window (record with --output_dir / --json)")
    return parser.parse_args(argv)


def sample_image() -> Frame:
    """scikit-image's astronaut photo (public domain, NASA), shipped inside the package."""
    from skimage import data

    return Frame("astronaut.png", np.ascontiguousarray(data.astronaut()))


def check_display() -> None:
    """Fail early and clearly when no preview window can be opened."""
    if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # Checked before touching the GUI: Qt would abort the whole process without a display.
        raise SourceError("no display for the webcam preview (DISPLAY is not set); record "
                          "instead with --no_display --output_dir D (stop with --max_frames "
                          "N or Ctrl-C)")
    try:
        cv2.namedWindow(WINDOW)
    except cv2.error as err:
        raise SourceError("this OpenCV build cannot open windows (opencv-python-headless?); "
                          "use --no_display --output_dir D instead") from err


class VideoOutput:
    """Annotated frames to an .mp4 (when an output folder is given) and/or a preview window."""

    def __init__(self, path: Path | None, fps: float, display: bool) -> None:
        self.path, self.fps, self.display = path, fps, display
        self.writer = None
        self.quit = False

    def write(self, rgb: np.ndarray) -> None:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.path is not None:
            if self.writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps,
                                              (bgr.shape[1], bgr.shape[0]))
            self.writer.write(bgr)
        if self.display:
            cv2.imshow(WINDOW, bgr)
            self.quit = (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.display:
            cv2.destroyAllWindows()


def process(frames: Iterable[Frame], estimator: AgeEstimator,
            write: Callable[[Frame, FrameResult], bool]) -> list[FrameResult]:
    """Run every frame, print one line each and hand it to `write` (which returns True to
    stop, e.g. 'q' in the preview); Ctrl-C stops too, keeping the results so far."""
    results = []
    try:
        for frame in frames:
            result = estimator.run(frame)
            print(result.summary(), file=sys.stderr if result.error else sys.stdout, flush=True)
            results.append(result)
            if write(frame, result):
                break
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    no_input = not (args.image or args.img_dir or args.video or args.webcam is not None)
    output_dir = Path(args.output_dir) if args.output_dir else (DEFAULT_OUTPUT if no_input
                                                                 else None)
    if no_input and not args.json:
        args.json = str(DEFAULT_OUTPUT / "ages.json")
    video, paths = None, []
    try:
        if args.video:
            video = VideoSource(args.video)
        elif args.webcam is not None:
            video = VideoSource(args.webcam)
            if not args.no_display:
                check_display()
        elif args.img_dir:
            paths = image_files(args.img_dir)
            if not paths:
                print(f"no image files in {args.img_dir}", file=sys.stderr)
        model = load_age_model(args.resume, args.onnx, args.tta, args.ensemble, args.point,
                               args.ensemble_weights)
        estimator = AgeEstimator(model, args.detector, args.margin, args.fallback,
                                 args.upsample, args.min_score)
    except (SourceError, FileNotFoundError, ValueError, RuntimeError) as err:
        # RuntimeError covers CheckpointError and onnxruntime's load failures.
        print(f"error: {err}", file=sys.stderr)
        return 2

    annotated: list[str] = []
    if video is not None:
        target = output_dir / f"{Path(video.name).stem}_annotated.mp4" if output_dir else None
        sink = VideoOutput(target, video.fps,
                           display=args.webcam is not None and not args.no_display)

        def write(frame: Frame, result: FrameResult) -> bool:
            sink.write(annotate(frame.image, result.faces))
            return sink.quit

        try:
            results = process(video.frames(args.max_frames), estimator, write)
        finally:
            sink.close()
        if target is not None and sink.writer is not None:
            annotated.append(str(target))
    else:
        frames = ([sample_image()] if no_input else
                  read_images(paths if args.img_dir else args.image))

        def write(frame: Frame, result: FrameResult) -> bool:
            if output_dir is not None and frame.image is not None:
                out = output_dir / f"{Path(frame.name).stem}.png"
                save_rgb(out, annotate(frame.image, result.faces))
                annotated.append(str(out))
            return False

        results = process(frames, estimator, write)

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([r.to_json() for r in results], indent=1))
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "no_face", "error")}
    faces = sum(len(r.faces) for r in results)
    print(f"{len(results)} input(s): {faces} face(s); {counts['no_face']} without a face, "
          f"{counts['error']} unreadable")
    if len(annotated) == 1:
        print(f"wrote {annotated[0]}")
    elif annotated:
        print(f"wrote {len(annotated)} annotated images to {output_dir}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
