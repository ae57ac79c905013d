"""Deterministic image perturbations with severities 1-5, for robustness tests (one kind and
level over a whole test set: `perturb(image, "blur", 3, seed)`) and as training augmentation
(`RandomPerturbation`, an albumentations transform drawing a kind and level per image).

Every kind takes and returns HxWx3 uint8 RGB of the same shape. Sizes (blur sigma, patch
sides) are fractions of the image side, so a level means the same at 112 and 200 pixels.
Background kinds assume the UTKFace crop geometry (faces.UTKFACE_TEMPLATE): the face region
is an ellipse placed from the template's eyes and mouth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from age_estimation.faces import UTKFACE_TEMPLATE

LEVELS = (1, 2, 3, 4, 5)

# Parameters per level 1..5; each list is monotone so a higher level always degrades more.
JPEG_QUALITY = (60, 40, 25, 15, 7)
BLUR_SIGMA = (0.005, 0.01, 0.015, 0.025, 0.04)  # fraction of the image side
DOWNSCALE_FACTOR = (1.5, 2.0, 3.0, 4.0, 6.0)
NOISE_STD = (4.0, 8.0, 16.0, 24.0, 36.0)  # grey levels
BRIGHTNESS_SHIFT = (20, 40, 60, 80, 100)  # grey levels added
GAMMA = (1.3, 1.6, 2.0, 2.5, 3.0)  # > 1 darkens mid-tones (under-exposure)
CONTRAST_FACTOR = (0.8, 0.65, 0.5, 0.35, 0.2)  # deviations from the mean grey level kept
OCCLUSION_SIDE = (0.15, 0.25, 0.35, 0.45, 0.55)  # fraction of the image side
# Scale of the kept face ellipse (face_mask): level 1 keeps most hair and the neck, level 4
# the face outline, level 5 only the inner face (cuts into cheeks and forehead).
FACE_ELLIPSE_SCALE = (1.3, 1.2, 1.1, 1.0, 0.9)

Perturbation = Callable[[np.ndarray, int, np.random.Generator, "np.ndarray | None"], np.ndarray]
PERTURBATIONS: dict[str, Perturbation] = {}


def register_perturbation(name: str) -> Callable[[Perturbation], Perturbation]:
    """Function decorator adding a kind to PERTURBATIONS under `name`."""

    def decorator(fn: Perturbation) -> Perturbation:
        PERTURBATIONS[name] = fn
        return fn

    return decorator


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    return image


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _lut(table: np.ndarray) -> Perturbation:
    """A per-grey-level mapping, as a perturbation ignoring rng and donors."""
    return lambda image, level, rng, donors: cv2.LUT(image, _to_uint8(table[level - 1]))


_GREY = np.arange(256, dtype=np.float64)
PERTURBATIONS["brightness"] = _lut(np.array([_GREY + s for s in BRIGHTNESS_SHIFT]))
PERTURBATIONS["gamma"] = _lut(np.array([255 * (_GREY / 255) ** g for g in GAMMA]))


@register_perturbation("jpeg")
def _jpeg(image: np.ndarray, level: int, rng: np.random.Generator, donors: Any) -> np.ndarray:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY[level - 1]])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@register_perturbation("blur")
def _blur(image: np.ndarray, level: int, rng: np.random.Generator, donors: Any) -> np.ndarray:
    sigma = BLUR_SIGMA[level - 1] * max(image.shape[:2])
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)


@register_perturbation("downscale")
def _downscale(image: np.ndarray, level: int, rng: np.random.Generator,
               donors: Any) -> np.ndarray:
    height, width = image.shape[:2]
    factor = DOWNSCALE_FACTOR[level - 1]
    small = cv2.resize(image, (max(1, round(width / factor)), max(1, round(height / factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


@register_perturbation("noise")
def _noise(image: np.ndarray, level: int, rng: np.random.Generator, donors: Any) -> np.ndarray:
    return _to_uint8(image + rng.normal(0.0, NOISE_STD[level - 1], image.shape))


@register_perturbation("contrast")
def _contrast(image: np.ndarray, level: int, rng: np.random.Generator,
              donors: Any) -> np.ndarray:
    mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
    return _to_uint8(mean + (image.astype(np.float64) - mean) * CONTRAST_FACTOR[level - 1])


def _occlusion(fill: int) -> Perturbation:
    """A square patch of one grey level at a seeded position (side grows with the level)."""

    def occlude(image: np.ndarray, level: int, rng: np.random.Generator,
                donors: Any) -> np.ndarray:
        height, width = image.shape[:2]
        side = round(OCCLUSION_SIDE[level - 1] * min(height, width))
        # Position as a fraction of the free range: for one seed, the patches of all levels
        # share their relative position, so a higher level's patch covers more of the face.
        fy, fx = rng.random(2)
        top, left = round(fy * (height - side)), round(fx * (width - side))
        out = image.copy()
        out[top:top + side, left:left + side] = fill
        return out

    return occlude


PERTURBATIONS["occlusion"] = _occlusion(128)
PERTURBATIONS["occlusion_black"] = _occlusion(0)


def face_mask(height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Boolean HxW mask of the face ellipse of a UTKFace-geometry crop.

    Fitted to the template: centred between the eyes horizontally, spanning 0.95 inter-ocular
    distances either side, and vertically from 0.6 eye-to-mouth distances above the eyes
    (forehead) to 0.5 below the mouth (chin); `scale` grows or shrinks it about its centre.
    """
    eyes, mouth = UTKFACE_TEMPLATE[:2], UTKFACE_TEMPLATE[3:]
    eye_y, mouth_y = eyes[:, 1].mean(), mouth[:, 1].mean()
    eye_to_mouth = mouth_y - eye_y
    top, bottom = eye_y - 0.6 * eye_to_mouth, mouth_y + 0.5 * eye_to_mouth
    centre_x, centre_y = UTKFACE_TEMPLATE[:, 0].mean(), (top + bottom) / 2
    semi_x = 0.95 * (eyes[1, 0] - eyes[0, 0]) * scale
    semi_y = (bottom - top) / 2 * scale
    # Normalized crop coordinates of pixel centres (faces.py: u = (x + 0.5) / size).
    u = (np.arange(width) + 0.5) / width
    v = (np.arange(height) + 0.5) / height
    return ((u[None, :] - centre_x) / semi_x) ** 2 + ((v[:, None] - centre_y) / semi_y) ** 2 <= 1


