"""Dataset readers: turn a dataset folder (or a label CSV) into a list of `Record`s.

Each reader is registered under a name (`utkface`, `appa_real`, `csv`, `fgnet`) and only parses
labels and locates files; images are decoded later, in the image cache. Label files are checked
strictly: a bad row raises `DatasetError` naming the file and line instead of silently training
on wrong labels.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from age_estimation.data.records import Record

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MAX_AGE = 130.0
LABELS = ("apparent", "real")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# A reader gets the (absolute) dataset root, the split (train|valid|test|all), the label kind
# and the optional exclusion file, and returns the records of that split.
Reader = Callable[[Path, str, str, str], list[Record]]
DATASETS: dict[str, Reader] = {}


class DatasetError(ValueError):
    """A malformed label file; the message names the file and the 1-based line number or key."""


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    """Register a reader under `name` so `read_dataset(name, ...)` and `KIND:PATH` specs find it."""

    def decorator(reader: Reader) -> Reader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = reader
        return reader

    return decorator


def read_dataset(
    name: str, root: str, split: str, label: str = "apparent", exclude: str = ""
) -> list[Record]:
    """Read the records of one split (train|valid|test|all) of dataset `name` found at `root`.

    `label` picks the target of datasets with several (APPA-REAL: apparent or real age); the
    others only have real age and ignore it. `exclude` is an optional list of image names to drop
    (APPA-REAL only).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}, all")
    if not Path(root).exists():
        raise FileNotFoundError(f"{name} data not found at {root}")
    # Readers build record paths from the root, so make it absolute (without following links).
    records = DATASETS[name](Path(os.path.abspath(root)), split, label, exclude)
    logger.info("%s (%s): %d records from %s", name, split, len(records), root)
    return records


def parse_data_spec(spec: str) -> tuple[str, str]:
    """Split a CLI data spec `KIND:PATH` (e.g. `fgnet:/data/fgnet`) into (kind, path).

    Only the first ':' separates, so PATH may contain ':' itself.
    """
    kind, sep, path = spec.partition(":")
    kind, path = kind.strip(), path.strip()
    known = ", ".join(sorted(DATASETS))
    if not sep or not kind or not path:
        raise ValueError(f"bad data spec {spec!r}: expected KIND:PATH with KIND one of {known}")
    if kind not in DATASETS:
        raise ValueError(f"bad data spec {spec!r}: unknown kind {kind!r}; known kinds: {known}")
    return kind, path


def default_data_dir() -> Path:
    """Where the datasets live: $AGE_ESTIMATION_DATA, else `../shared/data` from the repo root."""
    env = os.environ.get("AGE_ESTIMATION_DATA")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data"


# ---------------------------------------------------------------- shared helpers


def _read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a label CSV as strings, with a `_line` column holding each row's 1-based line number.

    Blank lines are kept while numbering (so line numbers match an editor) and dropped afterwards.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot parse CSV: {err}") from err
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (line 1)")
    df = df.apply(lambda col: col.str.strip())
    df["_line"] = df.index + 2  # line 1 is the header
    return df[(df.drop(columns="_line") != "").any(axis=1)]


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}"


def _parse_age(value: str, path: Path, line: int, column: str = "age") -> float:
    try:
        age = float(value)
    except ValueError:
        raise DatasetError(f"{_where(path, line)}: {column} {value!r} is not a number") from None
    if not 0 <= age <= MAX_AGE:  # also rejects NaN
        raise DatasetError(f"{_where(path, line)}: {column} {value!r} is not in [0, {MAX_AGE:g}]")
    return age


def _parse_std(value: str, path: Path, line: int) -> float:
    if value == "":
        return math.nan
    try:
        std = float(value)
    except ValueError:
        raise DatasetError(f"{_where(path, line)}: age_std {value!r} is not a number") from None
    if std < 0:
        raise DatasetError(f"{_where(path, line)}: age_std {value!r} is negative")
    return std


