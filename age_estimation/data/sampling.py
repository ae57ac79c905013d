"""Subsets of the training split."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from age_estimation.data.records import Record


def stratified_fraction(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """A seeded subset keeping `fraction` of the images of every integer age (at least one each).

    Each age's images are shuffled once by `seed` and the first ceil(fraction * n) are kept, so
    for one seed the subsets are nested: 10 % is inside 25 %, inside 50 %, inside 100 %.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"DATA.FRACTION = {fraction}: expected a value in (0, 1]")
    if fraction == 1.0:
        return list(records)
    by_age: dict[int, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_age[int(record.age)].append(index)
    rng = np.random.default_rng(seed)
    kept = []
    for age in sorted(by_age):
        indices = by_age[age]
        order = rng.permutation(len(indices))
        kept.extend(indices[i] for i in order[: math.ceil(fraction * len(indices))])
    return [records[i] for i in sorted(kept)]
