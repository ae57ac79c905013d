"""Crafted bad inputs: each ends in a clear message naming the file / row / key, in a counted
skip, or (for unusual but valid images) in correct RGB pixels; training never dies mid-epoch.

Inputs already covered elsewhere are listed in REFERENCED (and checked to still exist) rather
than tested twice; the image table below runs every crafted file through the image cache.
"""

import logging
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from age_estimation.data import cache
from age_estimation.data.cache import BadImageError, build_cache, load_image
from age_estimation.data.records import Record

REPO = Path(__file__).resolve().parents[1]
COLOUR = (200, 100, 50)  # RGB of the flat images that must load

# Bad input -> the test that covers it.
REFERENCED = {
    "zero-byte file (skipped, counted)": "test_cache.py::test_bad_images_are_skipped_and_counted",
    "text file named .jpg": "test_cache.py::test_bad_images_are_skipped_and_counted",
    "RGBA / 16-bit / greyscale PNG, missing file":
        "test_cache.py::test_load_image_converts_grey_rgba_and_16bit_to_rgb",
    "UTKFace names with missing fields": "test_datasets.py::test_utkface_bare_folder",
    "CSV row: empty path, non-numeric / NaN / negative / >130 age, duplicate row":
        "test_datasets.py::test_csv_bad_rows_name_file_and_line",
    "splits.csv row: missing image, bad split, non-numeric age":
        "test_datasets.py::test_utkface_splits_csv_bad_row",
    "dataset root that does not exist (reader)":
        "test_datasets.py::test_missing_root_names_the_path",
    "unknown config key (file and override)":
        "test_config.py::test_unknown_key_in_file_names_the_key_and_file",
    "wrong config type": "test_config.py::test_wrong_type_names_the_key",
    "config key with a meaningless value": "test_config.py::test_bad_values_name_the_key",
    "config error on the train.py command line":
        "test_config.py::test_train_cli_reports_config_errors_without_traceback",
    "!!python/object tag in a checkpoint's config":
        "test_reliability.py::test_config_with_a_python_tag_inside_a_checkpoint_is_refused",
    "checkpoint whose pickle runs code":
        "test_reliability.py::test_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs",
}


def test_referenced_tests_exist():
    for test in REFERENCED.values():
        file, name = test.split("::")
        assert f"def {name}(" in (REPO / "tests" / file).read_text(), test


# ------------------------------------------------------------------ crafted image files


def jpeg_bytes(size=(64, 64)) -> bytes:
    rng = np.random.default_rng(0)
    return cv2.imencode(".jpg", rng.integers(0, 255, (*size, 3), dtype=np.uint8))[1].tobytes()


def flat(mode: str, fmt: str, size=(16, 16)) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        Image.new("RGB", size, COLOUR).convert(mode).save(path, format=fmt)
    return write


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                            0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def write_huge_png(path: Path) -> None:
    # 1-bit pixels: a 10000x10000 PNG written in well under a second, 10 kB on disk.
    Image.new("1", (10_000, 10_000), 1).save(path)


