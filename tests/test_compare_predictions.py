"""scripts/compare_predictions.py: paired bootstrap comparison of two predictions CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import load_script

compare_predictions = load_script("compare_predictions").main


def write(path, ids, age, pred):
    pd.DataFrame({"id": ids, "age": age, "pred": pred}).to_csv(path, index=False)
    return str(path)


def labelled_images(n, seed):
    """Image ids, ages and a baseline's errors (s.d. 6 years)."""
    rng = np.random.default_rng(seed)
    return [f"img{i}" for i in range(n)], rng.uniform(1, 90, n), rng.normal(0, 6, n), rng


def last_diff_interval(table):
    """(low, high) of the Δ column of the table's last row."""
    cell = table.strip().splitlines()[-1].split("|")[5]
    low, high = cell.split("(")[1].rstrip(") ").split(", ")
    return float(low), float(high)


def test_a_better_model_is_called_better_on_the_shared_images(tmp_path, capsys):
    ids, age, noise, _ = labelled_images(400, seed=0)
    base = write(tmp_path / "base.csv", ids, age, age + noise)
    # half the error on every image, and 100 images the baseline never saw
    better = write(tmp_path / "better.csv", ids[:300] + [f"x{i}" for i in range(100)],
                   np.r_[age[:300], age[:100]], np.r_[age[:300] + noise[:300] / 2, age[:100]])
    same = write(tmp_path / "same.csv", ids, age, age + noise)
    out = tmp_path / "table.md"
    assert compare_predictions([base, better, same, "--out", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    better_row, same_row = table.strip().splitlines()[-2:]
    assert "| 300 |" in better_row and better_row.endswith("| better |")
    expected = np.abs(noise[:300]).mean() / 2
    assert f"{expected:.3f} (" in better_row
    assert "+0.000 (+0.000, +0.000)" in same_row and "no significant difference" in same_row


def test_predictions_without_shared_images_are_an_error(tmp_path, capsys):
    a = write(tmp_path / "a.csv", ["a"], [10.0], [12.0])
    b = write(tmp_path / "b.csv", ["b"], [10.0], [12.0])
    assert compare_predictions([a, b]) == 2
    assert "share no image ids" in capsys.readouterr().err


def test_a_file_that_is_not_a_predictions_csv_is_named(tmp_path, capsys):
    good = write(tmp_path / "good.csv", ["a"], [10.0], [12.0])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    labels_only = tmp_path / "labels.csv"
    labels_only.write_text("id,age\na,10\n")
    for bad in (empty, labels_only, tmp_path / "missing.csv"):
        assert compare_predictions([good, str(bad)]) == 2
        assert str(bad) in capsys.readouterr().err


def test_seeds_joined_by_plus_are_averaged_per_image(tmp_path, capsys):
    ids = ["a", "b", "c", "d"]
    age = [10.0, 20.0, 30.0, 40.0]
    base = write(tmp_path / "base.csv", ids, age, [11.0, 22.0, 33.0, 44.0])  # MAE 2.5
    # two seeds: errors (1, 2, 3, 4) and (3, 0, 1, -) -> image d is dropped, the rest averaged:
    # a 2, b 1, c 2 -> MAE 5/3, against the baseline's (1 + 2 + 3) / 3 = 2 on a, b, c
    seed0 = write(tmp_path / "s0.csv", ids, age, [11.0, 18.0, 33.0, 36.0])
    seed1 = write(tmp_path / "s1.csv", ids[:3], age[:3], [7.0, 20.0, 31.0])
    assert compare_predictions([base, f"{seed0}+{seed1}"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert "| 3 | 1.667 (" in row and "| 2.000 (" in row and "| -0.333 (" in row
    # the same seeds on both sides is no difference at all
    assert compare_predictions([f"{seed0}+{seed1}", f"{seed1}+{seed0}"]) == 0
    assert "+0.000 (+0.000, +0.000)" in capsys.readouterr().out


def test_seeds_with_different_labels_or_repeated_images_are_named(tmp_path, capsys):
    base = write(tmp_path / "base.csv", ["a", "b"], [10.0, 20.0], [11.0, 21.0])
    relabelled = write(tmp_path / "relabelled.csv", ["a", "b"], [10.0, 25.0], [11.0, 21.0])
    assert compare_predictions([base, f"{base}+{relabelled}"]) == 2
    err = capsys.readouterr().err
    assert "relabelled.csv" in err and "'b'" in err and "different ages" in err
    twice = write(tmp_path / "twice.csv", ["a", "a"], [10.0, 10.0], [11.0, 12.0])
    assert compare_predictions([base, f"{base}+{twice}"]) == 2
    assert "twice.csv" in capsys.readouterr().err
    other = write(tmp_path / "other.csv", ["x"], [10.0], [11.0])
    assert compare_predictions([base, f"{base}+{other}"]) == 2
    assert "share no image ids" in capsys.readouterr().err


def test_cluster_resamples_subjects_and_names_a_missing_column(tmp_path, capsys):
    rng = np.random.default_rng(3)
    subjects = np.repeat([f"{i:03d}" for i in range(10)], 20)
    ids = [f"{s}A{j:02d}.JPG" for s, j in zip(subjects, np.tile(np.arange(20), 10))]
    age = rng.uniform(1, 60, 200)
    person = np.repeat(rng.normal(0, 6, 10), 20)  # errors shared by a person's photos
    frame = pd.DataFrame({"id": ids, "age": age, "pred": age + person, "subject": subjects})
    base = tmp_path / "base.csv"
    frame.to_csv(base, index=False)
    other = tmp_path / "other.csv"
    frame.assign(pred=age + 0.8 * person).to_csv(other, index=False)

    def diff_width(extra):
        assert compare_predictions([str(base), str(other), *extra]) == 0
        table = capsys.readouterr().out
        low, high = last_diff_interval(table)
        return table, high - low

    clustered, width = diff_width(["--cluster", "subject"])
    assert "resample whole `subject` groups (10 in the baseline)" in clustered
    _, image_width = diff_width([])
    assert width > 2 * image_width
    no_subject = write(tmp_path / "plain.csv", ids, age, age)
    assert compare_predictions([no_subject, str(other), "--cluster", "subject"]) == 2
    err = capsys.readouterr().err
    assert "plain.csv" in err and "subject" in err
    unlabelled = tmp_path / "unlabelled.csv"
    frame.assign(subject=[None, *subjects[1:]]).to_csv(unlabelled, index=False)
    assert compare_predictions([str(unlabelled), str(other), "--cluster", "subject"]) == 2
    assert f"image '{ids[0]}' has no subject" in capsys.readouterr().err


def test_level_widens_the_intervals_and_is_checked(tmp_path, capsys):
    ids, age, noise, rng = labelled_images(300, seed=6)
    base = write(tmp_path / "base.csv", ids, age, age + noise)
    other = write(tmp_path / "other.csv", ids, age, age + 0.9 * noise + rng.normal(0, 1, 300))

    def diff_interval(level):
        assert compare_predictions([base, other, "--level", level]) == 0
        table = capsys.readouterr().out
        return table, last_diff_interval(table)

    table95, (low95, high95) = diff_interval("0.95")
    table99, (low99, high99) = diff_interval("0.99")
    assert "Δ MAE (95 % CI)" in table95 and "Δ MAE (99 % CI)" in table99
    assert low99 < low95 < high95 < high99
    assert compare_predictions([base, other, "--level", "95"]) == 2
    assert "--level 95.0 is not a confidence level" in capsys.readouterr().err
