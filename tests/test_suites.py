"""Experiment suites: loading and validation, grid x seeds expansion, resumable running (a fake
train.py/test.py, plus one real tiny run on a CSV fixture)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import write_csv_dataset

from age_estimation.analysis.runner import DONE, SuiteRunner, run_parallel
from age_estimation.analysis.suites import SuiteError, load_suite, select
from age_estimation.metrics import summarize

REPO = Path(__file__).resolve().parents[1]
BASE = "configs/utkface_resnet18_dex.yaml"


def write_suite(folder: Path, name: str = "demo", **fields) -> Path:
    spec = {"question": "Does it work?", "budget": "tiny", "base": BASE, "seeds": [0, 1],
            **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _option(command: list[str], flag: str, default: str = "") -> str:
    return command[command.index(flag) + 1] if flag in command else default


class FakeExecutor:
    """Stands in for train.py / test.py: records commands and writes the files they would.

    Training writes config.yaml, metrics.csv and checkpoints (empty files) plus fake.json with its
    overrides; testing writes predictions made by ``predict(overrides, command, split)`` -> a
    frame with id, age, pred (and any other columns), and test.py's summary JSON.
    """

    def __init__(self, predict: Callable[[dict, list[str], str], pd.DataFrame]) -> None:
        self.predict = predict
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], log: Path) -> int:
        self.commands.append(command)
        if command[1] == "train.py":
            resume = _option(command, "--resume")
            out = Path(resume or _option(command, "OUTPUT_DIR"))
            out.mkdir(parents=True, exist_ok=True)
            if not resume:
                pairs = command[command.index("--cfg") + 2:]
                (out / "fake.json").write_text(json.dumps(dict(zip(pairs[::2], pairs[1::2]))))
            (out / "config.yaml").write_text("MODEL:\n  HEAD: dex\n")
            pd.DataFrame({"epoch": [1], "valid_mae": [5.0], "epoch_seconds": [60.0]}).to_csv(
                out / "metrics.csv", index=False)
            for name in ("last.pth", "best.pth"):
                (out / name).write_bytes(b"")
            return 0
        overrides = json.loads((Path(_option(command, "--resume")).parent / "fake.json")
                               .read_text())
        split = _option(command, "--split", "test")
        frame = self.predict(overrides, command, split)
        out = Path(_option(command, "--out"))
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
        summary = summarize(frame, n_boot=0)
        summary["inference"] = {"data": "csv:fake", "split": split}
        out.with_suffix(".json").write_text(json.dumps(summary, default=float))
        return 0


def constant_predictions(overrides: dict, command: list[str], split: str) -> pd.DataFrame:
    ages = np.arange(10, 30, dtype=float)
    return pd.DataFrame({"id": np.arange(ages.size), "age": ages, "pred": ages + 1.0})


def runner_for(suite_path: Path, tmp_path: Path, execute, lines: list[str]) -> SuiteRunner:
    return SuiteRunner(load_suite(suite_path), tmp_path / "runs", tmp_path / "results",
                       execute=execute, log=lines.append,
                       cost=lambda training: {"gflops": 1.0, "params_m": 1.0})


# --------------------------------------------------------------------------- loading
def test_grid_times_variants_times_seeds_gives_stable_ordered_names(tmp_path):
    path = write_suite(tmp_path, variants={"dex": {"set": {"MODEL.HEAD": "dex"}},
                                           "l1": {"set": {"MODEL.HEAD": "l1"}}},
                       variant_axis="head", grid={"AUG.POLICY": ["none", "basic"]},
                       protocol={"MODEL.IMG_SIZE": 32}, seeds=[3, 7])
    suite = load_suite(path)
    names = [r.name for r in suite.runs()]
    assert names == [f"head={h}__policy={p}__seed={s}" for h in ("dex", "l1")
                     for p in ("none", "basic") for s in (3, 7)]
    assert names == [r.name for r in load_suite(path).runs()]  # stable across loads
    run = suite.runs()[3]  # head=dex, policy=basic, seed 7
    cfg = run.trainings[0].config()
    assert (cfg.MODEL.HEAD, cfg.AUG.POLICY, cfg.TRAIN.SEED, cfg.MODEL.IMG_SIZE) == \
        ("dex", "basic", 7, 32)
    assert suite.baseline == "head=dex__policy=none"


def test_identical_configs_share_one_training_and_seeds_do_not(tmp_path):
    a = load_suite(write_suite(tmp_path, "a", grid={"DATA.FRACTION": [0.5, 1.0]}))
    b = load_suite(write_suite(tmp_path, "b", variants={"plain": {}}))
    keys_a = {r.name: r.trainings[0].key() for r in a.runs()}
    keys_b = {r.name: r.trainings[0].key() for r in b.runs()}
    # DATA.FRACTION 1.0 is the default: the same model as b's plain variant
    assert keys_a["fraction=1.0__seed=0"] == keys_b["variant=plain__seed=0"]
    assert keys_a["fraction=1.0__seed=0"] != keys_a["fraction=1.0__seed=1"]
    assert len(set(keys_a.values())) == 4


def test_ensemble_variants_use_cyclic_seed_windows(tmp_path):
    suite = load_suite(write_suite(tmp_path, seeds=[0, 1, 2], variants={
        "single": {}, "ens2": {"ensemble": 2}, "ens3": {"ensemble": 3, "test_args": ["--tta"]}}))
    runs = {r.name: r for r in suite.runs()}
    assert [t.seed for t in runs["variant=ens2__seed=2"].trainings] == [2, 0]
    assert [n for n in runs if n.startswith("variant=ens3")] == ["variant=ens3__seed=0"]
    assert runs["variant=ens3__seed=0"].test_args == ("--tta",)
    assert select(suite.runs(), "*ens2*") == [runs[f"variant=ens2__seed={s}"] for s in (0, 1, 2)]
    assert [r.name for r in select(suite.runs(), "seed=1")] == [
        "variant=single__seed=1", "variant=ens2__seed=1"]


@pytest.mark.parametrize("fields, message", [
    ({"grid": {"MODEL.NOT_A_KEY": [1, 2]}}, "'MODEL.NOT_A_KEY' in grid"),
    ({"protocol": {"TRAIN.EPOCHZ": 3}}, "'TRAIN.EPOCHZ' in protocol"),
    ({"variants": {"x": {"set": {"MODEL.HEDA": "l1"}}}}, "'MODEL.HEDA' in variant x"),
    ({"grid": {"MODEL.HEAD": ["dex", "no_such_head"]}}, "MODEL.HEAD = 'no_such_head'"),
    ({"grid": {"TRAIN.EPOCHS": ["many"]}}, "TRAIN.EPOCHS"),
    ({"baseline": "nope"}, "baseline 'nope'"),
    ({"variants": {"e": {"ensemble": 5}}}, "ensemble 5"),
    ({"variants": {"e": {"test_args": ["--out", "x"]}}}, "set by the runner"),
    ({"colour": "red"}, "unknown field(s) ['colour']"),
])
def test_a_bad_suite_is_refused_naming_the_file_and_the_problem(tmp_path, fields, message):
    path = write_suite(tmp_path, "broken", **fields)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_the_shipped_suites_load_with_at_least_three_seeds():
    paths = sorted((REPO / "configs" / "suites").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"formulation", "backbone", "augmentation", "less_data",
                                       "ensembling", "synthetic", "recipes"}
    for path in paths:
        suite = load_suite(path)
        assert suite.question and suite.budget, path
        # Comparisons on the test split need 3 seeds; a recipe search (valid split only) tries
        # many recipes once each and claims nothing on the test split.
        assert len(suite.seeds) >= (1 if suite.split == "valid" else 3), path
        assert any(run.variant == suite.baseline for run in suite.runs())


# --------------------------------------------------------------------------- running
def test_runner_trains_evaluates_then_skips_finished_runs(tmp_path):
    path = write_suite(tmp_path, grid={"AUG.POLICY": ["none", "basic"]}, evaluation={
        "split": "test", "extra": [
            {"name": "other", "args": ["--data", "csv:{data}/x.csv", "--split", "all"]},
            {"name": "absent", "args": ["--tta"], "needs": "{data}/missing"}]})
    fake, lines = FakeExecutor(constant_predictions), []
    runner = runner_for(path, tmp_path, fake, lines)
    runner.data_dir = tmp_path / "data"
    assert runner.run() == 0
    tests = [c for c in fake.commands if c[1] == "test.py"]
    assert len([c for c in fake.commands if c[1] == "train.py"]) == 4
    assert len(tests) == 4 * 3  # valid, test, other; "absent" skipped (its path is missing)
    assert f"csv:{tmp_path / 'data'}/x.csv" in tests[2]
    folder = tmp_path / "results" / "demo" / "policy=none__seed=1"
    assert {p.name for p in folder.iterdir()} == {
        "config.yaml", "metrics.csv", "metrics.json", "predictions_valid.csv",
        "predictions_test.csv", "predictions_other.csv"}
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["evaluations"]["test"]["mae"] == pytest.approx(1.0)
    assert summary["wall_time"]["train_s"] == 60.0 and summary["hardware"]["cores"] >= 1
    assert lines[1] == ("[2/4] policy=none__seed=1 ... done valid 1.00  test 1.00  other 1.00 "
                        "(0 min)")
    assert json.loads((tmp_path / "results" / "demo" / "suite.json").read_text())["seeds"] == [0, 1]

    again, lines = FakeExecutor(constant_predictions), []
    assert runner_for(path, tmp_path, again, lines).run() == 0
    assert again.commands == []
    assert lines[0] == "[1/4] policy=none__seed=0 ... finished earlier (valid 1.00  test 1.00  " \
                       "other 1.00)"


def test_parallel_runs_train_each_shared_model_once_then_evaluate_every_suite(tmp_path):
    # Two suites that share the AUG.POLICY=basic models: 3 distinct configs x 2 seeds.
    first = write_suite(tmp_path, "first", grid={"AUG.POLICY": ["none", "basic"]})
    second = write_suite(tmp_path, "second", grid={"AUG.POLICY": ["basic", "strong"]})
    fake, lines = FakeExecutor(constant_predictions), []
    runners = [runner_for(p, tmp_path, fake, lines) for p in (first, second)]
    assert run_parallel(runners, jobs=3) == 0
    trained = [c for c in fake.commands if c[1] == "train.py"]
    assert len(trained) == 6 and len({_option(c, "OUTPUT_DIR") for c in trained}) == 6
    assert len([c for c in fake.commands if c[1] == "test.py"]) == 8 * 2  # valid + test
    for suite in ("first", "second"):
        assert len(list((tmp_path / "results" / suite).glob("*/metrics.json"))) == 4
    assert lines[0] == "8 runs to finish: training 6 models, 3 processes at a time"
    # The basic models (needed by both suites) are among the first three trainings started.
    assert [_option(c, "AUG.POLICY") for c in trained[:3]].count("basic") == 2
    assert sum(line.endswith("valid 1.00  test 1.00 done") for line in lines) == 8

    again = FakeExecutor(constant_predictions)
    assert run_parallel([runner_for(p, tmp_path, again, []) for p in (first, second)], 3) == 0
    assert again.commands == []


def test_parallel_runs_survive_a_crashing_training_without_hanging(tmp_path):
    path = write_suite(tmp_path, grid={"AUG.POLICY": ["none", "basic"]})
    fake, lines = FakeExecutor(constant_predictions), []

    def flaky(command: list[str], log: Path) -> int:
        if command[1] == "train.py" and _option(command, "AUG.POLICY") == "none":
            raise OSError("disk full")
        return fake(command, log)

    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(
        run_parallel([runner_for(path, tmp_path, flaky, lines)], jobs=2)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "run_parallel hung after a crash"
    assert result == [2]  # the two AUG.POLICY=none trainings
    assert sum("FAILED: OSError: disk full" in line for line in lines) == 2
    assert len(list((tmp_path / "results" / "demo").glob("policy=basic*/metrics.json"))) == 2


def test_an_interrupted_training_resumes_and_a_trained_one_is_only_evaluated(tmp_path):
    path = write_suite(tmp_path, seeds=[0, 1, 2])
    fake, lines = FakeExecutor(constant_predictions), []
    runner = runner_for(path, tmp_path, fake, lines)
    runs = runner.suite.runs()
    interrupted, trained = (runner.train_dir(r.trainings[0]) for r in runs[:2])
    FakeExecutor(constant_predictions)(runner.train_command(runs[0].trainings[0]), tmp_path)
    FakeExecutor(constant_predictions)(runner.train_command(runs[1].trainings[0]), tmp_path)
    (trained / DONE).write_text("{}")
    assert [runner.status(r) for r in runs] == ["resume", "evaluate", "train"]

    runner.run(dry_run=True)
    assert fake.commands == [] and not (tmp_path / "results").exists()
    assert lines[0] == "[1/3] base__seed=0 ... would resume"
    assert lines[1].split()[1:4] == ["train.py", "--resume", str(interrupted)]

    lines.clear()
    assert runner.run(only="*seed=[01]") == 0
    trains = [c for c in fake.commands if c[1] == "train.py"]
    assert trains == [[sys.executable, "train.py", "--resume", str(interrupted)]]
    assert len(lines) == 2 and (interrupted / DONE).is_file()


def test_a_failing_training_is_reported_and_the_suite_goes_on(tmp_path):
    path = write_suite(tmp_path)
    lines: list[str] = []

    def failing(command, log):
        return 1 if "TRAIN.SEED" in command and command[command.index("TRAIN.SEED") + 1] == "0" \
            else FakeExecutor(constant_predictions)(command, log)

    assert runner_for(path, tmp_path, failing, lines).run() == 1
    assert "FAILED: train.py failed" in lines[0] and " done " in lines[1]


# --------------------------------------------------------------------------- one real run
@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("suite_data"),
                             {"train": 12, "valid": 4, "test": 4}, size=32, seed=1, gender=True)


def _run_suite_main():
    """scripts/run_suite.py's main, loaded in-process (train.py/test.py still run as
    subprocesses)."""
    spec = importlib.util.spec_from_file_location("run_suite", REPO / "scripts" / "run_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_run_suite_script_runs_a_tiny_real_suite_and_skips_it_the_second_time(
        tmp_path, csv_dataset, capsys):
    path = write_suite(tmp_path, "tiny", seeds=[0], protocol={
        "DATA.DATASET": "csv", "DATA.ROOT": str(csv_dataset), "DATA.CACHE_DIR": str(tmp_path / "c"),
        "DATA.NUM_WORKERS": 0, "MODEL.IMG_SIZE": 32, "TRAIN.EPOCHS": 1, "TRAIN.BATCH_SIZE": 8})
    main = _run_suite_main()
    argv = [str(path), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results")]
    assert main(argv) == 0, capsys.readouterr()
    assert "[1/1] base__seed=0 ... done valid " in capsys.readouterr().out
    folder = tmp_path / "results" / "tiny" / "base__seed=0"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml", "metrics.csv", "metrics.json", "predictions_test.csv",
        "predictions_valid.csv"]
    summary = json.loads((folder / "metrics.json").read_text())
    test = pd.read_csv(folder / "predictions_test.csv")
    assert len(test) == 4 and summary["evaluations"]["test"]["n"] == 4
    assert {"id", "age", "pred", "std", "gender"} <= set(test.columns) and "path" not in test
    assert summary["evaluations"]["test"]["mae"] == pytest.approx(
        (test["pred"] - test["age"]).abs().mean(), abs=1e-3)
    assert summary["cost"]["gflops"] > 0 and summary["hardware"]["torch"]
    assert "DATASET: csv" in (folder / "config.yaml").read_text()

    assert main(argv) == 0
    assert "[1/1] base__seed=0 ... finished earlier (valid " in capsys.readouterr().out


def test_model_cost_of_a_multitask_config_counts_the_backbone(tmp_path):
    from age_estimation.analysis.runner import model_cost

    path = write_suite(tmp_path, protocol={"MODEL.IMG_SIZE": 32},
                       variants={"age": {}, "multi": {"set": {"MODEL.ATTRIBUTES": "['gender']"}}})
    single, multi = (run.trainings[0] for run in load_suite(path).runs() if run.seed == 0)
    cost = model_cost(multi)
    assert cost == model_cost(single)  # attribute heads are left out, the rest is the same
    assert 11.0 < cost["params_m"] < 11.5 and 0.0 < cost["gflops"] < 0.1  # resnet18, 32 px


def test_metrics_keep_the_training_age_counts_once_per_run(tmp_path):
    fake = FakeExecutor(constant_predictions)

    def execute(command: list[str], log: Path) -> int:
        status = fake(command, log)
        if command[1] == "test.py":  # test.py's summary carries the checkpoint's counts
            out = Path(_option(command, "--out")).with_suffix(".json")
            out.write_text(json.dumps({**json.loads(out.read_text()),
                                       "train_age_counts": [0, 3, 5]}))
        return status

    path = write_suite(tmp_path, seeds=[0])
    assert runner_for(path, tmp_path, execute, []).run() == 0
    metrics = json.loads(next((tmp_path / "results").glob("*/*/metrics.json")).read_text())
    assert metrics["train_age_counts"] == [0, 3, 5]
    assert all("train_age_counts" not in e for e in metrics["evaluations"].values())
    assert set(metrics["evaluations"]) == {"valid", "test"}
