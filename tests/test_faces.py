"""Face detection + alignment to the UTKFace crop geometry (age_estimation.faces).

Real-data tolerances: on UTKFace's own crops the per-image eye-centre spread found by dlib is
1.3-1.8 % of the crop size (dataset alignment jitter + predictor noise), so a correct pipeline
re-detects eye centres ~1-2 % from the template on average (measured on these samples: UTKFace
1.6 % via 68 points, 0.8 % via 5 points; FG-NET from its annotations 1.9 %). We allow a mean
error < 3 % (6 px at 200) and, because noise averages out over 20 faces but a geometric mistake
does not, a mean signed offset < 1.5 % per coordinate and an inter-ocular distance within 5 %
of the template's: a 10 % zoom (margin=0.1) already fails these.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from age_estimation import faces
from age_estimation.faces import (
    UTKFACE_TEMPLATE,
    UTKFACE_TEMPLATE_DLIB5,
    Face,
    FaceDetector,
    align_face,
    alignment_points,
    detect_scheme,
    template_pixels,
)

SIZE = 200
N_REAL = 20


def pixels(template: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Normalized crop coordinates u = (x + 0.5) / size → pixels (independent of faces.py)."""
    return template * size - 0.5


@pytest.fixture(scope="module")
def models() -> None:
    if not faces.model_path("68").is_file() or not faces.model_path("5").is_file():
        pytest.skip("dlib landmark models not installed (pip install -r requirements.txt)")


@pytest.fixture(scope="module")
def detector(models: None) -> FaceDetector:
    return FaceDetector("hog", upsample=1)


