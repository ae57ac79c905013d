"""Decoded-image cache: pixels equal fresh decodes, keyed by content, bad images handled."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from age_estimation.data.cache import BadImageError, build_cache, decode_record, load_image
from age_estimation.data.records import Record


def make_images(folder, n=6, size=(50, 40)):
    records = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"img{i}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        records.append(Record(path=str(path), age=float(10 + i), id=path.name))
    return records


def test_cached_pixels_equal_fresh_decodes(tmp_path):
    records = make_images(tmp_path)
    images, kept = build_cache(records, 32, "t", tmp_path / "cache")
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    for record, cached in zip(kept, images):
        np.testing.assert_array_equal(cached, decode_record(record, 32))
    # The second call reads the memmap instead of decoding again.
    again, _ = build_cache(records, 32, "t", tmp_path / "cache")
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(images))


def test_changed_file_gets_a_new_cache_entry(tmp_path):
    records = make_images(tmp_path, n=2)
    first, _ = build_cache(records, 16, "t", tmp_path / "cache")
    cv2.imwrite(records[0].path, np.full((50, 40, 3), 255, np.uint8))
    second, _ = build_cache(records, 16, "t", tmp_path / "cache")
    assert (np.asarray(second[0]) >= 250).all()
    assert not np.array_equal(np.asarray(first[0]), np.asarray(second[0]))


def test_bad_images_are_skipped_and_counted(tmp_path, caplog):
    records = make_images(tmp_path, n=3)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    records += [Record(str(tmp_path / "empty.jpg"), 30.0, "empty.jpg"),
                Record(str(tmp_path / "text.jpg"), 31.0, "text.jpg")]
    with caplog.at_level(logging.WARNING):
        images, kept = build_cache(records, 16, "t", tmp_path / "cache")
    assert [r.id for r in kept] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert len(images) == 3
    assert "skipped 2 undecodable images" in caplog.text and "empty.jpg" in caplog.text


def test_bad_image_error_policy_names_the_file(tmp_path):
    records = make_images(tmp_path, n=1)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    records.append(Record(str(tmp_path / "broken.jpg"), 30.0, "broken.jpg"))
    with pytest.raises(BadImageError, match=r"broken\.jpg"):
        build_cache(records, 16, "t", tmp_path / "cache", on_bad_image="error")


def test_load_image_converts_grey_rgba_and_16bit_to_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((8, 8), 77, np.uint8))
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.dstack([np.full((8, 8), c, np.uint8) for c in (10, 20, 30, 0)]))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((8, 8, 3), 65535, np.uint16))
    assert load_image(str(grey)).shape == (8, 8, 3) and (load_image(str(grey)) == 77).all()
    assert load_image(str(rgba))[0, 0].tolist() == [30, 20, 10]  # BGR on disk -> RGB
    assert load_image(str(deep)).dtype == np.uint8 and (load_image(str(deep)) == 255).all()
    with pytest.raises(BadImageError, match=r"missing\.jpg"):
        load_image(str(tmp_path / "missing.jpg"))


def test_importing_the_data_pipeline_turns_off_albumentations_network_check():
    # albumentations asks PyPI for its latest version on import unless this variable is set.
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    code = ("import os, age_estimation.data.transforms, albumentations; "
            "print(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "1"
    assert "fetching version" not in out.stderr


def test_workers_forked_after_building_a_cache_do_not_deadlock(tmp_path):
    # Building a cache runs OpenCV in this process; DataLoader workers forked afterwards must
    # still load batches (OpenCV's thread pool state does not survive a fork).
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from pathlib import Path
from helpers import write_csv_dataset
from defaults import get_cfg_defaults
from age_estimation.data.build import eval_loader, load_split
csv = write_csv_dataset(Path({str(tmp_path)!r}), {{"test": 40}}, size=1200)  # big: OpenCV threads
cfg = get_cfg_defaults()
cfg.DATA.DATASET, cfg.DATA.ROOT, cfg.DATA.CACHE_DIR = "csv", str(csv), {str(tmp_path / "cache")!r}
cfg.MODEL.IMG_SIZE, cfg.DATA.NUM_WORKERS, cfg.TEST.BATCH_SIZE = 48, 2, 8
records, images = load_split(cfg, "test")
print(sum(len(batch["image"]) for batch in eval_loader(cfg, records, images)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "40"
