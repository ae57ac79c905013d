"""DATA.FRACTION subsets: stratified by age, seeded, nested across fractions."""

import collections

import pytest

from age_estimation.data.records import Record
from age_estimation.data.sampling import stratified_fraction


def toy_records():
    # 3 images aged 1, 30 aged 20, 100 aged 40, 7 aged 90 (ages stored as floats).
    counts = {1: 3, 20: 30, 40: 100, 90: 7}
    return [Record(path=f"/x/{age}_{i}.jpg", age=float(age) + 0.3, id=f"{age}_{i}")
            for age, n in counts.items() for i in range(n)]


def test_fraction_keeps_every_age_in_proportion():
    subset = stratified_fraction(toy_records(), 0.1, seed=0)
    per_age = collections.Counter(int(r.age) for r in subset)
    assert per_age == {1: 1, 20: 3, 40: 10, 90: 1}  # ceil(0.1 * n): rare ages keep one image


def test_fractions_are_nested_for_one_seed_and_differ_across_seeds():
    records = toy_records()
    ids = {f: {r.id for r in stratified_fraction(records, f, seed=3)} for f in (0.1, 0.25, 0.5)}
    assert ids[0.1] < ids[0.25] < ids[0.5] < {r.id for r in records}
    other_seed = {r.id for r in stratified_fraction(records, 0.25, seed=4)}
    assert other_seed != ids[0.25]
    assert {r.id for r in stratified_fraction(records, 0.25, seed=3)} == ids[0.25]


def test_full_fraction_and_bad_values():
    records = toy_records()
    assert stratified_fraction(records, 1.0, seed=0) == records
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"DATA\.FRACTION"):
            stratified_fraction(records, bad, seed=0)
