"""Training augmentation policies (albumentations on cached uint8 images)."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np

from age_estimation.data.perturbations import RandomPerturbation


def build_train_transform(policy: str, perturb: Sequence[str] = (), perturb_p: float = 0.5,
                          donors: np.ndarray | None = None) -> A.Compose | None:
    """none -> None; basic: flip, small shift/scale/rotate, colour jitter; strong: basic with
    wider geometry plus greyscale, blur / JPEG artefacts and cut-out occlusion.

    perturb: perturbation specs (AUG.PERTURB, e.g. ["blur", "jpeg:1-3"]), one of which is
    applied with probability perturb_p before the policy, while the face is still where the
    background kinds expect it; donors: images for background_swap (the training cache).
    """
    first = [RandomPerturbation(perturb, donors, p=perturb_p)] if perturb else []
    if policy == "none":
        return A.Compose(first) if first else None
    basic = [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10),
                 border_mode=0, p=0.8),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
    ]
    if policy == "basic":
        return A.Compose(first + basic)
    if policy == "strong":
        return A.Compose([
            *first,
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.8, 1.2), translate_percent=(-0.08, 0.08), rotate=(-15, 15),
                     shear=(-5, 5), border_mode=0, p=0.9),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
            A.ToGray(p=0.1),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.ImageCompression(quality_range=(30, 90))],
                    p=0.3),
            A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.25),
                            hole_width_range=(0.1, 0.25), p=0.3),
        ])
    raise ValueError(f"AUG.POLICY = {policy!r}: expected none, basic or strong")
