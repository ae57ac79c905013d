"""Photos and video frames → faces → ages: the reusable part of demo.py and the demo benchmark.

Each image (or frame) goes through: decode → detect + align every face (faces.FaceDetector, at
the model's input size) → one batched forward pass for all its faces → FaceAge results, which
can be drawn on the image (`annotate`) or written as JSON (`FrameResult.to_json`).

The model runs either in PyTorch (`TorchAgeModel`, any checkpoint or bundled model, optional
TTA, optionally an ensemble) or in onnxruntime (`OnnxAgeModel`, an export from
scripts/export.py); the ONNX path never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np

from age_estimation.cli import POINT_ESTIMATES
from age_estimation.data.cache import BadImageError, load_image, resize_square
from age_estimation.faces import Face, FaceDetector, letterbox, to_rgb

# The bundled model (scripts/bundle_model.py), used when no checkpoint is named.
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "age_model.pth"
# Detections scoring below this are dropped. dlib's own threshold (0) also fires on round
# badges such as the sample photo's mission patch (HOG score 0.04-0.12); on all 505 FG-NET photos
# (HOG, upsample 0) a face is found in 96.6 % at 0 and 96.2 % at 0.1, with no second detection.
DEFAULT_MIN_SCORE = 0.1
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class SourceError(RuntimeError):
    """An input (folder, video, webcam, display) that cannot be used at all."""


# ------------------------------------------------------------------------------ models


class Ages(NamedTuple):
    """Per-face predictions in years (float arrays [N]): `age` is the point estimate (the
    predictive mean or median), std the total spread."""

    age: np.ndarray
    std: np.ndarray
    std_aleatoric: np.ndarray
    std_epistemic: np.ndarray


class AgeModelRunner(Protocol):
    """What the pipeline needs from a model: its input size and a batched prediction."""

    image_size: int

    def predict(self, crops: np.ndarray) -> Ages:
        """crops: uint8 [N, S, S, 3] RGB, aligned to the UTKFace geometry."""
        ...


class TorchAgeModel:
    """A checkpoint (training or bundled) run in PyTorch, with optional test-time views, or an
    ensemble of them: faces are cropped at the largest member's input size and resized for the
    others (as their training cache was), and the members' predictions are combined (with
    `weights`, one per checkpoint, or equally). `point`: the age reported, the predictive mean
    or median (as test.py --point)."""

    def __init__(self, checkpoint: str | Path, tta: str | int | None = None,
                 ensemble: Sequence[str | Path] = (), point: str = "mean",
                 weights: Sequence[float] | None = None) -> None:
        from age_estimation.engine.checkpoint import load_model
        from age_estimation.engine.inference import member_weights, parse_tta

        if point not in POINT_ESTIMATES:
            raise ValueError(f"point estimate {point!r}: expected one of "
                             f"{', '.join(POINT_ESTIMATES)}")
        self.views, self.point = parse_tta(tta), point
        self.weights = member_weights(weights, [checkpoint, *ensemble])
        loaded = [load_model(path) for path in [checkpoint, *ensemble]]
        self.members = [(model, int(cfg.MODEL.IMG_SIZE)) for model, cfg in loaded]
        self.image_size = max(size for _, size in self.members)

    def predict(self, crops: np.ndarray) -> Ages:
        import torch

        from age_estimation.engine.inference import combine, predict_batch

        predictions = []
        for model, size in self.members:
            member_crops = crops if size == crops.shape[1] else np.stack(
                [resize_square(crop, size) for crop in crops])
            images = torch.from_numpy(np.ascontiguousarray(member_crops)).permute(0, 3, 1, 2)
            predictions.append(predict_batch(model, images, self.views))
        prediction = combine(predictions, self.weights)
        return Ages(*(t.float().numpy() for t in (
            getattr(prediction, self.point), prediction.std, prediction.std_aleatoric,
            prediction.std_epistemic)))


class OnnxAgeModel:
    """An ONNX export (scripts/export.py) run with onnxruntime: no torch involved."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        (graph_input,) = self.session.get_inputs()
        size = graph_input.shape[-1]
        if graph_input.type != "tensor(uint8)" or not isinstance(size, int):
            raise ValueError(f"{path}: expected a uint8 [batch, 3, S, S] input, got "
                             f"{graph_input.type} {graph_input.shape} (export it with "
                             f"scripts/export.py)")
        self.input_name, self.image_size = graph_input.name, size

    def predict(self, crops: np.ndarray) -> Ages:
        images = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))
        mean, std_aleatoric = self.session.run(None, {self.input_name: images})
        # One deterministic pass: no epistemic part, so the total std is the head's own.
        return Ages(mean, std_aleatoric, std_aleatoric, np.zeros_like(mean))