def _background(fill: Callable[[np.ndarray, np.random.Generator, Any], np.ndarray]
                ) -> Perturbation:
    """Keep the face ellipse of this level, replace the rest with `fill(image, rng, donors)`."""

    def replace(image: np.ndarray, level: int, rng: np.random.Generator,
                donors: Any) -> np.ndarray:
        keep = face_mask(*image.shape[:2], scale=FACE_ELLIPSE_SCALE[level - 1])
        return np.where(keep[:, :, None], image, fill(image, rng, donors))

    return replace


def _flat(image: np.ndarray, rng: np.random.Generator, donors: Any) -> np.ndarray:
    return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), image.shape)


def _uniform_noise(image: np.ndarray, rng: np.random.Generator, donors: Any) -> np.ndarray:
    return rng.integers(0, 256, image.shape, dtype=np.uint8)


def _donor(image: np.ndarray, rng: np.random.Generator, donors: Any) -> np.ndarray:
    if donors is None or not len(donors):
        raise ValueError("background_swap needs donor images (perturb(..., donors=images))")
    donor = _check_image(np.asarray(donors[int(rng.integers(len(donors)))]))
    if donor.shape != image.shape:
        donor = cv2.resize(donor, image.shape[1::-1], interpolation=cv2.INTER_AREA)
    return donor


PERTURBATIONS["background_flat"] = _background(_flat)
PERTURBATIONS["background_noise"] = _background(_uniform_noise)
PERTURBATIONS["background_swap"] = _background(_donor)