def _select_split(df: pd.DataFrame, split: str, path: Path) -> pd.DataFrame:
    """Keep the rows of `split` (all rows for split=all), rejecting unknown split names."""
    bad = df[~df["split"].isin(SPLITS)]
    if len(bad):
        line, value = bad.iloc[0][["_line", "split"]]
        expected = ", ".join(SPLITS)
        raise DatasetError(f"{_where(path, line)}: split {value!r} is not one of {expected}")
    return df if split == "all" else df[df["split"] == split]


def _log_no_splits(name: str, split: str, count: int) -> None:
    if split != "all":
        logger.info("%s has no official splits: split=%s returns all %d images", name, split, count)


def _image_files(folder: Path) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))


def _warn_skipped(skipped: list[str], folder: Path, expected: str) -> None:
    if skipped:
        logger.warning(
            "skipped %d image(s) in %s whose names do not match %s, e.g. %s",
            len(skipped),
            folder,
            expected,
            ", ".join(skipped[:3]),
        )


# ---------------------------------------------------------------- UTKFace

# age_gender_race_datetime.jpg.chip.jpg; gender 0/1, race 0..4.
_UTK_NAME = re.compile(r"^(\d+)_([01])_([0-4])_.+$")


@register_dataset("utkface")
def read_utkface(root: Path, split: str, _label: str, exclude: str) -> list[Record]:
    """UTKFace: `root/splits.csv` + `root/images/`, or a bare folder of UTKFace-named images."""
    _reject_exclude("utkface", exclude)
    splits_csv = root / "splits.csv"
    if splits_csv.is_file():
        return _utkface_from_csv(splits_csv, root / "images", split)
    return _utkface_from_names(root, split)


def _utkface_from_csv(path: Path, images: Path, split: str) -> list[Record]:
    df = _select_split(_read_csv(path, ("file", "age", "gender", "race", "split")), split, path)
    present = set(os.listdir(images)) if images.is_dir() else set()
    records = []
    for row in df.to_dict("records"):
        name, line = row["file"], row["_line"]
        if name not in present:
            raise DatasetError(f"{_where(path, line)}: image {images / name} not found")
        records.append(
            Record(
                path=str(images / name),
                age=_parse_age(row["age"], path, line),
                id=name,
                attrs={"gender": row["gender"], "race": row["race"]},
            )
        )
    return records


def _utkface_from_names(folder: Path, split: str) -> list[Record]:
    records, skipped = [], []
    for name in _image_files(folder):
        # Everything before the first '.' holds the labels ('.jpg.chip.jpg' is a double suffix).
        match = _UTK_NAME.match(name.split(".", 1)[0])
        if not match or float(match[1]) > MAX_AGE:
            skipped.append(name)
            continue
        records.append(
            Record(
                path=str(folder / name),
                age=float(match[1]),
                id=name,
                attrs={"gender": match[2], "race": match[3]},
            )
        )
    _warn_skipped(skipped, folder, "age_gender_race_datetime")
    _log_no_splits(f"UTKFace folder {folder} (no splits.csv)", split, len(records))
    return records


def _reject_exclude(name: str, exclude: str) -> None:
    if exclude:
        raise ValueError(f"{name}: an exclusion list is only supported for appa_real")


# ---------------------------------------------------------------- APPA-REAL

_APPA_GT_COLUMNS = ("file_name", "apparent_age_avg", "apparent_age_std", "real_age")
_APPA_ATTR_COLUMNS = ("gender", "race", "makeup", "time", "happiness")