def load_age_model(checkpoint: str | Path | None = None, onnx: str | Path | None = None,
                   tta: str | int | None = None, ensemble: Sequence[str | Path] = (),
                   point: str = "mean", weights: Sequence[float] | None = None
                   ) -> AgeModelRunner:
    """An ONNX export via onnxruntime (torch never imported), else a PyTorch checkpoint
    (default: the bundled model), alone or with more `ensemble` checkpoints (mixed with
    `weights`, one per checkpoint, or equally)."""
    if onnx:
        if tta or ensemble or weights or point != "mean":
            raise ValueError("test-time views (--tta), --ensemble (and its weights) and --point "
                             "median need the PyTorch model, not --onnx (an export reports "
                             "the mean)")
        return OnnxAgeModel(onnx)
    if checkpoint is None and not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(f"no bundled model at {DEFAULT_MODEL}: pass a checkpoint "
                                f"(--resume), or create it with scripts/bundle_model.py CKPT")
    return TorchAgeModel(checkpoint or DEFAULT_MODEL, tta, ensemble, point, weights)


# ------------------------------------------------------------------------------ results


def _number(value: float) -> float | None:
    """JSON has no NaN: a missing std (heads without one) is written as null."""
    return None if math.isnan(value) else round(float(value), 3)


@dataclass
class FaceAge:
    """One face: box (x0, y0, x1, y1; x1, y1 exclusive) in the image and its predicted age."""

    box: tuple[int, int, int, int]
    score: float  # detector confidence (0 for the whole-image fallback)
    age: float
    std: float  # NaN when the head gives no spread (l1 / l2 heads without TTA)
    std_aleatoric: float
    std_epistemic: float
    fallback: bool = False  # True: no face found, the whole image was used

    def to_json(self) -> dict[str, Any]:
        return {"box": [int(v) for v in self.box], "score": round(self.score, 3),
                "age": _number(self.age), "std": _number(self.std),
                "std_aleatoric": _number(self.std_aleatoric),
                "std_epistemic": _number(self.std_epistemic), "fallback": self.fallback}

    def label(self) -> str:
        return f"{self.age:.0f}" if math.isnan(self.std) else f"{self.age:.0f} ± {self.std:.0f}"


@dataclass
class FrameResult:
    """Everything found in one image or video frame (`error` set when it could not be read)."""

    file: str
    frame: int | None = None  # frame index for videos and webcams
    size: tuple[int, int] | None = None  # (width, height)
    faces: list[FaceAge] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        return "error" if self.error else ("ok" if self.faces else "no_face")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "status": self.status}
        if self.frame is not None:
            out["frame"] = self.frame
        if self.size is not None:
            out["width"], out["height"] = self.size
        out["faces"] = [f.to_json() for f in self.faces]
        if self.error:
            out["error"] = self.error
        return out

    def summary(self) -> str:
        """One human-readable line."""
        where = self.file if self.frame is None else f"{self.file} frame {self.frame}"
        if self.error:
            return f"skipped: {self.error}"  # the error names the file
        if not self.faces:
            return f"{where}: no face found"
        ages = ", ".join(f"{f.label()}{' (whole image)' if f.fallback else ''}"
                         for f in self.faces)
        return f"{where}: {len(self.faces)} face(s): {ages}"


# ------------------------------------------------------------------------------ pipeline


