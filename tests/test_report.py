"""The results report: bootstrap CIs on known cases and a report built from a small synthetic
results folder (made by the suite runner with a fake train.py/test.py) with hand-computed MAEs."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import load_script
from test_suites import FakeExecutor, write_suite

from age_estimation.analysis.report import (
    findings,
    group_cis,
    group_findings,
    group_table,
    load_results,
    recipe_log,
    severity_families,
    severity_table,
    uncertainty_section,
    uncertainty_table,
    variant_table,
    write_report,
)
from age_estimation.analysis.runner import SuiteRunner, backfill_train_counts
from age_estimation.analysis.suites import load_suite
from age_estimation.data.imbalance import ages_from_histogram, mae_by_shot
from age_estimation.metrics import bootstrap_ci

N_IMAGES = 40
AGES = np.arange(N_IMAGES) * 2.0 + 2  # 2, 4, ..., 80
# |error| of image i is (1 + i % 5) x the seed's factor: an MAE of 3 x factor.
PATTERN = (1 + np.arange(N_IMAGES) % 5) * np.where(np.arange(N_IMAGES) % 2, 1.0, -1.0)
SEED_FACTOR = {0: 1.0, 1: 2.0}
HEAD_FACTOR = {"dex": 1.0, "l1": 0.5}  # "same" trains the same config as dex


def synthetic_predictions(overrides: dict, command: list[str], split: str) -> pd.DataFrame:
    """Predictions whose errors follow PATTERN, scaled by seed, head and data fraction; the
    "all" split (FG-NET-like) has errors 1.5x larger."""
    scale = (SEED_FACTOR[int(overrides["TRAIN.SEED"])] * HEAD_FACTOR[overrides["MODEL.HEAD"]]
             / float(overrides.get("DATA.FRACTION", 1.0)) * (1.5 if split == "all" else 1.0))
    err = PATTERN * scale
    has_std = overrides["MODEL.HEAD"] == "dex"
    return pd.DataFrame({
        "id": [f"img{i}" for i in range(N_IMAGES)],
        "path": [f"img{i}.jpg" for i in range(N_IMAGES)],
        "age": AGES, "age_std": np.nan, "pred": AGES + err,
        "std": np.abs(err) + 1.0 if has_std else np.nan,
        "std_aleatoric": np.abs(err) + 1.0 if has_std else np.nan, "std_epistemic": np.nan,
        "gender": np.where(np.arange(N_IMAGES) % 2, "female", "male"),
        "race": np.array(["white", "black", "asian", "indian"])[np.arange(N_IMAGES) % 4]})


def make_synthetic_results(root: Path) -> Path:
    """root/runs/{heads,fraction}/... as scripts/run_suite.py leaves them, and
    root/reference/predictions_test.csv; returns root/runs."""
    fake = FakeExecutor(synthetic_predictions)
    fgnet = [{"name": "fgnet", "args": ["--data", "fgnet:{data}/fgnet", "--split", "all"]}]
    heads = write_suite(root, "heads", variant_axis="head", baseline="head=dex", variants={
        "dex": {"set": {"MODEL.HEAD": "dex"}}, "same": {"set": {"MODEL.HEAD": "dex"}},
        "better": {"set": {"MODEL.HEAD": "l1"}}},
        evaluation={"split": "test", "extra": fgnet})
    fraction = write_suite(root, "fraction", protocol={"MODEL.HEAD": "dex"},
                           grid={"DATA.FRACTION": [0.25, 0.5, 1.0]}, baseline="fraction=1.0")
    for path in (heads, fraction):
        SuiteRunner(load_suite(path), root / "checkpoints", root / "runs", execute=fake,
                    log=lambda line: None, cost=lambda t: {
                        "gflops": 1.0 if "dex" in t.overrides else 2.0, "params_m": 11.0}).run()
    reference = root / "reference"
    reference.mkdir()
    synthetic_predictions({"TRAIN.SEED": "0", "MODEL.HEAD": "dex"}, [], "test").to_csv(
        reference / "predictions_test.csv", index=False)
    return root / "runs"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_synthetic_results(tmp_path_factory.mktemp("synthetic"))


def test_bootstrap_ci_on_known_cases():
    assert bootstrap_ci(np.full(50, 3.0)) == (3.0, 3.0, 3.0)
    values = np.random.default_rng(0).normal(10.0, 2.0, 4000)
    est, low, high = bootstrap_ci(values, n_boot=2000)
    half = 1.96 * values.std() / math.sqrt(values.size)  # the normal-theory interval
    assert est == pytest.approx(values.mean())
    assert low == pytest.approx(est - half, abs=0.02)
    assert high == pytest.approx(est + half, abs=0.02)


def test_variant_table_matches_hand_computed_maes(results):
    suite = next(s for s in load_results(results) if s.name == "heads")
    table = variant_table(suite).set_index("variant")
    # MAE of PATTERN is 3; seeds scale it by 1 and 2 (mean 4.5); l1 halves it
    assert table.loc["head=dex", "mae"] == pytest.approx(4.5)
    assert table.loc["head=same", "mae"] == pytest.approx(4.5)
    assert table.loc["head=better", "mae"] == pytest.approx(2.25)
    assert table.loc["head=dex", "seed_sd"] == pytest.approx(np.std([3.0, 6.0], ddof=1))
    assert (table["seeds"] == 2).all() and (table["images"] == N_IMAGES).all()
    # the CI resamples images of the seed-averaged errors
    per_image = np.abs(PATTERN) * 1.5
    assert tuple(table.loc["head=dex", ["mae", "ci_low", "ci_high"]]) == pytest.approx(
        bootstrap_ci(per_image, n_boot=2000))
    assert table.loc["head=better", "diff"] == pytest.approx(-2.25)
    assert table.loc["head=better", "diff_high"] < 0
    assert table.loc["head=same", ["diff", "diff_low", "diff_high"]].tolist() == [0, 0, 0]
    fgnet = variant_table(suite, "fgnet").set_index("variant")
    assert fgnet.loc["head=dex", "mae"] == pytest.approx(4.5 * 1.5)


def test_variant_table_pairs_seeds_when_the_baseline_lacks_one(results, tmp_path):
    """A partly run suite: the baseline has only seed 1 (errors 2x), the variant seeds 0 and 1.
    The difference must set seed 1 against seed 1 (3.0 - 6.0), not the variant's two-seed mean
    against the baseline's one seed (2.25 - 6.0), and the report must say which seed it used."""
    copy = shutil.copytree(results, tmp_path / "runs")
    shutil.rmtree(copy / "heads" / "head=dex__seed=0")
    suite = next(s for s in load_results(copy) if s.name == "heads")
    table = variant_table(suite).set_index("variant")
    assert table.loc["head=better", "mae"] == pytest.approx(2.25)  # both of its seeds
    assert table.loc["head=better", "diff"] == pytest.approx(3.0 - 6.0)
    assert table.loc["head=better", "diff_seeds"] == [1]
    lines = findings(table.reset_index(), "head=dex", lowest=False)
    assert any("head=better has a lower MAE" in line and "(seed 1 only)" in line
               for line in lines), lines
    report = write_report(copy, tmp_path / "REPORT.md").read_text()
    assert "-3.00 (" in report and "(seed 1 only)" in report
    # the age-group differences pair seeds the same way: ages 0-12 are images 0-5
    cis = group_cis(suite).set_index(["variant", "column"])
    assert cis.loc[("head=better", "0-12"), "diff"] == pytest.approx(
        -np.abs(PATTERN[:6]).mean())  # seed 1: 1x |PATTERN| against 2x
    # with every seed present nothing is marked
    full = variant_table(next(s for s in load_results(results) if s.name == "heads"))
    assert "only" not in " ".join(findings(full, "head=dex"))
    assert not full["diff_partial"].any()


