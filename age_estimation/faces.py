"""Face detection and alignment to the UTKFace crop geometry.

Anything that sees raw photos (FG-NET with its annotated landmarks, demo photos) goes through
here so that eyes, nose and mouth land where they are in UTKFace's aligned 200x200 crops.

Coordinates: landmarks are pixel coordinates with pixel centres at integers (dlib, OpenCV and
the FG-NET .pts files all use this). Template coordinates are normalized to the crop's extent:
`u = (x + 0.5) / size`, so `u = 0` is the crop's left edge and `u = 1` its right edge.

Landmark models come from the PyPI package `face-recognition-models` (dlib's 5- and 68-point
shape predictors and the MMOD CNN detector); nothing is downloaded at run time. Paths can be
overridden per detector or with the folder in `$AGE_ESTIMATION_FACE_MODELS`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

# ------------------------------------------------------------------------------ templates

# Mean positions in UTKFace crops (normalized [0, 1] crop coordinates, x then y) of the five
# alignment points, in this order: image-left eye centre (the subject's right eye; mean of dlib
# 68-points 36-41), image-right eye centre (42-47), nose tip (30), image-left mouth corner (48),
# image-right mouth corner (54). Regenerate with `python scripts/derive_face_template.py`
# (dlib HOG detector, upsample 1, + 68-point predictor on 400 random UTKFace train crops, seed 0:
# 386 had a detected face; derived 2026-11-25). Spread (std) over those crops: eyes 1.3-1.8 %,
# nose tip 3-4 %, mouth corners 2-3.6 % of the crop size.
UTKFACE_TEMPLATE = np.array(
    [
        [0.2984, 0.3010],
        [0.6859, 0.3021],
        [0.4959, 0.5103],
        [0.3145, 0.6954],
        [0.6702, 0.6953],
    ]
)

# Mean positions of dlib's 5-point predictor output on the same crops, in dlib's 5-point order:
# image-right eye outer corner, image-right eye inner corner, image-left eye outer corner,
# image-left eye inner corner, nose base (below the tip). Same script, same images.
# A separate template rather than mapping corners to eye centres: each predictor is fitted to
# its own points' mean positions in the same crops, so no heuristic mapping is needed (dlib's
# 6-point eye mean sits ~1 % of the crop above the corners' midpoint) and no mouth is missing.
# Measured: both paths re-detect eye centres close to UTKFACE_TEMPLATE (19 UTKFace test crops:
# 1.6 % via 68 points, 0.8 % via 5); on 93 crops the two place the eyes 3 px apart on average
# (up to 11 px on turned heads, where the 68-point path's nose and mouth pull the fit).
UTKFACE_TEMPLATE_DLIB5 = np.array(
    [
        [0.7613, 0.3037],
        [0.6079, 0.3116],
        [0.2212, 0.3013],
        [0.3768, 0.3106],
        [0.4940, 0.5912],
    ]
)

# Indices of the alignment points in each 68-point scheme: (eye, eye, nose tip, mouth, mouth);
# an eye is the mean of its contour points. FG-NET's 68 points are NOT dlib's (iBUG) order:
# 27-30 / 32-35 are the image-left / image-right eye contours (31 and 36 the pupils), 67 the
# nose tip, 48 / 54 the mouth corners.
_DLIB68_POINTS = (range(36, 42), range(42, 48), (30,), (48,), (54,))
_FGNET68_POINTS = (range(27, 31), range(32, 36), (67,), (48,), (54,))

Scheme = Literal["auto", "dlib68", "dlib5", "fgnet68"]

MODEL_FILES = {
    "68": "shape_predictor_68_face_landmarks.dat",
    "5": "shape_predictor_5_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
}


# ------------------------------------------------------------------------------ alignment


def to_rgb(image: np.ndarray) -> np.ndarray:
    """HxW / HxWx1 greyscale or HxWx4 RGBA uint8 → contiguous HxWx3 RGB uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")


def _pick(landmarks: np.ndarray, groups: tuple) -> np.ndarray:
    return np.array([landmarks[list(g)].mean(axis=0) for g in groups])


def _eye_spread(landmarks: np.ndarray, groups: tuple) -> float:
    """Largest eye-point distance from its eye centre, over the inter-ocular distance."""
    eyes = [landmarks[list(g)] for g in groups[:2]]
    centres = [e.mean(axis=0) for e in eyes]
    iod = float(np.linalg.norm(centres[1] - centres[0]))
    if iod <= 0:
        return np.inf
    pairs = zip(eyes, centres, strict=True)
    spread = max(float(np.linalg.norm(e - c, axis=1).max()) for e, c in pairs)
    return spread / iod