@register_dataset("appa_real")
def read_appa_real(root: Path, split: str, label: str, exclude: str) -> list[Record]:
    """APPA-REAL official release: `{split}/*.jpg_face.jpg`, `gt_avg_*.csv`, `allcategories_*.csv`.

    label="apparent": age is the mean of the votes, age_std their spread; label="real": the real
    age. The other age is kept in attrs (`real_age` / `apparent_age`).
    """
    if label not in LABELS:
        raise ValueError(f"appa_real: unknown label {label!r}; expected one of {', '.join(LABELS)}")
    excluded = _read_exclude_list(Path(exclude)) if exclude else set()
    records: list[Record] = []
    dropped = 0
    for name in SPLITS if split == "all" else (split,):
        split_records, split_dropped = _appa_split(root, name, label, excluded)
        records += split_records
        dropped += split_dropped
    if exclude:
        logger.info("appa_real (%s): excluded %d images listed in %s", split, dropped, exclude)
    return records


def _appa_split(root: Path, split: str, label: str, excluded: set[str]) -> tuple[list[Record], int]:
    gt_path = root / f"gt_avg_{split}.csv"
    if not gt_path.is_file():
        raise FileNotFoundError(f"APPA-REAL label file not found: {gt_path}")
    gt = _read_csv(gt_path, _APPA_GT_COLUMNS)
    kept = gt[~gt["file_name"].isin(excluded)]
    attrs = _appa_attributes(root / f"allcategories_{split}.csv")
    records = []
    for row in kept.to_dict("records"):
        name, line = row["file_name"], row["_line"]
        image = root / split / f"{name}_face.jpg"
        if not image.is_file():
            raise DatasetError(f"{_where(gt_path, line)}: face image {image} not found")
        apparent = _parse_age(row["apparent_age_avg"], gt_path, line, "apparent_age_avg")
        real = _parse_age(row["real_age"], gt_path, line, "real_age")
        extra = dict(attrs.get(name, {}))
        if label == "apparent":
            age, std = apparent, _parse_std(row["apparent_age_std"], gt_path, line)
            extra["real_age"] = row["real_age"]
        else:
            age, std = real, math.nan
            extra["apparent_age"] = row["apparent_age_avg"]
        records.append(
            Record(
                path=str(image),
                age=age,
                id=f"{split}/{name}",
                age_std=std,
                attrs=extra,
            )
        )
    return records, len(gt) - len(kept)


def _appa_attributes(path: Path) -> dict[str, dict[str, str]]:
    """Per-image attributes (gender, race, makeup, time, happiness) keyed by file name."""
    if not path.is_file():
        # Early APPA-REAL releases shipped without these files: ages are still usable.
        logger.warning("APPA-REAL attribute file not found: %s (records get no attrs)", path)
        return {}
    df = _read_csv(path, ("file", *_APPA_ATTR_COLUMNS))
    return {
        row["file"]: {col: row[col] for col in _APPA_ATTR_COLUMNS} for row in df.to_dict("records")
    }


def _read_exclude_list(path: Path) -> set[str]:
    """Image names to drop: the `img_name`/`file_name` column if there is one, else column 1.

    Names are like `000001.jpg` (as in yu4u/age-estimation-pytorch's ignore_list.csv); the
    `_face.jpg` crop name is accepted too.
    """
    if not path.is_file():
        raise FileNotFoundError(f"exclusion list not found: {path}")
    try:
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return set()
    header = [str(cell).strip().lower() for cell in table.iloc[0]]
    column = next((header.index(c) for c in ("img_name", "file_name") if c in header), None)
    names = table.iloc[1:, column] if column is not None else table.iloc[:, 0]
    return {name.strip().removesuffix("_face.jpg") for name in names if name.strip()}


# ---------------------------------------------------------------- generic CSV


@register_dataset("csv")
def read_csv_dataset(root: Path, split: str, _label: str, exclude: str) -> list[Record]:
    """A CSV of `path,age` with optional `age_std`, `split` and any other columns (→ attrs).

    Relative paths are resolved against the CSV's folder. Rows are validated strictly.
    """
    _reject_exclude("csv", exclude)
    if not root.is_file():
        raise ValueError(f"csv dataset: {root} is not a CSV file")
    df = _read_csv(root, ("path", "age"))
    records = _csv_records(df, root)
    if "split" not in df.columns:
        _log_no_splits(f"CSV {root} (no split column)", split, len(records))
        return records
    keep = set(_select_split(df, split, root)["_line"])
    return [r for r, line in zip(records, df["_line"], strict=True) if line in keep]


