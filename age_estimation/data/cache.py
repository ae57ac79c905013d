"""Decode + resize every image once into a uint8 array (a memmap on disk), so no epoch re-decodes.

The cache file is keyed by the dataset's identity (ids, paths, file sizes and mtimes) and the
resolution: a changed or added file gives a new key, never stale pixels. A build is written to a
temporary file and renamed when complete, so an interrupted build is simply redone.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from age_estimation.data.records import Record

logger = logging.getLogger(__name__)

# Images larger than this (in pixels) are refused rather than decoded into gigabytes of memory.
MAX_PIXELS = 80_000_000
# Images with a side shorter than this cannot hold a usable face (e.g. 1x1 placeholder files).
MIN_SIDE = 8


class BadImageError(ValueError):
    """An image file that cannot be decoded into an RGB picture; the message names the file."""


def load_image(path: str) -> np.ndarray:
    """Read any common image file as RGB uint8 HxWx3 (greyscale, RGBA, CMYK, 16-bit included)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise BadImageError(f"{path}: cannot read file ({err.strerror})") from err
    if data.size == 0:
        raise BadImageError(f"{path}: empty (zero-byte) file")
    # Check the size in the header first, so a huge image (or a decompression bomb) is refused
    # before its pixels are decoded; files PIL cannot parse are left to OpenCV to judge.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                _check_size(path, *header.size)
    except Image.DecompressionBombError as err:
        raise BadImageError(f"{path}: image too large ({err})") from None
    except OSError:  # not an image PIL knows, or a broken header
        pass
    # IMREAD_COLOR converts greyscale/RGBA/CMYK/16-bit to 8-bit BGR and applies EXIF rotation.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise BadImageError(f"{path}: not a decodable image (corrupt, truncated or not an image)")
    _check_size(path, image.shape[1], image.shape[0])
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check_size(path: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise BadImageError(f"{path}: image too large ({width}x{height} pixels)")
    if min(width, height) < MIN_SIDE:
        raise BadImageError(f"{path}: image too small ({width}x{height} pixels; a face needs "
                            f"at least {MIN_SIDE} on each side)")


def decode_record(record: Record, size: int) -> np.ndarray:
    """The record's face as size x size x 3 uint8: aligned from landmarks when it has them."""
    image = load_image(record.path)
    if record.landmarks is not None:
        from age_estimation.faces import align_face

        return align_face(image, record.landmarks, size, scheme=record.landmark_scheme)
    return resize_square(image, size)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """An (unaligned) face crop at size x size, as the cache stores it: area averaging when
    shrinking, bilinear when enlarging."""
    interpolation = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def default_cache_dir() -> Path:
    """~/.cache/age_estimation (or $XDG_CACHE_HOME/age_estimation): always outside the repo."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "age_estimation"


def _cache_key(records: list[Record], size: int) -> str:
    digest = hashlib.sha1(f"v1|{size}".encode())
    for record in records:
        stat = os.stat(record.path) if os.path.exists(record.path) else None
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "missing"
        aligned = "lm" if record.landmarks is None else record.landmarks.tobytes().hex()[:32]
        digest.update(f"{record.id}|{record.path}|{stamp}|{aligned}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(
    records: list[Record],
    size: int,
    name: str,
    cache_dir: str | Path = "",
    on_bad_image: str = "skip",
    workers: int = 2,
) -> tuple[np.ndarray, list[Record]]:
    """Decode `records` once at `size`; returns (uint8 N x size x size x 3 array, kept records).

    Undecodable images are dropped with a logged count (on_bad_image="skip") or raise
    BadImageError naming the file (on_bad_image="error"), before any training starts.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{size}px_{_cache_key(records, size)}"
    array_path, meta_path = folder / f"{stem}.u8", folder / f"{stem}.json"
    if array_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        bad = set(meta["bad"])
        kept = [r for r in records if r.id not in bad]
        if bad and on_bad_image == "error":  # the cache was built under the skip policy
            raise BadImageError(next(iter(meta["bad_messages"].values())))
        images = np.memmap(array_path, np.uint8, "r", shape=(len(kept), size, size, 3))
        _log_bad(name, meta["bad_messages"])
        return images, kept

    def decode(record: Record) -> np.ndarray | str:
        try:
            return decode_record(record, size)
        except BadImageError as err:
            if on_bad_image == "error":
                raise
            return str(err)

    logger.info("caching %d images of %s at %d px in %s", len(records), name, size, folder)
    tmp_path = folder / f"{stem}.tmp{os.getpid()}"
    images = np.memmap(tmp_path, np.uint8, "w+", shape=(max(len(records), 1), size, size, 3))
    kept, bad_messages = [], {}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 releases the GIL while decoding
        for record, result in zip(records, pool.map(decode, records, chunksize=64)):
            if isinstance(result, str):
                bad_messages[record.id] = result
                continue
            images[len(kept)] = result
            kept.append(record)
    images.flush()
    del images
    if not kept:
        os.remove(tmp_path)
        raise BadImageError(f"{name}: none of the {len(records)} images could be decoded")
    # Trim the unused rows left by skipped images, then publish atomically.
    with open(tmp_path, "r+b") as handle:
        handle.truncate(len(kept) * size * size * 3)
    os.replace(tmp_path, array_path)
    meta = {"size": size, "n": len(kept), "bad": list(bad_messages), "bad_messages": bad_messages}
    # Written then renamed: a process reading the cache concurrently never sees half a file.
    tmp_meta = meta_path.with_name(f"{meta_path.name}.tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    _log_bad(name, bad_messages)
    images = np.memmap(array_path, np.uint8, "r", shape=(len(kept), size, size, 3))
    return images, kept


def _log_bad(name: str, bad_messages: dict[str, str]) -> None:
    if bad_messages:
        examples = "; ".join(list(bad_messages.values())[:3])
        logger.warning("%s: skipped %d undecodable images (e.g. %s)", name, len(bad_messages),
                       examples)