def test_an_ensemble_of_seeds_is_set_against_the_single_models_of_its_members(results,
                                                                            tmp_path):
    """An ensemble run is named after its first seed but holds the models of all its members:
    its difference uses the baseline's runs of every member seed, not the first one's alone."""
    copy = shutil.copytree(results, tmp_path / "runs")
    shutil.rmtree(copy / "heads" / "head=better__seed=1")
    metrics = copy / "heads" / "head=better__seed=0" / "metrics.json"
    summary = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**summary, "members": [0, 1]}))  # as for {ensemble: 2}
    suite = next(s for s in load_results(copy) if s.name == "heads")
    row = variant_table(suite).set_index("variant").loc["head=better"]
    # its predictions are seed 0's (MAE 1.5); the baseline over seeds 0 and 1 has MAE 4.5
    assert row["diff"] == pytest.approx(1.5 - 4.5)
    assert row["diff_seeds"] == [0, 1] and not row["diff_partial"]


def test_group_table_splits_the_seed_averaged_errors_by_age_group(results):
    suite = next(s for s in load_results(results) if s.name == "heads")
    table = group_table(suite)
    # Ages 2, 4, ..., 80: images 0-5 are 0-12, 6-8 are 13-19, 9-18 are 20-39, ...
    assert table.loc["images"].tolist() == [6, 3, 10, 10, 11]
    per_image = pd.Series(np.abs(PATTERN) * 1.5)  # dex: seeds 1x and 2x, averaged
    assert table.loc["head=dex", "0-12"] == pytest.approx(per_image[:6].mean())
    assert table.loc["head=dex", "60+"] == pytest.approx(per_image[29:].mean())
    assert table.loc["head=better", "13-19"] == pytest.approx(per_image[6:9].mean() / 2)