# ------------------------------------------------------------------------------ synthetic


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx],
                     [scale * math.sin(a), scale * math.cos(a), ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def blob_image(centre: np.ndarray, sigma: float, shape: tuple[int, int]) -> np.ndarray:
    """Greyscale uint8 image with one Gaussian dot: its centroid is exactly `centre`."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    r2 = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2
    return np.round(255 * np.exp(-r2 / (2 * sigma**2))).astype(np.uint8)


def centroid(image: np.ndarray) -> np.ndarray:
    weight = image.astype(np.float64).sum(axis=2) if image.ndim == 3 else image.astype(float)
    weight[weight < 0.05 * weight.max()] = 0
    ys, xs = np.mgrid[: weight.shape[0], : weight.shape[1]]
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def landmarks_for(scheme: str, points: np.ndarray) -> np.ndarray:
    """Landmarks in `scheme` whose alignment points are `points` ((5, 2) pixels)."""
    if scheme == "dlib5":
        return points
    eyes, nose, mouth = ((36, 42), (42, 48)), 30, (48, 54)
    if scheme == "fgnet68":
        eyes, nose = ((27, 31), (32, 36)), 67
    lm = np.zeros((68, 2))
    for (start, stop), centre in zip(eyes, points[:2], strict=True):
        angles = np.linspace(0, 2 * np.pi, stop - start, endpoint=False)
        lm[start:stop] = centre + 6 * np.c_[np.cos(angles), np.sin(angles)]  # mean = centre
    lm[nose], lm[mouth[0]], lm[mouth[1]] = points[2], points[3], points[4]
    return lm


@pytest.mark.parametrize("scheme", ["dlib68", "dlib5", "fgnet68"])
@pytest.mark.parametrize("scale", [1.7, 3.3])  # 3.3: alignment shrinks > 2x (area pre-shrink)
def test_rotated_dots_land_on_template(scheme: str, scale: float) -> None:
    template = UTKFACE_TEMPLATE_DLIB5 if scheme == "dlib5" else UTKFACE_TEMPLATE
    target = pixels(template)
    warp = similarity(23.0, scale, 95.0, -40.0)
    source = apply(warp, target)
    shape = (int(SIZE * scale * 1.6), int(SIZE * scale * 1.6))
    assert (source > 0).all() and (source < shape[0]).all()
    landmarks = landmarks_for(scheme, source)
    assert detect_scheme(landmarks) == scheme
    for point, expected in zip(source, target, strict=True):
        dot = blob_image(point, 3.0 * scale, shape)  # greyscale input on purpose
        aligned = align_face(dot, landmarks, SIZE)
        assert aligned.shape == (SIZE, SIZE, 3) and aligned.dtype == np.uint8
        assert np.linalg.norm(centroid(aligned) - expected) < 1.5


def test_landmarks_at_template_are_identity() -> None:
    target = pixels(UTKFACE_TEMPLATE)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 2.0)
    matrix = faces.alignment_matrix(landmarks_for("dlib68", target), SIZE)
    np.testing.assert_allclose(matrix, np.c_[np.eye(2), np.zeros(2)], atol=1e-9)
    aligned = align_face(image, landmarks_for("dlib68", target), SIZE)
    assert np.abs(aligned.astype(int) - image.astype(int)).max() <= 1


def test_margin_zooms_out_around_centre() -> None:
    target = template_pixels(UTKFACE_TEMPLATE, SIZE)
    matrix = faces.alignment_matrix(target, SIZE, margin=0.25, scheme="dlib5")
    assert matrix.shape == (2, 3)
    zoomed = template_pixels(UTKFACE_TEMPLATE, SIZE, margin=0.25)
    centre = (SIZE - 1) / 2
    np.testing.assert_allclose(zoomed - centre, (target - centre) / 1.25, atol=1e-9)
    with pytest.raises(ValueError, match="margin"):
        template_pixels(UTKFACE_TEMPLATE, SIZE, margin=-0.1)


def test_templates_are_sane() -> None:
    for template in (UTKFACE_TEMPLATE, UTKFACE_TEMPLATE_DLIB5):
        assert template.shape == (5, 2) and ((template > 0.1) & (template < 0.9)).all()
    left_eye, right_eye, nose, mouth_l, mouth_r = UTKFACE_TEMPLATE
    assert left_eye[0] < nose[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 0.02
    assert left_eye[1] < nose[1] < mouth_l[1] and abs(mouth_l[1] - mouth_r[1]) < 0.02
    # dlib 5-point eye corners bracket the 68-point eye centres
    five = UTKFACE_TEMPLATE_DLIB5
    assert five[2, 0] < left_eye[0] < five[3, 0] and five[1, 0] < right_eye[0] < five[0, 0]


def test_bad_inputs() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        align_face(image, np.zeros((10, 2)), SIZE)
    with pytest.raises(TypeError, match="uint8"):
        align_face(image.astype(np.float32), pixels(UTKFACE_TEMPLATE_DLIB5, 50), SIZE)
    with pytest.raises(ValueError, match="degenerate"):
        align_face(image, np.ones((5, 2)), SIZE)


# ------------------------------------------------------------------------------ detector


def test_flat_grey_image_has_no_face(detector: FaceDetector) -> None:
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detector.detect(np.full((240, 320), 128, np.uint8)) == []


def test_fallback_returns_whole_image(models: None) -> None:
    image = np.full((240, 320, 3), 128, np.uint8)
    image[:, :160] = 30
    found = FaceDetector(fallback_whole_image=True, size=64).detect(image)
    assert len(found) == 1 and isinstance(found[0], Face)
    face = found[0]
    assert face.fallback and face.box == (0, 0, 320, 240) and face.landmarks.shape == (0, 2)
    assert face.crop.shape == (64, 64, 3) and face.crop.dtype == np.uint8
    # letterboxed: black bars above and below, both halves of the picture kept
    assert face.crop[0, 32].max() == 0 and face.crop[32, 5, 0] == 30 and face.crop[32, 60, 0] == 128


def test_cnn_missing_model_is_a_clear_error(tmp_path: Path, models: None) -> None:
    missing = tmp_path / "mmod_human_face_detector.dat"
    with pytest.raises(FileNotFoundError, match="MMOD CNN face detector model file not found"):
        FaceDetector("cnn", cnn_model_path=missing)
    with pytest.raises(FileNotFoundError, match="68-point landmark"):
        FaceDetector(predictor_path=tmp_path / "nope.dat")
    with pytest.raises(ValueError, match="detector"):
        FaceDetector("yolo")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ real data


def eye_stats(
    crops: list[np.ndarray], detector: FaceDetector
) -> tuple[int, float, np.ndarray, float]:
    """Re-detect 68 points on aligned crops: (n found, mean eye-centre error, mean signed
    offset, inter-ocular distance / template's), errors as fractions of the crop size."""
    target = pixels(UTKFACE_TEMPLATE)[:2]
    eyes = []
    for crop in crops:
        found = detector.detect(crop)
        if found:
            eyes.append(alignment_points(found[0].landmarks, "dlib68")[0][:2])
    eyes_px = np.array(eyes)
    off = (eyes_px - target) / SIZE
    iod = np.linalg.norm(eyes_px[:, 1] - eyes_px[:, 0], axis=1)
    iod_ratio = float(iod.mean() / np.linalg.norm(target[1] - target[0]))
    return len(eyes), float(np.linalg.norm(off, axis=2).mean()), off.mean(axis=0), iod_ratio


def check_geometry(n: int, error: float, bias: np.ndarray, iod_ratio: float, minimum: int) -> None:
    assert n >= minimum, f"faces re-detected in only {n} aligned crops"
    assert error < 0.03, f"mean eye-centre error {error:.3%} of crop size"
    assert np.abs(bias).max() < 0.015, f"systematic eye offset {bias.round(4).tolist()}"
    assert 0.95 < iod_ratio < 1.05, f"inter-ocular distance ratio {iod_ratio:.3f}"


def utkface_test_files(root: Path) -> list[Path]:
    with open(root / "splits.csv", newline="") as handle:
        test = sorted(row["file"] for row in csv.DictReader(handle) if row["split"] == "test")
    step = max(1, len(test) // N_REAL)
    return [root / "images" / name for name in test[::step][:N_REAL]]


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_template_is_where_utkface_crops_have_their_features(
    real_dataset: Callable[[str], Path], detector: FaceDetector
) -> None:
    """The constants are the mean detected positions on UTKFace crops (test split here, train
    for the constants): eyes within 1.5 %, nose and mouth (pose spread 2-4 %) within 3 %."""
    points = []
    for path in utkface_test_files(real_dataset("utkface")):
        image = read_rgb(path)
        found = detector.detect(image)
        if found:
            raw = alignment_points(found[0].landmarks, "dlib68")[0]
            points.append((raw + 0.5) / np.array([image.shape[1], image.shape[0]]))
    assert len(points) >= N_REAL - 2
    deviation = np.abs(np.mean(points, axis=0) - UTKFACE_TEMPLATE).max(axis=1)
    assert (deviation[:2] < 0.015).all() and (deviation[2:] < 0.03).all(), deviation.round(4)


def test_utkface_detect_align_matches_template(
    real_dataset: Callable[[str], Path], detector: FaceDetector
) -> None:
    files = utkface_test_files(real_dataset("utkface"))
    crops, five = [], []
    detector5 = FaceDetector("hog", landmarks="5", upsample=1)
    for path in files:
        image = read_rgb(path)
        found = detector.detect(image)
        if found:
            face = found[0]
            assert face.crop.shape == (SIZE, SIZE, 3) and face.landmarks.shape == (68, 2)
            assert face.box[0] < face.box[2] <= image.shape[1] and face.score > 0
            crops.append(face.crop)
        found5 = detector5.detect(image)
        if found5:
            five.append(found5[0].crop)
    assert len(crops) >= N_REAL - 2, f"faces found in only {len(crops)} of {N_REAL} crops"
    check_geometry(*eye_stats(crops, detector), minimum=N_REAL - 3)
    check_geometry(*eye_stats(five, detector), minimum=N_REAL - 3)  # 5-point path agrees


def test_greyscale_and_cnn_on_real_crop(
    real_dataset: Callable[[str], Path], detector: FaceDetector
) -> None:
    image = read_rgb(utkface_test_files(real_dataset("utkface"))[0])
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    found = detector.detect(grey)
    assert len(found) == 1 and found[0].crop.shape == (SIZE, SIZE, 3)
    assert (found[0].crop[..., 0] == found[0].crop[..., 2]).all()
    cnn = FaceDetector("cnn", landmarks="5", upsample=0).detect(image)
    assert len(cnn) == 1 and cnn[0].landmarks.shape == (5, 2)
    hog_box, cnn_box = np.array(found[0].box), np.array(cnn[0].box)
    assert np.abs(hog_box - cnn_box).max() < 0.25 * SIZE


def test_fgnet_annotated_landmarks_align_to_template(
    real_dataset: Callable[[str], Path], detector: FaceDetector
) -> None:
    from age_estimation.data.datasets import read_pts

    root = real_dataset("fgnet")
    images = sorted((root / "images").glob("*.JPG"))
    step = max(1, len(images) // N_REAL)
    target = pixels(UTKFACE_TEMPLATE)[:2]
    crops, annotated = [], []
    for path in images[::step][:N_REAL]:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # 1 in 6 are greyscale
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        points = read_pts(root / "points" / f"{path.stem.lower()}.pts", 68).astype(np.float64)
        assert detect_scheme(points) == "fgnet68"
        crops.append(align_face(image, points, SIZE))  # scheme detected: FG-NET's own order
        matrix = faces.alignment_matrix(points, SIZE, scheme="fgnet68")
        eyes = alignment_points(points, "fgnet68")[0][:2]
        annotated.append(apply(matrix, eyes) - target)
    annotated_error = float(np.linalg.norm(np.array(annotated), axis=2).mean()) / SIZE
    assert annotated_error < 0.03, f"annotated eye centres {annotated_error:.3%} off template"
    check_geometry(*eye_stats(crops, detector), minimum=N_REAL - 4)
