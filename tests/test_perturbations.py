"""Test-time perturbations: determinism, shape, monotone severity, the kept face region."""

import itertools

import albumentations as A
import cv2
import numpy as np
import pytest
from skimage.data import astronaut, coffee

from age_estimation.data.perturbations import (
    FACE_ELLIPSE_SCALE,
    LEVELS,
    PERTURBATIONS,
    RandomPerturbation,
    face_mask,
    parse_perturb,
    parse_perturb_range,
    perturb,
    perturb_images,
)
from age_estimation.data.transforms import build_train_transform
from age_estimation.faces import UTKFACE_TEMPLATE

SIZE = 112


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The astronaut's head region (not a dataset face), at the model's input size."""
    return cv2.resize(astronaut()[20:260, 130:370], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def donors() -> np.ndarray:
    return cv2.resize(coffee(), (SIZE, SIZE))[None]


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (falls as an image gets blurrier)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def series(face, kind, measure, donors=None) -> list[float]:
    return [measure(perturb(face, kind, level, seed=7, donors=donors)) for level in LEVELS]


def strictly_increasing(values) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_every_kind_is_deterministic_and_keeps_shape_and_dtype(face, donors, kind):
    for level in (1, 5):
        out = perturb(face, kind, level, seed=3, donors=donors)
        assert out.shape == face.shape and out.dtype == np.uint8
        assert np.array_equal(out, perturb(face, kind, level, seed=3, donors=donors))
        assert not np.array_equal(out, face)
    assert face.flags.writeable and np.array_equal(face, face.copy())  # input untouched


@pytest.mark.parametrize("kind", ["noise", "occlusion", "background_flat", "background_noise"])
def test_random_kinds_depend_on_the_seed(face, kind):
    assert not np.array_equal(perturb(face, kind, 3, seed=0), perturb(face, kind, 3, seed=1))


def test_blur_and_downscale_remove_more_detail_at_higher_levels(face):
    for kind in ("blur", "downscale"):
        values = series(face, kind, sharpness)
        assert strictly_increasing([-v for v in values]), (kind, values)
        assert values[0] < sharpness(face)


def test_noise_std_grows(face):
    stds = series(face, "noise", lambda out: float((out.astype(float) - face).std()))
    assert strictly_increasing(stds)
    assert stds[0] == pytest.approx(4.0, rel=0.1) and stds[-1] > 25  # clipping trims level 5


def test_jpeg_error_grows(face):
    errors = series(face, "jpeg", lambda out: float(((out.astype(float) - face) ** 2).mean()))
    assert strictly_increasing(errors)


def test_lighting_changes_grow(face):
    shifts = series(face, "brightness", lambda out: float((out.astype(float) - face).mean()))
    assert strictly_increasing(shifts) and shifts[0] > 10
    means = series(face, "gamma", lambda out: float(out.mean()))
    assert strictly_increasing([-m for m in means]) and means[0] < face.mean()
    stds = series(face, "contrast", lambda out: float(out.std()))
    assert strictly_increasing([-s for s in stds]) and stds[0] < face.std()
    assert series(face, "contrast", lambda out: float(out.mean()))[-1] == pytest.approx(
        face.mean(), abs=3)  # contrast is reduced around the mean, not darkened


@pytest.mark.parametrize("kind", ["occlusion", "occlusion_black", "background_flat",
                                  "background_noise", "background_swap"])
def test_more_pixels_are_replaced_at_higher_levels(face, donors, kind):
    changed = series(face, kind, lambda out: int((out != face).any(axis=2).sum()), donors)
    assert strictly_increasing(changed)


def test_occlusion_patch_has_the_fill_and_size(face):
    out = perturb(face, "occlusion_black", 5, seed=0)
    side = round(0.55 * SIZE)
    assert int((out == 0).all(axis=2).sum()) >= side * side
    assert int((out != face).any(axis=2).sum()) <= side * side


@pytest.mark.parametrize("kind", ["background_flat", "background_noise", "background_swap"])
def test_background_keeps_the_face_region(face, donors, kind):
    for level in LEVELS:
        out = perturb(face, kind, level, seed=level, donors=donors)
        keep = face_mask(SIZE, SIZE, FACE_ELLIPSE_SCALE[level - 1])
        assert np.array_equal(out[keep], face[keep])
        if kind == "background_flat":
            assert len(np.unique(out[~keep], axis=0)) == 1
        if kind == "background_swap":
            assert np.array_equal(out[~keep], donors[0][~keep])


def test_face_mask_holds_eyes_nose_mouth_but_not_corners():
    size = 200
    for scale in FACE_ELLIPSE_SCALE:
        mask = face_mask(size, size, scale)
        for u, v in UTKFACE_TEMPLATE:
            assert mask[int(v * size), int(u * size)]
        assert not mask[[0, 0, -1, -1], [0, -1, 0, -1]].any()
    inner = face_mask(size, size, min(FACE_ELLIPSE_SCALE))
    assert 0.3 < inner.mean() < 0.6  # the inner face fills a third to a half of the crop


def test_perturb_images_seeds_each_image_by_its_index(face, donors):
    stack = np.stack([face, donors[0], face[::-1]])
    out = perturb_images(stack, "noise", 2, seed=5)
    assert out.shape == stack.shape and not np.array_equal(out, stack)
    assert np.array_equal(perturb_images(stack[:2], "noise", 2, seed=5), out[:2])
    assert not np.array_equal(out[0], perturb_images(stack, "noise", 2, seed=6)[0])
    swapped = perturb_images(stack, "background_swap", 5, seed=5)
    keep = face_mask(SIZE, SIZE, FACE_ELLIPSE_SCALE[-1])
    assert np.array_equal(swapped[0][keep], face[keep])
    assert any(np.array_equal(swapped[0][~keep], s[~keep]) for s in stack)


def test_background_swap_needs_donors(face):
    with pytest.raises(ValueError, match="donor"):
        perturb(face, "background_swap", 2)


def test_parse_perturb():
    assert parse_perturb("blur:3") == ("blur", 3)
    assert parse_perturb(" background_flat:5 ") == ("background_flat", 5)
    for bad in ("blur", "blur:0", "blur:6", "blur:x", "fog:2", "blur:2-3"):
        with pytest.raises(ValueError, match="perturbation"):
            parse_perturb(bad)
    assert parse_perturb_range("jpeg") == ("jpeg", 1, 5)
    assert parse_perturb_range("jpeg:2-4") == ("jpeg", 2, 4)
    with pytest.raises(ValueError, match="LOW <= HIGH"):
        parse_perturb_range("jpeg:4-2")


def test_bad_inputs_are_refused(face):
    with pytest.raises(ValueError, match="level"):
        perturb(face, "blur", 6)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(face, "fog", 1)
    with pytest.raises(ValueError, match="uint8"):
        perturb(face.astype(np.float32), "blur", 1)


def test_training_transform_is_seeded_and_draws_from_its_specs(face):
    transform = A.Compose([RandomPerturbation(["blur:5", "noise:1-2"], p=1.0)])
    outputs = []
    for seed in range(12):
        transform.set_random_seed(seed)
        out = transform(image=face)["image"]
        transform.set_random_seed(seed)
        assert np.array_equal(out, transform(image=face)["image"])
        outputs.append(out)
    candidates = [perturb(face, "blur", 5)]
    blurred = sum(any(np.array_equal(out, c) for c in candidates) for out in outputs)
    noisy = sum(float((out.astype(float) - face).std()) < 12 and sharpness(out) > sharpness(face)
                for out in outputs)
    assert blurred > 0 and noisy > 0 and blurred + noisy == len(outputs)
    with pytest.raises(ValueError, match="donor"):
        RandomPerturbation(["background_swap"])


def test_train_transform_applies_configured_perturbations(face):
    assert build_train_transform("none") is None
    transform = build_train_transform("none", ["occlusion_black:5"], perturb_p=1.0)
    transform.set_random_seed(0)
    out = transform(image=face)["image"]
    assert int((out == 0).all(axis=2).sum()) >= round(0.55 * SIZE) ** 2
    assert len(build_train_transform("basic", ["jpeg"]).transforms) == 4