# (name, file name, writer, expected): a message regex for refused files, or the RGB colour
# the image must load as.
IMAGE_CASES = [
    ("corrupt JPEG", "corrupt.jpg",
     write_bytes(jpeg_bytes()[:200] + bytes(range(256)) * 20), "not a decodable image"),
    ("truncated JPEG", "truncated.jpg",
     write_bytes(jpeg_bytes()[:len(jpeg_bytes()) // 2]), "not a decodable image"),
    ("truncated PNG", "truncated.png",
     write_bytes(cv2.imencode(".png", np.full((64, 64, 3), 9, np.uint8))[1].tobytes()[:90]),
     "not a decodable image"),
    ("JPEG header only", "header.jpg", write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF"),
     "not a decodable image"),
    ("HTML error page saved as .jpg", "page.jpg",
     write_bytes(b"<html><body>404 Not Found</body></html>"), "not a decodable image"),
    ("1x1 image", "one.png", flat("RGB", "PNG", (1, 1)), r"too small \(1x1 pixels"),
    ("3x200 sliver", "sliver.png", flat("RGB", "PNG", (3, 200)), r"too small \(3x200"),
    ("10000x10000 PNG", "huge.png", write_huge_png, r"too large \(10000x10000 pixels\)"),
    ("PNG header claiming 50000x50000", "bomb.png",
     write_bytes(png_header_only(50_000, 50_000)), "too large"),
    ("a folder named .jpg", "folder.jpg", lambda path: path.mkdir(), "cannot read file"),
    ("CMYK JPEG", "cmyk.jpg", flat("CMYK", "JPEG"), COLOUR),
    ("greyscale JPEG", "grey.jpg", flat("L", "JPEG"), (122, 122, 122)),
    ("palette GIF", "palette.gif", flat("P", "GIF"), None),
    ("PNG named .jpg", "png-inside.jpg", flat("RGB", "PNG"), COLOUR),
    ("BMP", "image.bmp", flat("RGB", "BMP"), COLOUR),
    ("JPEG with trailing garbage", "trailing.jpg",
     write_bytes(cv2.imencode(".jpg", np.full((16, 16, 3), COLOUR[::-1], np.uint8))[1].tobytes()
                 + b"\x00garbage" * 100), COLOUR),
]


@pytest.mark.parametrize(("file_name", "write", "expected"),
                         [pytest.param(*case[1:], id=case[0]) for case in IMAGE_CASES])
def test_crafted_image(tmp_path, caplog, file_name, write, expected):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((40, 40, 3), 128, np.uint8))
    crafted = tmp_path / file_name
    write(crafted)
    records = [Record(str(good), 20.0, "good.png"), Record(str(crafted), 30.0, file_name)]
    with caplog.at_level(logging.WARNING):
        images, kept = build_cache(records, 16, "t", tmp_path / "cache")
    if isinstance(expected, str):
        assert [r.id for r in kept] == ["good.png"] and len(images) == 1
        assert "skipped 1 undecodable images" in caplog.text
        assert re.search(rf"{re.escape(str(crafted))}: .*{expected}", caplog.text)
        # The error policy names the file too, even when the cache was built under skip.
        with pytest.raises(BadImageError, match=rf"{re.escape(file_name)}: .*{expected}"):
            build_cache(records, 16, "t", tmp_path / "cache", on_bad_image="error")
    else:
        assert [r.id for r in kept] == ["good.png", file_name]
        pixels = np.asarray(images[1])
        assert pixels.shape == (16, 16, 3)
        if expected is not None:
            np.testing.assert_allclose(pixels[8, 8], expected, atol=3)


def test_huge_image_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    write_huge_png(path)

    def no_decoding(*_):
        raise AssertionError("decoded the pixels of a refused image")

    monkeypatch.setattr(cache.cv2, "imdecode", no_decoding)
    with pytest.raises(BadImageError, match=r"huge\.png: image too large"):
        load_image(str(path))


# ------------------------------------------------------------------ train.py end to end


@pytest.fixture
def train_main(monkeypatch):
    """train.py's main() in this process (imports already paid for): logging left to pytest,
    torch's thread count restored afterwards."""
    import torch

    import train

    monkeypatch.setattr(train, "setup_logging", lambda *_, **__: None)
    threads = torch.get_num_threads()

    def run(out: Path, root: Path) -> int:
        return train.main([
            "--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
            "DATA.DATASET", "csv", "DATA.ROOT", str(root), "DATA.CACHE_DIR",
            str(out.parent / "cache"), "DATA.NUM_WORKERS", "0", "MODEL.BACKBONE", "test_resnet",
            "MODEL.IMG_SIZE", "32",
            "TRAIN.EPOCHS", "1", "TRAIN.BATCH_SIZE", "4", "TRAIN.THREADS", "1"])

    yield run
    torch.set_num_threads(threads)


@pytest.fixture
def dataset_with_bad_files(tmp_path) -> Path:
    """12 good train images, 4 valid, and 4 bad train files listed in the CSV."""
    rows = []
    for i in range(16):
        cv2.imwrite(str(tmp_path / f"face{i}.png"), np.full((40, 40, 3), 10 + 10 * i, np.uint8))
        rows.append(("train" if i < 12 else "valid", f"face{i}.png", 10 + 3 * i))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes()[:300])
    flat("RGB", "PNG", (1, 1))(tmp_path / "dot.png")
    rows += [("train", name, 40) for name in ("empty.jpg", "notes.jpg", "cut.jpg", "dot.png")]
    table = pd.DataFrame(rows, columns=["split", "path", "age"])
    table.sample(frac=1, random_state=0).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_training_on_a_dataset_with_bad_files_skips_them_before_the_first_step(
        dataset_with_bad_files, tmp_path, train_main, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert train_main(out, dataset_with_bad_files) == 0
    log = caplog.text
    skipped = next(line for line in log.splitlines() if "skipped 4 undecodable images" in line)
    assert re.search(r"(empty|notes|cut)\.jpg: |dot\.png: ", skipped)
    assert "train 12 images, valid 4" in log
    # every image was decoded (or skipped) before the first step
    assert log.index("skipped 4 undecodable") < log.index("epoch 1/1")
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1]


@pytest.mark.parametrize(("labels", "message"), [
    (None, r"^error: csv data not found at .*nowhere\.csv$"),
    ("path,age,split\nface0.png,150,train\n",
     r"^error: .*labels\.csv, line 2: age '150' is not in \[0, 130\]$"),
])
def test_train_cli_reports_data_errors_cleanly(tmp_path, train_main, capsys, labels, message):
    root = tmp_path / "nowhere.csv"
    if labels is not None:
        cv2.imwrite(str(tmp_path / "face0.png"), np.zeros((16, 16, 3), np.uint8))
        root = tmp_path / "labels.csv"
        root.write_text(labels)
    assert train_main(tmp_path / "run", root) == 2
    assert re.search(message, capsys.readouterr().err.strip())