def test_group_table_adds_the_shot_columns_averaged_over_seeds(results, tmp_path):
    copy = shutil.copytree(results, tmp_path / "runs")
    for metrics in copy.glob("heads/*/metrics.json"):
        summary = json.loads(metrics.read_text())
        scale = 1.0 + summary["seed"]  # seed 0: 1x, seed 1: 2x
        summary["evaluations"]["test"]["by_shot"] = [
            {"shot": "many", "n": 30, "mae": 2.0 * scale, "bias": 0.0},
            {"shot": "few", "n": 10, "mae": 8.0 * scale, "bias": -8.0 * scale}]
        metrics.write_text(json.dumps(summary))
    suite = next(s for s in load_results(copy) if s.name == "heads")
    table = group_table(suite)
    assert table.columns[-2:].tolist() == ["many-shot", "few-shot"]
    assert table.loc["head=dex", "many-shot"] == pytest.approx(3.0)  # mean of 2 and 4
    assert table.loc["head=better", "few-shot"] == pytest.approx(12.0)
    assert table.loc["images", ["many-shot", "few-shot"]].tolist() == [30, 10]
    text = write_report(copy, tmp_path / "REPORT.md").read_text()
    assert "| variant | 0-12 | 13-19 | 20-39 | 40-59 | 60+ | many-shot | few-shot |" in text
    assert "| images | 6 | 3 | 10 | 10 | 11 | 30 | 10 |" in text
    # When the runs disagree on a shot's images (another training set), no count is shown.
    first = next(copy.glob("heads/*/metrics.json"))
    summary = json.loads(first.read_text())
    summary["evaluations"]["test"]["by_shot"][0]["n"] = 25
    first.write_text(json.dumps(summary))
    suite = next(s for s in load_results(copy) if s.name == "heads")
    assert group_table(suite).loc["images", "many-shot"] != group_table(suite).loc[
        "images", "many-shot"]  # NaN
    assert "| images | 6 | 3 | 10 | 10 | 11 | varies | 10 |" in write_report(
        copy, tmp_path / "R2.md").read_text()


# Training images per integer age: ages up to 20 are few-shot, 22-40 medium, 42+ many.
TRAIN_COUNTS = [5] * 21 + [50] * 20 + [200] * 40