def _csv_records(df: pd.DataFrame, path: Path) -> list[Record]:
    attr_columns = [c for c in df.columns if c not in ("path", "age", "age_std", "split", "_line")]
    first_line: dict[Path, int] = {}
    records = []
    for row in df.to_dict("records"):
        line = row["_line"]
        image = _csv_image(row["path"], path, line)
        if image in first_line:
            raise DatasetError(
                f"{_where(path, line)}: duplicate path {row['path']!r} "
                f"(first on line {first_line[image]})"
            )
        first_line[image] = line
        records.append(
            Record(
                path=str(image),
                age=_parse_age(row["age"], path, line),
                id=row["path"],
                age_std=_parse_std(row.get("age_std", ""), path, line),
                attrs={c: row[c] for c in attr_columns},
            )
        )
    return records


def _csv_image(value: str, csv_path: Path, line: int) -> Path:
    if not value:
        raise DatasetError(f"{_where(csv_path, line)}: empty path")
    # An absolute `value` replaces the folder; normpath folds `a/../b` so duplicates are caught.
    image = Path(os.path.normpath(csv_path.parent / value))
    if not image.is_file():
        raise DatasetError(f"{_where(csv_path, line)}: image {image} not found")
    return image


# ---------------------------------------------------------------- FG-NET

# SSSAaa.JPG: subject SSS at age aa; a trailing letter tells apart two photos at the same age.
_FGNET_NAME = re.compile(r"^(\d{3})[Aa](\d{2})[a-zA-Z]?$")
_FGNET_POINTS = 68


@register_dataset("fgnet")
def read_fgnet(root: Path, split: str, _label: str, exclude: str) -> list[Record]:
    """FG-NET: `root/images/SSSAaa.JPG` with 68 landmarks each in `root/points/sssaaa.pts`."""
    _reject_exclude("fgnet", exclude)
    images, points = root / "images", root / "points"
    records, skipped = [], []
    for name in _image_files(images):
        match = _FGNET_NAME.match(Path(name).stem)
        if not match:
            skipped.append(name)
            continue
        records.append(
            Record(
                path=str(images / name),
                age=float(match[2]),
                id=name,
                attrs={"subject": match[1]},
                landmarks=read_pts(points / f"{Path(name).stem.lower()}.pts", _FGNET_POINTS),
                landmark_scheme="fgnet68",
            )
        )
    _warn_skipped(skipped, images, "SSSAaa")
    _log_no_splits("FG-NET", split, len(records))
    return records


def read_pts(path: Path, n_points: int) -> np.ndarray:
    """Read a `.pts` landmark file (`version`, `n_points`, `{`, one `x y` per line, `}`).

    Returns the points as a float32 (n_points, 2) array; anything else raises DatasetError.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: landmark file not found")
    lines = [line.strip() for line in path.read_text().splitlines()]
    if "{" not in lines or "}" not in lines:
        raise DatasetError(f"{path}: no '{{ ... }}' block of points")
    start, end = lines.index("{") + 1, lines.index("}")
    declared = next(
        (line.partition(":")[2].strip() for line in lines[:start] if line.startswith("n_points")),
        None,
    )
    if declared != str(n_points) or end - start != n_points:
        raise DatasetError(
            f"{path}: expected n_points: {n_points} and as many points, "
            f"got n_points: {declared} and {end - start} lines between {{ and }}"
        )
    coords = []
    for index in range(start, end):
        try:
            x, y = (float(v) for v in lines[index].split())
        except ValueError:
            raise DatasetError(
                f"{_where(path, index + 1)}: expected 'x y', got {lines[index]!r}"
            ) from None
        coords.append((x, y))
    array = np.array(coords, dtype=np.float32)
    if not np.isfinite(array).all():
        raise DatasetError(f"{path}: non-finite landmark coordinates")
    return array
