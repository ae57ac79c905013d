"""Dataset readers: real UTKFace / FG-NET, and tiny fixtures for every layout and error path."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from age_estimation.data.datasets import (
    DATASETS,
    DatasetError,
    default_data_dir,
    parse_data_spec,
    read_dataset,
)

LOGGER = "age_estimation.data.datasets"


def write_image(path: Path, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), 127, np.uint8))
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- registry and specs


def test_registry_has_all_readers() -> None:
    assert {"utkface", "appa_real", "csv", "fgnet"} <= set(DATASETS)


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imdb'") as err:
        read_dataset("imdb", str(tmp_path), "train")
    for name in ("utkface", "appa_real", "csv", "fgnet"):
        assert name in str(err.value)


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        read_dataset("utkface", str(missing), "train")


def test_unknown_split_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        read_dataset("utkface", str(tmp_path), "val")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fgnet:/x/fgnet", ("fgnet", "/x/fgnet")),
        ("csv:/x/labels.csv", ("csv", "/x/labels.csv")),
        ("csv:C:/data/a:b.csv", ("csv", "C:/data/a:b.csv")),
        ("appa_real:relative/dir", ("appa_real", "relative/dir")),
    ],
)
def test_parse_data_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_data_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "fgnet", ":/x/fgnet", "fgnet:", "  :  "])
def test_parse_data_spec_malformed(spec: str) -> None:
    with pytest.raises(ValueError, match="expected KIND:PATH") as err:
        parse_data_spec(spec)
    assert "fgnet" in str(err.value) and "utkface" in str(err.value)


def test_parse_data_spec_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown kind 'imdb'") as err:
        parse_data_spec("imdb:/x")
    assert "appa_real" in str(err.value)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGE_ESTIMATION_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("AGE_ESTIMATION_DATA")
    repo_root = Path(__file__).resolve().parents[1]
    assert default_data_dir() == repo_root.parent / "shared" / "data"


# ---------------------------------------------------------------- UTKFace


def test_real_utkface_splits(real_dataset) -> None:
    root = real_dataset("utkface")
    splits = {s: read_dataset("utkface", str(root), s) for s in ("train", "valid", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 17204, "valid": 1500, "test": 3000}
    ids = [r.id for records in splits.values() for r in records]
    assert len(set(ids)) == len(ids) == 21704  # disjoint splits
    every = [r for records in splits.values() for r in records]
    assert min(r.age for r in every) == 1 and max(r.age for r in every) == 116
    assert {r.attrs["gender"] for r in every} == {"0", "1"}
    assert {r.attrs["race"] for r in every} == {"0", "1", "2", "3", "4"}
    first = splits["test"][0]
    assert Path(first.path).is_absolute() and Path(first.path).is_file()
    assert first.age == float(first.id.split("_")[0]) and math.isnan(first.age_std)


def test_real_utkface_all_split(real_dataset) -> None:
    assert len(read_dataset("utkface", str(real_dataset("utkface")), "all")) == 21704


def test_utkface_bare_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = ["25_0_1_20170109150557335.jpg.chip.jpg", "3_1_4_x.png", "80_1_2_2017.jpg"]
    bad = ["39_1_20170116174525125.jpg.chip.jpg", "abc_0_0_2017.jpg", "30_0_0.jpg", "7__1_x.jpg"]
    for name in good + bad:
        write_image(tmp_path / name)
    write_text(tmp_path / "notes.txt", "not an image, not counted as malformed")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        records = read_dataset("utkface", str(tmp_path), "valid")
    assert sorted(r.id for r in records) == sorted(good)
    by_id = {r.id: r for r in records}
    assert by_id["3_1_4_x.png"].age == 3.0
    assert by_id["3_1_4_x.png"].attrs == {"gender": "1", "race": "4"}
    assert by_id["80_1_2_2017.jpg"].path == str(tmp_path / "80_1_2_2017.jpg")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 4 image(s)" in warnings[0] and "39_1_20170116174525125" in warnings[0]
    assert any("no official splits" in r.getMessage() for r in caplog.records)


def _write_utkface_csv(root: Path, rows: list[str]) -> Path:
    for name in ("1_0_0_a.jpg", "2_1_3_b.jpg", "3_0_4_c.jpg"):
        write_image(root / "images" / name)
    return write_text(root / "splits.csv", "file,age,gender,race,split\n" + "\n".join(rows) + "\n")


def test_utkface_splits_csv(tmp_path: Path) -> None:
    _write_utkface_csv(
        tmp_path, ["1_0_0_a.jpg,1,0,0,train", "2_1_3_b.jpg,2,1,3,test", "3_0_4_c.jpg,3,0,4,train"]
    )
    train = read_dataset("utkface", str(tmp_path), "train")
    assert [(r.id, r.age) for r in train] == [("1_0_0_a.jpg", 1.0), ("3_0_4_c.jpg", 3.0)]
    assert train[1].attrs == {"gender": "0", "race": "4"}
    assert [r.id for r in read_dataset("utkface", str(tmp_path), "test")] == ["2_1_3_b.jpg"]
    assert read_dataset("utkface", str(tmp_path), "valid") == []
    assert len(read_dataset("utkface", str(tmp_path), "all")) == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("9_0_0_missing.jpg,9,0,0,train", "image .*9_0_0_missing.jpg not found"),
        ("2_1_3_b.jpg,2,1,3,val", "split 'val' is not one of"),
        ("2_1_3_b.jpg,two,1,3,train", "age 'two' is not a number"),
    ],
)
def test_utkface_splits_csv_bad_row(tmp_path: Path, row: str, message: str) -> None:
    _write_utkface_csv(tmp_path, ["1_0_0_a.jpg,1,0,0,train", row])
    with pytest.raises(DatasetError, match=rf"splits\.csv, line 3: {message}"):
        read_dataset("utkface", str(tmp_path), "all")


# ---------------------------------------------------------------- APPA-REAL

APPA_GT = {
    "train": [
        ("000000.jpg", 36, 5.0, 1.146, 4),
        ("000001.jpg", 63, 20.079, 4.096, 18),
        ("000002.jpg", 38, 76.5, 5.006, 80),
    ],
    "valid": [("000000.jpg", 40, 30.25, 2.5, 29), ("000001.jpg", 37, 41.0, 3.25, 45)],
    "test": [("000000.jpg", 38, 64.9, 6.1, 66)],
}
APPA_ATTRS = {
    "train": [
        ("000000.jpg", "male", "caucasian", "nomakeup", "modernphoto", "neutral"),
        ("000001.jpg", "female", "asian", "makeup", "modernphoto", "happy"),
        ("000002.jpg", "male", "afroamerican", "nomakeup", "oldphoto", "slightlyhappy"),
    ],
    "valid": [
        ("000000.jpg", "female", "caucasian", "makeup", "modernphoto", "happy"),
        ("000001.jpg", "male", "asian", "nomakeup", "modernphoto", "neutral"),
    ],
    "test": [("000000.jpg", "female", "caucasian", "nomakeup", "oldphoto", "other")],
}


@pytest.fixture
def appa_root(tmp_path: Path) -> Path:
    """A tiny APPA-REAL in the official release layout (crops next to the full images)."""
    root = tmp_path / "appa-real-release"
    for split, rows in APPA_GT.items():
        gt = ["file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age"]
        gt += [",".join(map(str, row)) for row in rows]
        write_text(root / f"gt_avg_{split}.csv", "\n".join(gt) + "\n")
        cats = ["file,gender,race,makeup,time,happiness"]
        cats += [",".join(row) for row in APPA_ATTRS[split]]
        write_text(root / f"allcategories_{split}.csv", "\n".join(cats) + "\n")
        for name, *_ in rows:
            write_image(root / split / name, (16, 12))
            write_image(root / split / f"{name}_face.jpg")
    return root


def test_appa_apparent_labels(appa_root: Path) -> None:
    records = read_dataset("appa_real", str(appa_root), "train")
    assert [r.id for r in records] == ["train/000000.jpg", "train/000001.jpg", "train/000002.jpg"]
    second = records[1]
    assert second.path == str(appa_root / "train" / "000001.jpg_face.jpg")
    assert second.age == pytest.approx(20.079) and second.age_std == pytest.approx(4.096)
    assert second.attrs == {
        "gender": "female",
        "race": "asian",
        "makeup": "makeup",
        "time": "modernphoto",
        "happiness": "happy",
        "real_age": "18",
    }


def test_appa_real_labels(appa_root: Path) -> None:
    records = read_dataset("appa_real", str(appa_root), "valid", label="real")
    assert [r.age for r in records] == [29.0, 45.0]
    assert all(math.isnan(r.age_std) for r in records)
    assert records[0].attrs["apparent_age"] == "30.25" and "real_age" not in records[0].attrs
    assert records[0].attrs["gender"] == "female"


def test_appa_unknown_label(appa_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown label 'mean'"):
        read_dataset("appa_real", str(appa_root), "train", label="mean")


def test_appa_all_splits_have_unique_ids(appa_root: Path) -> None:
    records = read_dataset("appa_real", str(appa_root), "all")
    assert len(records) == 6
    assert len({r.id for r in records}) == 6
    assert {r.id.split("/")[0] for r in records} == {"train", "valid", "test"}


@pytest.mark.parametrize(
    "listing",
    [
        "img_name\n000001.jpg\n000000.jpg\n",  # yu4u/age-estimation-pytorch's ignore_list.csv
        "000001.jpg\n000000.jpg_face.jpg\n",  # plain list, no header
        "id,file_name\n7,000001.jpg\n8,000000.jpg\n",  # named column, not the first
    ],
)
def test_appa_exclusion(
    appa_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, listing: str
) -> None:
    exclude = write_text(tmp_path / "ignore_list.csv", listing)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        records = read_dataset("appa_real", str(appa_root), "all", exclude=str(exclude))
    # Names are per split: 000000/000001 exist in train and valid, 000000 in test.
    assert [r.id for r in records] == ["train/000002.jpg"]
    assert any("excluded 5 images" in r.getMessage() for r in caplog.records)


def test_appa_empty_exclusion_list_drops_nothing(appa_root: Path, tmp_path: Path) -> None:
    exclude = write_text(tmp_path / "ignore_list.csv", "")
    assert len(read_dataset("appa_real", str(appa_root), "valid", exclude=str(exclude))) == 2


def test_appa_missing_face_image_names_the_row(appa_root: Path) -> None:
    (appa_root / "train" / "000001.jpg_face.jpg").unlink()
    with pytest.raises(DatasetError, match=r"gt_avg_train\.csv, line 3: face image .*000001"):
        read_dataset("appa_real", str(appa_root), "train")


def test_appa_bad_age_names_the_row(appa_root: Path) -> None:
    gt = appa_root / "gt_avg_test.csv"
    gt.write_text(gt.read_text().replace(",66", ",sixty"))
    with pytest.raises(DatasetError, match=r"gt_avg_test\.csv, line 2: real_age 'sixty'"):
        read_dataset("appa_real", str(appa_root), "test")


# ---------------------------------------------------------------- generic CSV


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    for name in ("a.jpg", "sub/b.png", "c.jpg"):
        write_image(tmp_path / "faces" / name)
    return tmp_path / "faces"


def test_csv_reader(csv_root: Path, tmp_path: Path) -> None:
    outside = write_image(tmp_path / "elsewhere" / "d.jpg")
    labels = write_text(
        csv_root / "labels.csv",
        "path,age,age_std,gender,split,source\n"
        "a.jpg,21,1.5,f,train,web\n"
        "\n"
        "sub/b.png,3.5,,m,test,scan\n"
        f"{outside},60,,f,train,web\n"
        "./sub/../c.jpg,0,0,m,valid,web\n",
    )
    records = read_dataset("csv", str(labels), "train")
    assert [(r.id, r.age) for r in records] == [("a.jpg", 21.0), (str(outside), 60.0)]
    assert records[0].path == str(csv_root / "a.jpg") and records[1].path == str(outside)
    assert records[0].age_std == 1.5 and math.isnan(records[1].age_std)
    assert records[0].attrs == {"gender": "f", "source": "web"}
    every = read_dataset("csv", str(labels), "all")
    assert [r.path for r in every][2:] == [str(outside), str(csv_root / "c.jpg")]
    assert every[1].path == str(csv_root / "sub" / "b.png") and every[1].age == 3.5


def test_csv_without_split_column_returns_every_row(csv_root: Path) -> None:
    labels = write_text(csv_root / "labels.csv", "path,age\na.jpg,5\nc.jpg,7\n")
    assert [r.age for r in read_dataset("csv", str(labels), "test")] == [5.0, 7.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("file,age\na.jpg,3\n", "missing column.* path .*line 1"),
        ("path,years\na.jpg,3\n", "missing column.* age .*line 1"),
        ("path,age\na.jpg,3\n,4\n", "line 3: empty path"),
        ("path,age\na.jpg,3\nc.jpg,old\n", "line 3: age 'old' is not a number"),
        ("path,age\na.jpg,3\nc.jpg,nan\n", r"line 3: age 'nan' is not in \[0, 130\]"),
        ("path,age\na.jpg,3\nc.jpg,\n", "line 3: age '' is not a number"),
        ("path,age\na.jpg,3\nc.jpg,-1\n", r"line 3: age '-1' is not in \[0, 130\]"),
        ("path,age\na.jpg,3\nc.jpg,131\n", r"line 3: age '131' is not in \[0, 130\]"),
        ("path,age\na.jpg,3\n\nz.jpg,4\n", "line 4: image .*z.jpg not found"),
        ("path,age\na.jpg,3\nc.jpg,4\n./a.jpg,5\n", "line 4: duplicate path './a.jpg'.*line 2"),
        ("path,age,split\na.jpg,3,train\nc.jpg,4,training\n", "line 3: split 'training'"),
        ("path,age,age_std\na.jpg,3,wide\n", "line 2: age_std 'wide' is not a number"),
    ],
)
def test_csv_bad_rows_name_file_and_line(csv_root: Path, body: str, message: str) -> None:
    labels = write_text(csv_root / "bad_labels.csv", body)
    with pytest.raises(DatasetError, match=rf"bad_labels\.csv.*{message}"):
        read_dataset("csv", str(labels), "all")


# ---------------------------------------------------------------- FG-NET


def test_real_fgnet(real_dataset) -> None:
    records = read_dataset("fgnet", str(real_dataset("fgnet")), "test")
    assert len(records) == 505
    assert len({r.id for r in records}) == 505
    assert len({r.attrs["subject"] for r in records}) == 41
    ages = [r.age for r in records]
    assert min(ages) == 0 and max(ages) == 61  # this 41-subject half spans 0..61 of FG-NET's 0..69
    by_id = {r.id: r for r in records}
    assert by_id["001A43a.JPG"].age == 43.0 and by_id["001A43a.JPG"].attrs == {"subject": "001"}
    for record in records[::50]:
        assert record.landmarks.shape == (68, 2) and record.landmarks.dtype == np.float32
        height, width = cv2.imread(record.path, cv2.IMREAD_GRAYSCALE).shape
        assert (record.landmarks >= 0).all()
        assert (record.landmarks[:, 0] < width).all() and (record.landmarks[:, 1] < height).all()


def _pts(points: np.ndarray, n_points: int | None = None) -> str:
    body = "\n".join(f"{x} {y}" for x, y in points)
    return f"version: 1\nn_points: {n_points or len(points)}\n{{\n{body}\n}}\n"


@pytest.fixture
def fgnet_root(tmp_path: Path) -> Path:
    points = np.stack([np.arange(68), np.arange(68) * 0.5], axis=1)
    for name in ("002A05.JPG", "002a07.JPG", "010A07b.JPG"):
        write_image(tmp_path / "images" / name)
        write_text(tmp_path / "points" / f"{name[:-4].lower()}.pts", _pts(points))
    return tmp_path


def test_fgnet_fixture(fgnet_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        records = read_dataset("fgnet", str(fgnet_root), "train")
    assert [(r.id, r.age, r.attrs["subject"]) for r in records] == [
        ("002A05.JPG", 5.0, "002"),
        ("002a07.JPG", 7.0, "002"),
        ("010A07b.JPG", 7.0, "010"),
    ]
    assert records[2].landmarks[67].tolist() == [67.0, 33.5]
    assert any("no official splits" in r.getMessage() for r in caplog.records)


def test_fgnet_missing_points_names_the_file(fgnet_root: Path) -> None:
    (fgnet_root / "points" / "010a07b.pts").unlink()
    with pytest.raises(DatasetError, match=r"010a07b\.pts: landmark file not found"):
        read_dataset("fgnet", str(fgnet_root), "all")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_pts(np.zeros((67, 2))), "n_points: 67 and 67 lines"),
        (_pts(np.zeros((67, 2)), n_points=68), "n_points: 68 and 67 lines"),
        (_pts(np.zeros((68, 2))).replace("{\n", ""), "no '{ ... }' block"),
        (_pts(np.zeros((68, 2))).replace("0.0 0.0", "0.0 zero", 1), "line 4: expected 'x y'"),
        (_pts(np.zeros((68, 2))).replace("0.0 0.0", "0.0", 1), "line 4: expected 'x y'"),
    ],
)
def test_fgnet_invalid_points(fgnet_root: Path, text: str, message: str) -> None:
    write_text(fgnet_root / "points" / "002a07.pts", text)
    with pytest.raises(DatasetError, match=rf"002a07\.pts.*{message}"):
        read_dataset("fgnet", str(fgnet_root), "all")