def with_shot_sizes(results: Path, tmp_path: Path, counts: list[int] | None = TRAIN_COUNTS,
                    ) -> Path:
    """A copy of the results whose heads runs' test evaluations hold test.py's by_shot for
    TRAIN_COUNTS, and (given `counts`) the counts themselves."""
    copy = shutil.copytree(results, tmp_path / "runs")
    for metrics in copy.glob("heads/*/metrics.json"):
        summary = json.loads(metrics.read_text())
        frame = pd.read_csv(metrics.parent / "predictions_test.csv")
        shots = mae_by_shot(frame, ages_from_histogram(TRAIN_COUNTS))
        summary["evaluations"]["test"]["by_shot"] = shots.to_dict(orient="records")
        if counts is not None:
            summary["train_age_counts"] = counts
        metrics.write_text(json.dumps(summary))
    return copy


def test_group_cis_give_every_group_and_shot_a_ci_and_a_paired_difference(results, tmp_path):
    copy = with_shot_sizes(results, tmp_path)
    suite = next(s for s in load_results(copy) if s.name == "heads")
    cis = group_cis(suite).set_index(["variant", "column"])
    per_image = np.abs(PATTERN) * 1.5  # dex: seeds 1x and 2x, averaged
    assert tuple(cis.loc[("head=dex", "0-12"), ["mae", "ci_low", "ci_high"]]) == pytest.approx(
        bootstrap_ci(per_image[:6], n_boot=2000))
    # ages 2..20 (images 0-9) are few-shot, 22..40 medium, 42..80 many
    assert cis.loc[("head=dex", "few-shot"), "n"] == 10
    assert cis.loc[("head=dex", "medium-shot"), "mae"] == pytest.approx(per_image[10:20].mean())
    # l1 halves every error: lower in every cell, with a CI below zero
    better = cis.loc["head=better"]
    assert better.loc["many-shot", "diff"] == pytest.approx(-per_image[20:].mean() / 2)
    assert (better["diff_high"] < 0).all() and len(better) == 8
    assert cis.loc["head=dex", "diff"].isna().all()  # the baseline itself
    assert cis.loc[("head=same", "60+"), ["diff", "diff_low", "diff_high"]].tolist() == [0, 0, 0]
    sentences = group_findings(group_cis(suite), "head=dex")
    assert sentences[0] == ("By group, head=same against head=dex: no measurable difference on "
                            "0-12, 13-19, 20-39, 40-59, 60+, many-shot, medium-shot, few-shot.")
    assert sentences[1].startswith("By group, head=better against head=dex: lower on 0-12 by "
                                   f"{per_image[:6].mean() / 2:.2f} (95 % CI -")
    assert "no measurable" not in sentences[1]
    text = write_report(copy, tmp_path / "REPORT.md").read_text()
    mae, low, high = cis.loc[("head=dex", "few-shot"), ["mae", "ci_low", "ci_high"]]
    assert f"| {mae:.2f} ({low:.2f}, {high:.2f}) |" in text
    assert "- By group, head=better against head=dex: lower on 0-12" in text


def test_a_suite_reads_each_prediction_file_once(results, monkeypatch):
    suite = next(s for s in load_results(results) if s.name == "heads")
    reads = []
    real_read_csv = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda path, *a, **k: reads.append(Path(path))
                        or real_read_csv(path, *a, **k))
    first = group_cis(suite)
    variant_table(suite)
    group_table(suite)
    files = sorted(results.glob("heads/*/predictions_test.csv"))
    assert sorted(reads) == files and len(files) > 1
    assert group_cis(suite).equals(first)  # the kept frames are not modified in place


