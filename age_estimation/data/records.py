"""The one sample record every dataset reader yields.

Readers only parse labels and locate files; decoding (and, for FG-NET, landmark alignment)
happens once, in the image cache. Everything downstream sees the same fields whatever the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Record:
    """One face image and its labels."""

    path: str  # absolute path of the image file
    age: float  # the training target in years (real age, or apparent age for APPA-REAL)
    id: str  # stable, unique within a dataset (e.g. the file name relative to the dataset root)
    age_std: float = math.nan  # std of the label when known (APPA-REAL vote spread), else NaN
    attrs: dict[str, str] = field(default_factory=dict)  # e.g. gender, race, makeup (as strings)
    # (68, 2) or (5, 2) landmark pixel coordinates of the *original* image: when set, the cache
    # aligns the face to the UTKFace crop geometry instead of resizing the whole image.
    landmarks: np.ndarray | None = None
    # Point order of `landmarks`: dlib68 | dlib5 | fgnet68 (FG-NET numbers its 68 points
    # differently from dlib) | auto (guessed from the geometry, see faces.detect_scheme).
    landmark_scheme: str = "auto"
