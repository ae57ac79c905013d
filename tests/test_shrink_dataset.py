"""scripts/shrink_dataset.py: the small copy trains on the same pixels as the originals (up to
one JPEG re-encoding) and keeps FG-NET's landmarks on the face."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
from helpers import load_script

from age_estimation.data.cache import decode_record, load_image
from age_estimation.data.datasets import read_dataset

shrink = load_script("shrink_dataset")


def test_utkface_copy_matches_the_cache_resize_and_keeps_the_split(tmp_path):
    src = tmp_path / "utk"
    (src / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:200, 0:200]
    names = []
    for i in range(3):
        image = np.stack([xx, yy, (xx + yy) // 2 + 20 * i], axis=-1).clip(0, 255).astype(np.uint8)
        name = f"{20 + i}_0_1_2017010{i}.jpg.chip.jpg"
        cv2.imwrite(str(src / "images" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
        names.append(name)
    pd.DataFrame({"file": names, "age": [20, 21, 22], "gender": 0, "race": 1,
                  "split": ["train", "valid", "test"]}).to_csv(src / "splits.csv", index=False)

    assert shrink.main(["utkface", str(src), str(tmp_path / "small"), "--size", "64"]) == 0
    small = read_dataset("utkface", tmp_path / "small", "all")
    original = {r.id: r for r in read_dataset("utkface", src, "all")}
    assert sorted(r.id for r in small) == sorted(names)
    for record in small:
        copy = load_image(record.path)
        assert copy.shape == (64, 64, 3)
        expected = decode_record(original[record.id], 64)
        assert np.abs(decode_record(record, 64).astype(int) - expected).mean() < 2.0
        assert record.age == original[record.id].age


def test_fgnet_copy_aligns_to_the_same_face(real_dataset, tmp_path):
    root = real_dataset("fgnet")
    src = tmp_path / "fgnet"
    (src / "images").mkdir(parents=True)
    (src / "points").mkdir()
    picked = sorted((root / "images").iterdir())[:4]
    for path in picked:  # a few photos, to keep the test short
        (src / "images" / path.name).symlink_to(path)
        pts = f"{path.stem.lower()}.pts"
        (src / "points" / pts).symlink_to(root / "points" / pts)

    assert shrink.main(["fgnet", str(src), str(tmp_path / "small"), "--size", "128"]) == 0
    small = {r.id: r for r in read_dataset("fgnet", tmp_path / "small", "all")}
    for record in read_dataset("fgnet", src, "all"):
        copy = small[record.id]
        assert min(load_image(copy.path).shape[:2]) <= 128
        assert copy.age == record.age
        diff = np.abs(decode_record(copy, 64).astype(int) - decode_record(record, 64)).mean()
        assert diff < 6.0, (record.id, diff)  # measured ~1-2; landmarks off by 10 % give ~30