def detect_scheme(landmarks: np.ndarray) -> str:
    """'dlib5' for 5 points; for 68: 'dlib68', or 'fgnet68' when the points only make sense so.

    A dlib-order face has compact eyes: every point of 36-41 / 42-47 within 0.45 inter-ocular
    distances of its eye centre (dlib's predictions: <= 0.26 on UTKFace and FG-NET photos);
    FG-NET annotations read in dlib order mix a pupil with nose points (>= 2.2).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape == (5, 2):
        return "dlib5"
    if landmarks.shape != (68, 2):
        raise ValueError(f"expected (68, 2) or (5, 2) landmarks, got shape {landmarks.shape}")
    dlib, fgnet = _eye_spread(landmarks, _DLIB68_POINTS), _eye_spread(landmarks, _FGNET68_POINTS)
    if dlib <= 0.45 or dlib <= fgnet:
        return "dlib68"
    return "fgnet68"


def alignment_points(
    landmarks: np.ndarray, scheme: Scheme = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(points, template): the landmarks' alignment points and their UTKFace template (5, 2)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if scheme == "auto":
        scheme = detect_scheme(landmarks)  # type: ignore[assignment]
    expected = (5, 2) if scheme == "dlib5" else (68, 2)
    if landmarks.shape != expected:
        raise ValueError(f"{scheme} landmarks must have shape {expected}, got {landmarks.shape}")
    if not np.isfinite(landmarks).all():
        raise ValueError("landmarks contain non-finite coordinates")
    if scheme == "dlib5":
        return landmarks, UTKFACE_TEMPLATE_DLIB5
    if scheme == "dlib68":
        return _pick(landmarks, _DLIB68_POINTS), UTKFACE_TEMPLATE
    if scheme == "fgnet68":
        return _pick(landmarks, _FGNET68_POINTS), UTKFACE_TEMPLATE
    raise ValueError(f"unknown landmark scheme {scheme!r}; use auto, dlib68, dlib5 or fgnet68")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src onto dst (Umeyama)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    variance = (s**2).sum() / len(src)
    if variance <= 0:
        raise ValueError("degenerate landmarks: all alignment points coincide")
    scale = float((sig * np.diag(sign)).sum() / variance)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def template_pixels(template: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray:
    """Template points in pixel coordinates of a size x size crop enlarged by (1 + margin)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    normalized = (np.asarray(template, np.float64) - 0.5) / (1.0 + margin) + 0.5
    return normalized * size - 0.5


def alignment_matrix(
    landmarks: np.ndarray, size: int, margin: float = 0.0, scheme: Scheme = "auto"
) -> np.ndarray:
    """2x3 similarity matrix taking original-image pixels to the aligned size x size crop."""
    points, template = alignment_points(landmarks, scheme)
    return similarity_transform(points, template_pixels(template, size, margin))


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int,
    *,
    margin: float = 0.0,
    scheme: Scheme = "auto",
) -> np.ndarray:
    """Warp `image` so the landmarks' eyes, nose and mouth land on the UTKFace template.

    image: RGB (or greyscale) uint8. landmarks: (68, 2) dlib-order, (5, 2) dlib 5-point order,
    or FG-NET's 68-point .pts order (detected by `scheme="auto"`, or say `scheme="fgnet68"`).
    margin: 0 = UTKFace geometry; m > 0 zooms out so the crop spans (1 + m) times as much.
    Outside the photo is black, like the borders of UTKFace's own crops. Returns size x size x 3.
    """
    image = to_rgb(image)
    matrix = alignment_matrix(landmarks, size, margin, scheme)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:  # shrink first with area averaging: bilinear warping alone would alias
        factor = 2.0 * scale
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        fx, fy = new_w / width, new_h / height
        # x_small = (x + 0.5) * fx - 0.5, so x = (x_small + 0.5) / fx - 0.5
        undo = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        matrix = matrix @ undo
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """The whole image, padded with black to a centred square and resized to size x size."""
    image = to_rgb(image)
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = cv2.copyMakeBorder(
        image, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0
    )
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


# ------------------------------------------------------------------------------ models