def test_an_empty_prediction_file_is_an_error_naming_it(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    broken = sorted(copy.glob("heads/*/predictions_test.csv"))[0]
    broken.write_text("")
    suite = next(s for s in load_results(copy) if s.name == "heads")
    with pytest.raises(ValueError, match=re.escape(f"{broken}: not a readable predictions CSV")):
        variant_table(suite)


def test_group_cis_leave_out_the_shots_of_a_variant_whose_runs_lack_the_counts(results,
                                                                             tmp_path):
    copy = with_shot_sizes(results, tmp_path)
    metrics = copy / "heads" / "head=better__seed=1" / "metrics.json"
    summary = json.loads(metrics.read_text())
    del summary["train_age_counts"]
    metrics.write_text(json.dumps(summary))
    suite = next(s for s in load_results(copy) if s.name == "heads")
    cis = group_cis(suite)
    columns = set(cis.loc[cis["variant"] == "head=better", "column"])
    assert columns == {"0-12", "13-19", "20-39", "40-59", "60+"}  # age groups only
    assert "few-shot" in set(cis.loc[cis["variant"] == "head=dex", "column"])
    per_seed_few_shot_mae = np.mean([np.abs(PATTERN[:10]).mean() * f * 0.5
                                     for f in SEED_FACTOR.values()])
    # the table still shows its shot MAE (the mean of the per-seed MAEs), without a CI
    text = write_report(copy, tmp_path / "REPORT.md").read_text()
    lines = text.splitlines()
    heads = lines.index("## heads")
    start = next(i for i, line in enumerate(lines)
                 if i > heads and line.startswith("MAE (95 % CI) by age"))
    row = next(line for line in lines[start:] if line.startswith("| head=better | "))
    assert row.count("(") == 5 and row.endswith(f" | {per_seed_few_shot_mae:.2f} |")


def test_backfill_takes_the_counts_from_a_checkpoint_of_the_same_training_data(results,
                                                                               tmp_path):
    copy = with_shot_sizes(results, tmp_path, counts=None)
    runs = {p.parent.name: json.loads(p.read_text()) for p in copy.glob("heads/*/metrics.json")}
    # Only head=dex seed 0's checkpoint still has the counts (head=same trains the same config,
    # so it shares that checkpoint); the others' checkpoints are empty files.
    torch.save({"model": {}, "config": "", "train_age_counts": TRAIN_COUNTS},
               Path(runs["head=dex__seed=0"]["checkpoint"]) / "best.pth")
    # A run whose stored shot sizes the counts do not reproduce is left alone.
    wrong = copy / "heads" / "head=better__seed=1" / "metrics.json"
    summary = json.loads(wrong.read_text())
    summary["evaluations"]["test"]["by_shot"][0]["n"] += 1
    wrong.write_text(json.dumps(summary))
    messages: list[str] = []
    done = backfill_train_counts(copy, log=messages.append)
    assert done == {"own": 2, "borrowed": 3, "skipped": 1}
    assert messages == ["heads/head=better__seed=1 test: no training-age counts that reproduce "
                        "its shot sizes [21, 10, 10]; left as is"]
    filled = json.loads((copy / "heads" / "head=dex__seed=1" / "metrics.json").read_text())
    assert filled["train_age_counts"] == TRAIN_COUNTS
    assert json.loads(wrong.read_text())["train_age_counts"] is None
    # Another training set (a seeded data fraction) borrows nothing.
    config = copy / "heads" / "head=dex__seed=1" / "config.yaml"
    config.write_text(config.read_text() + "DATA:\n  FRACTION: 0.5\n")
    del filled["train_age_counts"]
    (config.parent / "metrics.json").write_text(json.dumps(filled))
    assert backfill_train_counts(copy, log=messages.append) == {"own": 0, "borrowed": 0,
                                                                "skipped": 2}
    # The script reports the same three numbers.
    main = load_script("backfill_train_counts").main
    assert main(["--results", str(copy)]) == 0


def test_backfill_leaves_a_run_whose_predictions_are_missing(results, tmp_path):
    copy = with_shot_sizes(results, tmp_path, counts=None)
    run = copy / "heads" / "head=dex__seed=0"
    torch.save({"model": {}, "config": "", "train_age_counts": TRAIN_COUNTS},
               Path(json.loads((run / "metrics.json").read_text())["checkpoint"]) / "best.pth")
    (run / "predictions_test.csv").unlink()
    messages: list[str] = []
    done = backfill_train_counts(copy, log=messages.append)
    assert done["skipped"] == 1 and done["own"] == 1 and done["borrowed"] == 4
    assert messages == ["heads/head=dex__seed=0 test: predictions_test.csv is missing, so its "
                        "shot sizes cannot be checked; left as is"]
    assert json.loads((run / "metrics.json").read_text())["train_age_counts"] is None


def test_recipe_log_lists_every_trial_best_first_with_its_changes(results):
    suite = next(s for s in load_results(results) if s.name == "heads")
    text = recipe_log(suite)
    rows = [line for line in text.splitlines() if line.startswith("| head=")]
    # valid MAE: better 1.5 (seed 0) and 3.0 (seed 1); dex and same 3.0 and 6.0
    assert [row.split(" | ")[0] for row in rows][:2] == ["| head=better__seed=0",
                                                         "| head=better__seed=1"]
    assert len(rows) == 6 and "| 1.500 (" in rows[0] and "`MODEL.HEAD l1`" in rows[0]
    # Paired with the baseline (head=dex) of the same seed: l1 halves every error, so seed 0
    # is 1.5 below 3.0 and the interval cannot reach zero; same-config trials differ by 0.
    by_run = {row.split(" | ")[0][2:]: row.split(" | ") for row in rows}
    assert by_run["head=better__seed=0"][4].startswith("-1.500 (")
    assert by_run["head=better__seed=1"][4].startswith("-3.000 (")
    assert by_run["head=same__seed=1"][4] == "+0.000 (+0.000, +0.000)"
    assert by_run["head=dex__seed=0"][4] == ""  # the baseline itself
    assert "valid** split only" in text and "no result" not in text
    unfinished = dict(suite.info, variants=[*suite.info["variants"], dict(
        suite.info["variants"][0], name="head=new", overrides=["TRAIN.EPOCHS", "9"]), dict(
        suite.info["variants"][0], name="head=file", cfg="/elsewhere/release.yaml",
        overrides=[], test_args=["--tta", "flip"])])
    text = recipe_log(type(suite)(suite.name, unfinished, suite.folder, suite.runs))
    assert "| head=new | `TRAIN.EPOCHS 9` | no result (not run yet" in text
    # its own config file, and its test.py options as one change
    assert "| head=file | `--cfg release.yaml`, `--tta flip` | no result (not run yet" in text


def test_recipes_log_script_writes_the_log_or_names_a_missing_suite(results, tmp_path, capsys):
    main = load_script("recipes_log").main
    out = tmp_path / "recipes.md"
    assert main(["--results", str(results), "--suite", "heads", "--out", str(out)]) == 0
    assert out.read_text().startswith("# Recipe search: heads")
    assert main(["--results", str(results), "--suite", "recipes", "--out", str(out)]) == 2
    assert "no suite 'recipes'" in capsys.readouterr().err


def test_findings_call_a_difference_only_when_the_ci_excludes_zero():
    table = pd.DataFrame({"variant": ["a", "b", "c", "d"], "mae": [5.0, 5.1, 4.0, 6.0],
                          "ci_low": [4.8, 4.9, 3.8, 5.7], "ci_high": [5.2, 5.3, 4.2, 6.3],
                          "diff": [math.nan, 0.1, -1.0, 1.0],
                          "diff_low": [math.nan, -0.05, -1.2, 0.7],
                          "diff_high": [math.nan, 0.25, -0.8, 1.3]})
    sentences = findings(table, "a")
    assert sentences[0].startswith("No measurable difference between b and a (difference +0.10")
    assert sentences[1].startswith("c has a lower MAE than a by 1.00 years (95 % CI -1.20 to")
    assert sentences[2].startswith("d has a higher MAE than a by 1.00 years")
    assert sentences[3].startswith("The lowest MAE is c (4.00")


def test_a_tiny_but_real_difference_is_not_printed_as_zero():
    table = pd.DataFrame({"variant": ["a", "b"], "mae": [5.0, 5.003], "ci_low": [4.8, 4.8],
                          "ci_high": [5.2, 5.2], "diff": [math.nan, 0.003],
                          "diff_low": [math.nan, 0.001], "diff_high": [math.nan, 0.006]})
    assert findings(table, "a")[0] == ("b has a higher MAE than a by 0.003 years "
                                       "(95 % CI +0.001 to +0.006).")


def test_report_has_the_tables_findings_figures_and_error_analysis(results, tmp_path):
    out = write_report(results, tmp_path / "REPORT.md")
    text = out.read_text()
    assert "## heads" in text and "## fraction" in text
    assert "| **head=dex** (baseline) | 2 | 40 | 4.50 (" in text
    assert "| head=better | 2 | 40 | 2.25 (" in text
    assert "| GFLOPs | params (M) |" in text and "| 2.000 | 11.0 |" in text  # l1's cost
    assert "No measurable difference between head=same and head=dex" in text
    assert "Head=better has a lower MAE than head=dex by 2.25 years" not in text
    assert "head=better has a lower MAE than head=dex by 2.25 years" in text
    assert "On fgnet, head=better has a lower MAE than head=dex by 3.38 years" in text
    assert "*Question.* Does it work?" in text and "seeds 0, 1" in text
    assert "cores, torch" in text
    # fraction 0.25 quadruples the errors: 18.0 vs 4.5
    assert "fraction=0.25 has a higher MAE than fraction=1.0 by 13.50 years" in text
    assert "| 20-39 |" in text and "| female |" in text and "| asian |" in text
    assert "| variant | 0-12 | 13-19 | 20-39 | 40-59 | 60+ |" in text
    assert "| images | 6 | 3 | 10 | 10 | 11 |" in text
    figures = tmp_path / "figures"
    for name in ("heads_mae.png", "heads_cost.png", "fraction_mae.png", "error_vs_age.png"):
        assert (figures / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"(figures/{name})" in text
    assert not (figures / "fraction_cost.png").exists()  # one cost only: no cost figure


def test_uncertainty_table_scores_the_variants_that_predict_a_std(results, tmp_path):
    suite = next(s for s in load_results(results) if s.name == "heads")
    table = uncertainty_table(suite).set_index("variant")
    assert list(table.index) == ["head=dex", "head=same"]  # l1 ("better") has no std
    # dex: error e = PATTERN x seed factor (1, 2), std = |e| + 1; NLL per image averaged over
    # the seeds, then over images
    nll = np.mean([0.5 * np.log(2 * np.pi * (np.abs(PATTERN * f) + 1) ** 2)
                   + (PATTERN * f) ** 2 / (2 * (np.abs(PATTERN * f) + 1) ** 2)
                   for f in SEED_FACTOR.values()], axis=0)
    assert table.loc["head=dex", "nll"] == pytest.approx(nll.mean())
    assert table.loc["head=dex", "nll_low"] < nll.mean() < table.loc["head=dex", "nll_high"]
    assert table.loc["head=same", ["diff", "diff_low", "diff_high"]].tolist() == [0, 0, 0]
    assert table.loc["head=dex", "spearman"] == pytest.approx(1.0)  # std ranks by |error|
    text = "\n".join(uncertainty_section([suite], tmp_path, "figures", names=["heads"]))
    assert "| **head=dex** (baseline) | 2 | 4.50 | " in text
    assert "No measurable NLL difference between head=same and head=dex" in text
    assert "- Left out, no predicted std: head=better." in text
    assert (tmp_path / "heads_reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert uncertainty_section([suite], tmp_path, "figures", names=["other"]) == []


def perturbed_predictions(overrides: dict, command: list[str], split: str) -> pd.DataFrame:
    """dex's errors grow with the blur level (x (1 + level / 5)); l1 ("robust") does not care."""
    frame = synthetic_predictions(overrides, command, split)
    if "--perturb" in command and overrides["MODEL.HEAD"] == "dex":
        level = int(command[command.index("--perturb") + 1].split(":")[1])
        frame["pred"] = frame["age"] + (frame["pred"] - frame["age"]) * (1 + level / 5)
    return frame


def test_severity_extras_become_one_table_curve_and_findings(tmp_path):
    extras = [{"name": f"blur_{level}", "args": ["--perturb", f"blur:{level}"]}
              for level in (3, 5)]
    suite_file = write_suite(tmp_path, "robust", variant_axis="training",
                             baseline="training=plain",
                             variants={"plain": {"set": {"MODEL.HEAD": "dex"}},
                                       "robust": {"set": {"MODEL.HEAD": "l1"}}},
                             evaluation={"split": "test", "extra": extras})
    SuiteRunner(load_suite(suite_file), tmp_path / "ckpt", tmp_path / "runs",
                execute=FakeExecutor(perturbed_predictions), log=lambda line: None,
                cost=lambda t: {"gflops": 1.0, "params_m": 1.0}).run()
    assert severity_families(["fgnet", "blur_5", "blur_3", "jpeg_3"]) == {
        "blur": [(3, "blur_3"), (5, "blur_5")], "jpeg": [(3, "jpeg_3")]}
    suite = load_results(tmp_path / "runs")[0]
    table = severity_table(suite).set_index(["level", "variant"])
    # plain: clean MAE 4.5 (seeds 1x and 2x of 3), x1.6 at blur 3, x2 at blur 5; robust: 2.25
    assert table.loc[(0, "training=plain"), "mae"] == pytest.approx(4.5)
    assert table.loc[(5, "training=plain"), "mae"] == pytest.approx(9.0)
    assert table.loc[(3, "training=plain"), "rise"] == pytest.approx(4.5 * 0.6)
    assert table.loc[(5, "training=robust"), "rise"] == pytest.approx(0.0)
    assert table.loc[(5, "training=robust"), "diff"] == pytest.approx(2.25 - 9.0)
    assert math.isnan(table.loc[(5, "training=plain"), "diff"])
    text = write_report(tmp_path / "runs", tmp_path / "REPORT.md").read_text()
    assert "**blur_3**" not in text  # no table per extra: one severity table
    assert "| blur | 5 | 9.00 (" in text and "| blur | 0 (clean) | 4.50 (" in text
    assert ("On blur at severity 5, training=plain's MAE rises by 4.50 years (95 % CI +" in text)
    assert "On blur at severity 5, training=robust has a lower MAE than training=plain by 6.75" \
        in text
    figure = tmp_path / "figures" / "robust_severity.png"
    assert figure.read_bytes()[:4] == b"\x89PNG" and "(figures/robust_severity.png)" in text


def test_report_without_runs_says_so(tmp_path):
    text = write_report(tmp_path / "nothing", tmp_path / "REPORT.md").read_text()
    assert "No finished suite runs yet." in text and "##" not in text


def test_report_quotes_run_notes_names_utkface_codes_and_flags_lone_variants(results, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(results, copy)
    (copy / "README.md").write_text("Trained on a rented GPU from 64 px JPEG copies.\n")
    for folder in (copy / "fraction").glob("fraction=0.*"):
        shutil.rmtree(folder)  # only fraction=1.0 is left
    for path in copy.glob("*/*/predictions_test.csv"):
        frame = pd.read_csv(path)
        frame.assign(gender=(frame["gender"] == "female").astype(int),
                     race=np.arange(len(frame)) % 5).to_csv(path, index=False)
    metrics = copy / "heads" / "head=better__seed=0" / "metrics.json"
    summary = json.loads(metrics.read_text())
    summary["evaluations"]["test"]["attribute_accuracy"] = {"gender": {"accuracy": 0.9, "n": 40}}
    summary["hardware"]["gpu"] = "Some GPU"
    metrics.write_text(json.dumps(summary))

    text = write_report(copy, tmp_path / "REPORT.md").read_text()
    header, _, rest = text.partition("## fraction")  # suites come in name order
    assert "## How these runs were made\n\nTrained on a rented GPU from 64 px JPEG copies." \
        in header
    fraction, _, heads = rest.partition("## heads")
    assert "Only one variant has finished runs: nothing to compare yet." in fraction
    assert "Only one variant" not in heads
    assert "- head=better: gender accuracy 0.900 (mean of 1 seeds)." in heads
    assert "*Caution: the variants ran on different machines*" in heads
    assert "Caution" not in fraction and "Some GPU" in heads
    assert "| 1 (female) | 20 |" in text and "| 2 (Asian) |" in text