def perturb(image: np.ndarray, kind: str, level: int, seed: int = 0,
            donors: Sequence[np.ndarray] | np.ndarray | None = None) -> np.ndarray:
    """`image` perturbed by `kind` at severity `level` (1-5); the same (image, kind, level, seed)
    always gives the same result. `donors`: images whose backgrounds background_swap uses
    (e.g. the cached images of the same split), one drawn by the seed."""
    image = _check_image(image)
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; expected one of "
                         f"{', '.join(sorted(PERTURBATIONS))}")
    if level not in LEVELS:
        raise ValueError(f"perturbation level {level}: expected an integer 1-5")
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(PERTURBATIONS[kind](image, level, rng, donors))


def perturb_images(images: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """A perturbed copy of a stack of images [N, H, W, 3] (e.g. a split's cached images).

    Image i is perturbed with its own seed drawn from (seed, i), so its result does not depend
    on batching or order; background_swap takes its backgrounds from the other images.
    """
    out = np.array(images, dtype=np.uint8)  # a writable copy, also of a read-only memmap
    # generate_state(n) extends generate_state(m < n): image i's seed depends on i alone.
    for i, image_seed in enumerate(np.random.SeedSequence(seed).generate_state(len(out))):
        out[i] = perturb(np.asarray(images[i]), kind, level, int(image_seed), donors=images)
    return out


def parse_perturb_range(spec: str) -> tuple[str, int, int]:
    """"blur" -> (blur, 1, 5); "blur:3" -> (blur, 3, 3); "blur:2-4" -> (blur, 2, 4)."""
    kind, _, levels = spec.strip().partition(":")
    low, _, high = levels.partition("-")
    try:
        low_level = int(low) if low else LEVELS[0]
        high_level = int(high) if high else (low_level if low else LEVELS[-1])
    except ValueError:
        raise ValueError(f"perturbation {spec!r}: expected KIND, KIND:LEVEL or KIND:LOW-HIGH "
                         f"with levels 1-5") from None
    if kind not in PERTURBATIONS:
        raise ValueError(f"perturbation {spec!r}: unknown kind {kind!r}; expected one of "
                         f"{', '.join(sorted(PERTURBATIONS))}")
    if not LEVELS[0] <= low_level <= high_level <= LEVELS[-1]:
        raise ValueError(f"perturbation {spec!r}: levels must satisfy 1 <= LOW <= HIGH <= 5")
    return kind, low_level, high_level


def parse_perturb(spec: str) -> tuple[str, int]:
    """"blur:3" -> ("blur", 3): one kind at one level (the test-time `--perturb` value)."""
    kind, low, high = parse_perturb_range(spec)
    if low != high:
        raise ValueError(f"perturbation {spec!r}: expected KIND:LEVEL, e.g. blur:3")
    return kind, low


class RandomPerturbation(A.ImageOnlyTransform):
    """Albumentations transform: with probability p, one of `specs` (KIND, KIND:LEVEL or
    KIND:LOW-HIGH, see parse_perturb_range) at a level drawn from its range.

    Its randomness comes from albumentations' per-transform generator, so an AgeDataset that
    seeds the Compose by (seed, epoch, index) makes every epoch reproducible.
    """

    def __init__(self, specs: Sequence[str], donors: np.ndarray | None = None,
                 p: float = 0.5) -> None:
        super().__init__(p=p)
        if not specs:
            raise ValueError("RandomPerturbation needs at least one perturbation spec")
        self.specs = list(specs)
        self.choices = [parse_perturb_range(spec) for spec in self.specs]
        if donors is None and any(c[0] == "background_swap" for c in self.choices):
            raise ValueError("background_swap needs donor images (RandomPerturbation(donors=))")
        self.donors = donors

    def get_params(self) -> dict[str, Any]:
        kind, low, high = self.choices[self.py_random.randrange(len(self.choices))]
        return {"kind": kind, "level": self.py_random.randint(low, high),
                "seed": self.py_random.getrandbits(32)}

    def apply(self, img: np.ndarray, kind: str, level: int, seed: int,
              **params: Any) -> np.ndarray:
        return perturb(img, kind, level, seed, self.donors)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("specs", "p")  # donors (an image array) is not serialisable config