def model_path(name: str) -> Path:
    """Path of a dlib model file ('68', '5' or 'cnn'): $AGE_ESTIMATION_FACE_MODELS, else the
    `face-recognition-models` package. The path is returned even when the file is missing."""
    filename = MODEL_FILES[name]
    folder = os.environ.get("AGE_ESTIMATION_FACE_MODELS")
    if folder and (Path(folder) / filename).is_file():
        return Path(folder) / filename
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    return Path(folder or "face_recognition_models/models") / filename


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} model file not found: {path}. Install it with "
            f"`pip install -r requirements.txt` (package face-recognition-models), "
            f"or pass its path / set AGE_ESTIMATION_FACE_MODELS to the folder holding "
            f"{path.name}."
        )
    return path


@cache
def _load(kind: str, path: str) -> Any:
    import dlib

    if kind == "hog":
        return dlib.get_frontal_face_detector()
    if kind == "cnn":
        return dlib.cnn_face_detection_model_v1(path)
    return dlib.shape_predictor(path)


# ------------------------------------------------------------------------------ detection


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1; x1, y1 exclusive) in the original image."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray  # (68, 2) or (5, 2) pixel coordinates; (0, 2) for a fallback
    crop: np.ndarray  # size x size x 3 uint8, aligned to the UTKFace geometry
    fallback: bool = field(default=False)  # True: no face found, crop is the whole image


class FaceDetector:
    """Detect faces, predict landmarks and crop each face with the UTKFace geometry.

    detector: "hog" (dlib's frontal HOG+SVM) or "cnn" (dlib's MMOD; slower, handles more pose).
    landmarks: "68" or "5" point dlib predictor. upsample: detector pyramid upsamplings (each
    halves the smallest detectable face, ~80 px at 0). margin: see `align_face`.
    fallback_whole_image: with no face found, return the letterboxed whole image as one Face
    flagged `fallback=True` instead of [].
    """

    def __init__(
        self,
        detector: Literal["hog", "cnn"] = "hog",
        *,
        landmarks: Literal["68", "5"] = "68",
        size: int = 200,
        upsample: int = 1,
        margin: float = 0.0,
        fallback_whole_image: bool = False,
        predictor_path: str | Path | None = None,
        cnn_model_path: str | Path | None = None,
    ) -> None:
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if landmarks not in ("68", "5"):
            raise ValueError(f"landmarks must be '68' or '5', got {landmarks!r}")
        if upsample < 0 or margin < 0 or size < 1:
            raise ValueError("upsample and margin must be >= 0, size >= 1")
        self.detector, self.landmarks, self.size = detector, landmarks, size
        self.upsample, self.margin = int(upsample), float(margin)
        self.fallback_whole_image = fallback_whole_image
        # Check the files now (cheap) so a missing model fails here; load them on first use.
        self.predictor_path = _require(
            Path(predictor_path or model_path(landmarks)), f"dlib {landmarks}-point landmark"
        )
        self.cnn_model_path = None
        if detector == "cnn":
            self.cnn_model_path = _require(
                Path(cnn_model_path or model_path("cnn")), "dlib MMOD CNN face detector"
            )

    def _boxes(self, image: np.ndarray) -> list[tuple[Any, float]]:
        if self.detector == "cnn":
            found = _load("cnn", str(self.cnn_model_path))(image, self.upsample)
            return [(d.rect, float(d.confidence)) for d in found]
        rects, scores, _ = _load("hog", "").run(image, self.upsample, 0.0)
        return list(zip(rects, map(float, scores), strict=True))

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in an RGB (or greyscale) uint8 image, largest box first."""
        import dlib

        image = to_rgb(image)
        height, width = image.shape[:2]
        predictor = _load("shape", str(self.predictor_path))
        faces = []
        for rect, score in self._boxes(image):
            rect = dlib.rectangle(rect.left(), rect.top(), rect.right(), rect.bottom())
            shape = predictor(image, rect)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            crop = align_face(image, points, self.size, margin=self.margin,
                              scheme="dlib68" if self.landmarks == "68" else "dlib5")
            box = (
                max(0, rect.left()), max(0, rect.top()),
                min(width, rect.right() + 1), min(height, rect.bottom() + 1),
            )
            faces.append(Face(box=box, score=score, landmarks=points, crop=crop))
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        if not faces and self.fallback_whole_image:
            faces = [Face(box=(0, 0, width, height), score=0.0, landmarks=np.zeros((0, 2)),
                          crop=letterbox(image, self.size), fallback=True)]
        return faces