class AgeEstimator:
    """Detector + model: `estimate(rgb)` returns every face of an image with its age."""

    def __init__(self, model: AgeModelRunner, detector: str = "hog", margin: float = 0.0,
                 fallback: bool = False, upsample: int = 0,
                 min_score: float = DEFAULT_MIN_SCORE) -> None:
        self.model, self.fallback, self.min_score = model, fallback, min_score
        # Crops come out at the model's input size, in the geometry of its training crops.
        # The fallback is applied here, after the score filter, not by the detector.
        self.detector = FaceDetector(detector, size=model.image_size,  # type: ignore[arg-type]
                                     margin=margin, upsample=upsample)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces of an RGB image scoring >= min_score, cropped at the model's input size; with
        none and `fallback`, the letterboxed whole image as one Face flagged fallback."""
        image = to_rgb(image)
        faces = [f for f in self.detector.detect(image) if f.score >= self.min_score]
        if not faces and self.fallback:
            height, width = image.shape[:2]
            faces = [Face(box=(0, 0, width, height), score=0.0, landmarks=np.zeros((0, 2)),
                          crop=letterbox(image, self.model.image_size), fallback=True)]
        return faces

    def predict(self, faces: Sequence[Face]) -> list[FaceAge]:
        """Ages of detected faces, all faces of one image in one batch."""
        if not faces:
            return []
        ages = self.model.predict(np.stack([f.crop for f in faces]))
        return [FaceAge(f.box, f.score, *(float(a[i]) for a in ages), fallback=f.fallback)
                for i, f in enumerate(faces)]

    def estimate(self, image: np.ndarray) -> list[FaceAge]:
        return self.predict(self.detect(image))

    def run(self, frame: Frame) -> FrameResult:
        if frame.image is None:
            return FrameResult(frame.name, frame.index, error=frame.error)
        height, width = frame.image.shape[:2]
        return FrameResult(frame.name, frame.index, (width, height), self.estimate(frame.image))


# ------------------------------------------------------------------------------ inputs


@dataclass
class Frame:
    """One decoded input image (RGB uint8), or the reason it could not be decoded."""

    name: str
    image: np.ndarray | None
    index: int | None = None
    error: str | None = None


def image_files(folder: str | Path) -> list[Path]:
    """Image files (by extension, any case) directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def read_images(paths: Sequence[str | Path]) -> Iterator[Frame]:
    """Decode each file; an unreadable one yields a Frame whose error names it."""
    for path in paths:
        try:
            yield Frame(str(path), load_image(str(path)))
        except BadImageError as err:
            yield Frame(str(path), None, error=str(err))


class VideoSource:
    """Frames of a video file or a webcam (an int id) as RGB; `fps` for writing them back."""

    def __init__(self, source: str | int) -> None:
        self.name = f"webcam{source}" if isinstance(source, int) else str(source)
        if isinstance(source, str) and not Path(source).is_file():
            raise SourceError(f"video not found: {source}")
        # OpenCV logs each backend it tried as a warning; the error below says it once, clearly.
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self.capture = cv2.VideoCapture(source)
        finally:
            cv2.utils.logging.setLogLevel(previous)
        if not self.capture.isOpened():
            what = "webcam" if isinstance(source, int) else "video"
            raise SourceError(f"cannot open {what} {source!r} (no such device, no permission, "
                              f"or a format OpenCV cannot decode)")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and math.isfinite(fps) and fps > 0 else 25.0

    def frames(self, max_frames: int = 0) -> Iterator[Frame]:
        """Frames in order, until the stream ends or `max_frames` (0 = no limit)."""
        index = 0
        try:
            while not max_frames or index < max_frames:
                ok, bgr = self.capture.read()
                if not ok:
                    break
                yield Frame(self.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index=index)
                index += 1
        finally:
            self.capture.release()


# ------------------------------------------------------------------------------ drawing


def annotate(image: np.ndarray, faces: Sequence[FaceAge]) -> np.ndarray:
    """A copy of the RGB image with each face's box and 'age ± std' label drawn on it."""
    from PIL import Image, ImageDraw, ImageFont  # PIL renders '±', OpenCV's fonts cannot

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    scale = max(image.shape[:2]) / 640
    font = ImageFont.load_default(size=max(12, round(22 * scale)))
    width = max(2, round(3 * scale))
    for face in faces:
        colour = (255, 160, 0) if face.fallback else (0, 230, 0)
        x0, y0, x1, y1 = face.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)
        text = face.label()
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        # Label above the box, or inside its top when the box touches the image's top.
        ty = y0 - (bottom - top) - 2 * width if y0 >= (bottom - top) + 2 * width else y0 + width
        draw.rectangle((x0, ty, x0 + right - left + 2 * width, ty + bottom - top + 2 * width),
                       fill=colour)
        draw.text((x0 + width - left, ty + width - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB image (format from the extension), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
