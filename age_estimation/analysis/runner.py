"""Run a suite resumably with train.py / test.py subprocesses and store each run's small files.

Checkpoints live in ``RUNS_DIR/<training key>/`` (shared by every run with that config);
results in ``RESULTS_DIR/<suite>/<run>/``: config.yaml, metrics.csv (per epoch), metrics.json
(test.py's summaries + wall time + hardware + model cost) and per-image predictions CSVs
(test.py's, less the machine-specific image path).
metrics.json is written last, so its presence marks a finished run.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from age_estimation.analysis.suites import (
    REPO,
    Run,
    Suite,
    Training,
    display_path,
    expand_data_path,
    select,
)

# execute(command, log_file) -> exit status; tests inject a fake one.
Executor = Callable[[list[str], Path], int]
CostFn = Callable[[Training], dict[str, float]]
# Marker of a finished training in its checkpoint folder (train.py itself leaves none).
DONE = "suite_done.json"


def subprocess_executor(command: list[str], log: Path) -> int:
    """Run a command from the repository root, appending its output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        return subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode


def hardware() -> dict[str, Any]:
    """CPU model, core count, torch version and GPU (if any) of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu}


def model_cost(training: Training) -> dict[str, float]:
    """Parameters (millions) and GFLOPs of one forward pass at the run's resolution (fvcore)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    from age_estimation.models.model import AgeModel

    cfg = training.config()
    # Attribute heads (multi-task runs) need the data's class lists, which are not known here;
    # they are one linear layer each, far below the resolution of these figures.
    cfg.defrost()
    cfg.MODEL.ATTRIBUTES = []
    model = AgeModel(cfg).eval()
    x = torch.zeros(1, 3, cfg.MODEL.IMG_SIZE, cfg.MODEL.IMG_SIZE)
    flops = FlopCountAnalysis(model, x)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": flops.total() / 1e9}


class SuiteRunner:
    """Runs a suite's runs in order, skipping finished ones and resuming interrupted trainings."""

    def __init__(self, suite: Suite, runs_dir: Path, results_dir: Path,
                 execute: Executor = subprocess_executor, data_dir: Path | None = None,
                 log: Callable[[str], None] = print, cost: CostFn | None = None) -> None:
        from age_estimation.data.datasets import default_data_dir

        self.suite = suite
        self.runs_dir = Path(runs_dir)
        self.results = Path(results_dir) / suite.name
        self.execute = execute
        self.data_dir = data_dir or default_data_dir()
        self.log = log
        self.cost = cost or model_cost

    def train_dir(self, training: Training) -> Path:
        return self.runs_dir / training.key()

    def status(self, run: Run) -> str:
        """finished | evaluate (trained) | resume | train."""
        if (self.results / run.name / "metrics.json").is_file():
            return "finished"
        dirs = [self.train_dir(t) for t in run.trainings]
        if all((d / DONE).is_file() for d in dirs):
            return "evaluate"
        return "resume" if any((d / "last.pth").is_file() for d in dirs) else "train"

    def train_command(self, training: Training) -> list[str]:
        out = self.train_dir(training)
        if (out / "last.pth").is_file():
            return [sys.executable, "train.py", "--resume", str(out)]
        return [sys.executable, "train.py", "--cfg", training.cfg_file, *training.overrides,
                "OUTPUT_DIR", str(out)]

    def evaluations(self, run: Run) -> list[tuple[str, list[str]]]:
        """(name, test.py options) of every evaluation of a run; extras whose `needs` path is
        absent are left out."""
        evals = [("valid", ["--split", "valid"])]
        if self.suite.split != "valid":
            evals.append((self.suite.split, ["--split", self.suite.split]))
        for extra in self.suite.extras:
            if extra.needs and not Path(expand_data_path(extra.needs, self.data_dir)).exists():
                continue
            evals.append((extra.name, [expand_data_path(a, self.data_dir) for a in extra.args]))
        return evals

    def test_command(self, run: Run, options: list[str], out: Path) -> list[str]:
        ckpts = [str(self.train_dir(t) / "best.pth") for t in run.trainings]
        members = ["--ensemble", *ckpts[1:]] if len(ckpts) > 1 else []
        return [sys.executable, "test.py", "--resume", ckpts[0], *members, *run.test_args,
                *options, "--out", str(out)]

    # -- running -----------------------------------------------------------------------------
    def pending_trainings(self, only: str | None = None) -> list[Training]:
        """Trainings of the selected unfinished runs that have not finished, in run order."""
        pending = []
        for run in select(self.suite.runs(), only):
            if self.status(run) == "finished":
                continue
            pending += [t for t in run.trainings
                        if not (self.train_dir(t) / DONE).is_file() and t not in pending]
        return pending

    def train(self, training: Training, log: Path) -> str:
        """Train (or resume) one model and mark it done; an error message or ''."""
        out = self.train_dir(training)
        if (out / DONE).is_file():
            return ""
        if not (out / "last.pth").is_file():
            # A kill before the first checkpoint may leave an epoch row that a fresh start
            # would repeat (train.py only trims metrics.csv when resuming).
            (out / "metrics.csv").unlink(missing_ok=True)
        if self.execute(self.train_command(training), log):
            return f"train.py failed, see {log}"
        (out / DONE).write_text(json.dumps({"suite": self.suite.name,
                                            "overrides": list(training.overrides)}))
        return ""

    def run(self, only: str | None = None, dry_run: bool = False) -> int:
        """Run (or with dry_run, list) the selected runs; returns the number that failed."""
        runs = select(self.suite.runs(), only)
        if not dry_run:
            self.results.mkdir(parents=True, exist_ok=True)
            (self.results / "suite.json").write_text(json.dumps(self.suite.describe(), indent=2))
        failed = 0
        for i, run in enumerate(runs, 1):
            head = f"[{i}/{len(runs)}] {run.name} ..."
            state = self.status(run)
            if state == "finished":
                self.log(f"{head} finished earlier ({self._scores(run)})")
                continue
            if dry_run:
                self.log(f"{head} would {state}")
                for training in run.trainings:
                    if not (self.train_dir(training) / DONE).is_file():
                        self.log("    " + " ".join(self.train_command(training)))
                for name, options in self.evaluations(run):
                    out = self.results / run.name / f"predictions_{name}.csv"
                    self.log("    " + " ".join(self.test_command(run, options, out)))
                continue
            start = time.perf_counter()
            error = self._run_one(run)
            minutes = (time.perf_counter() - start) / 60
            if error:
                failed += 1
                self.log(f"{head} FAILED: {error} ({minutes:.0f} min)")
            else:
                self.log(f"{head} done {self._scores(run)} ({minutes:.0f} min)")
        return failed

    def _scores(self, run: Run) -> str:
        summary = json.loads((self.results / run.name / "metrics.json").read_text())
        return "  ".join(f"{name} {summary['evaluations'][name]['mae']:.2f}"
                         for name in summary["evaluations"])

    def _log_file(self, run: Run) -> Path:
        return self.runs_dir / "logs" / self.suite.name / f"{run.name}.log"

    def _run_one(self, run: Run) -> str:
        """Train what is missing, evaluate, store the files; an error message or ''."""
        log = self._log_file(run)
        for training in run.trainings:
            error = self.train(training, log)
            if error:
                return error
        folder = self.results / run.name
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        evaluations, counts = {}, None
        for name, options in self.evaluations(run):
            out = folder / f"predictions_{name}.csv"
            if self.execute(self.test_command(run, options, out), log):
                return f"test.py ({name}) failed, see {log}"
            for figure in folder.glob(f"predictions_{name}.reliability*.png"):
                figure.unlink()  # the report draws its own figures; keep results/ small
            _compact_predictions(out)
            evaluations[name] = json.loads(out.with_suffix(".json").read_text())
            out.with_suffix(".json").unlink()  # now inside metrics.json
            # The same for every evaluation of the run: stored once, below.
            counts = evaluations[name].pop("train_age_counts", None) or counts
        own = self.train_dir(run.trainings[0])
        for name in ("config.yaml", "metrics.csv"):
            shutil.copy(own / name, folder / name)
        train_s = [float(pd.read_csv(self.train_dir(t) / "metrics.csv")["epoch_seconds"].sum())
                   for t in run.trainings]
        summary = {
            "suite": self.suite.name, "run": run.name, "variant": run.variant, "seed": run.seed,
            "members": [t.seed for t in run.trainings],
            "overrides": list(run.trainings[0].overrides), "test_args": list(run.test_args),
            "checkpoint": display_path(own), "evaluations": evaluations,
            # train_s: this run's own model; members_train_s: every model it combines
            "wall_time": {"train_s": train_s[0], "members_train_s": sum(train_s),
                          "eval_s": time.perf_counter() - start},
            "hardware": hardware(), "cost": self.cost(run.trainings[0]),
            "train_age_counts": counts,  # training images per integer age (the shot groups)
        }
        tmp = folder / ".metrics.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=float))
        tmp.replace(folder / "metrics.json")
        return ""


def run_parallel(runners: Sequence[SuiteRunner], jobs: int, only: str | None = None) -> int:
    """Run several suites with `jobs` processes at a time (a GPU box with many cores). Each
    distinct model is trained once (suites share models), the ones most runs need first; a run
    is evaluated as soon as its models exist, ahead of any waiting training, so a session cut
    short keeps every finished run. Finished runs are skipped as in SuiteRunner.run; returns
    the number of failures."""
    runs = [(r, run) for r in runners for run in select(r.suite.runs(), only)
            if r.status(run) != "finished"]
    trainings: dict[str, tuple[SuiteRunner, Training]] = {}
    needed_by: dict[str, int] = {}
    for runner in runners:
        runner.results.mkdir(parents=True, exist_ok=True)
        (runner.results / "suite.json").write_text(json.dumps(runner.suite.describe(), indent=2))
    for runner, run in runs:
        for training in run.trainings:
            if not (runner.train_dir(training) / DONE).is_file():
                trainings.setdefault(training.key(), (runner, training))
                needed_by[training.key()] = needed_by.get(training.key(), 0) + 1
    tasks: queue.PriorityQueue = queue.PriorityQueue()
    order = itertools.count()  # ties keep submission order
    lock = threading.Lock()
    counts = {"done": 0, "failed": 0, "queued": 0}
    waiting = list(runs)  # runs whose models are not all trained yet

    def log(line: str, error: str = "") -> None:
        with lock:
            counts["done"] += 1
            counts["failed"] += bool(error)
            outcome = f"FAILED: {error}" if error else "done"
            runners[0].log(f"[{counts['done']}] {line} {outcome}")

    def submit(priority: int, fn: Callable[[], None]) -> None:
        counts["queued"] += 1
        tasks.put((priority, next(order), fn))

    def release_ready() -> None:
        """Queue the evaluation of every waiting run whose models are all trained."""
        with lock:
            ready = [(r, run) for r, run in waiting
                     if all((r.train_dir(t) / DONE).is_file() for t in run.trainings)]
            for item in ready:
                waiting.remove(item)
                submit(0, lambda item=item: evaluate(*item))

    def train(runner: SuiteRunner, training: Training) -> None:
        start = time.perf_counter()
        error = runner.train(training, runner.runs_dir / "logs" / f"{training.key()}.log")
        log(f"train {training.key()} ({(time.perf_counter() - start) / 60:.1f} min)", error)
        release_ready()

    def evaluate(runner: SuiteRunner, run: Run) -> None:
        error = runner._run_one(run)
        scores = "" if error else f" {runner._scores(run)}"
        log(f"{runner.suite.name}/{run.name}{scores}", error)

    def worker() -> None:
        while True:
            _, _, fn = tasks.get()
            if fn is None:
                return
            try:
                fn()
            except Exception as err:  # one broken run must not stop (or hang) the others
                log("task", f"{type(err).__name__}: {err}")
            with lock:
                counts["queued"] -= 1
                if counts["queued"] == 0:  # nothing left to run or to be released
                    for _ in range(jobs):
                        tasks.put((2, next(order), None))

    runners[0].log(f"{len(runs)} runs to finish: training {len(trainings)} models, "
                   f"{jobs} processes at a time")
    by_need = sorted(trainings, key=lambda key: -needed_by[key])
    with lock:
        for key in by_need:
            submit(1, lambda item=trainings[key]: train(*item))
    release_ready()
    with lock:
        if counts["queued"] == 0:
            return 0
    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["failed"]


def _compact_predictions(path: Path) -> None:
    """Rewrite a predictions CSV without the machine-specific image path (the id names the
    image) and with 4 decimals: under half the size, far below any resolution that matters."""
    frame = pd.read_csv(path)
    frame.drop(columns="path", errors="ignore").to_csv(path, index=False, float_format="%.4f")


def _training_data_key(run_folder: Path) -> str | None:
    """What decides a run's training labels: its DATA config less where the files are (the
    full data and a resized copy hold the same labels), plus TRAIN.SEED when DATA.FRACTION
    draws a seeded subset; None when the stored config no longer loads."""
    from age_estimation.config import ConfigError, load_config

    try:
        cfg = load_config(str(run_folder / "config.yaml"), [])
    except (ConfigError, OSError, KeyError, ValueError):
        return None
    data = cfg.DATA.clone()
    for key in ("ROOT", "CACHE_DIR", "NUM_WORKERS"):
        data.pop(key)
    seed = cfg.TRAIN.SEED if cfg.DATA.FRACTION < 1.0 else None
    return json.dumps([data.dump(sort_keys=True), seed])


def _checkpoint_counts(checkpoint: Path) -> list[int] | None:
    from age_estimation.engine.checkpoint import CheckpointError, load_checkpoint

    for name in ("best.pth", "last.pth"):
        if (checkpoint / name).is_file():
            try:
                return load_checkpoint(checkpoint / name).get("train_age_counts")
            except CheckpointError:
                return None
    return None


def backfill_train_counts(results_dir: Path, repo: Path = REPO,
                          log: Callable[[str], None] = print) -> dict[str, int]:
    """Add `train_age_counts` (training images per integer age) to the metrics.json of runs
    stored before the runner kept it: from the run's own checkpoint when it is still there,
    else from any run's checkpoint trained on the same labels (see _training_data_key). The
    counts are kept only when they reproduce every evaluation's stored by_shot image counts.
    Returns how many runs were filled from their own checkpoint, borrowed, or skipped."""
    from age_estimation.data.imbalance import ages_from_histogram, mae_by_shot

    folders = sorted(p.parent for p in Path(results_dir).glob("*/*/metrics.json"))
    summaries = {f: json.loads((f / "metrics.json").read_text()) for f in folders}
    summaries = {f: s for f, s in summaries.items() if not s.get("train_age_counts") and any(
        e.get("by_shot") for e in s["evaluations"].values())}
    own = {f: _checkpoint_counts(repo / s["checkpoint"]) for f, s in summaries.items()}
    keys = {f: _training_data_key(f) for f in folders}
    by_data = {keys[f]: c for f, c in own.items() if c and keys[f] is not None}
    done = {"own": 0, "borrowed": 0, "skipped": 0}
    for folder, summary in summaries.items():
        counts, source = own[folder], "own"
        if not counts:
            counts, source = by_data.get(keys[folder]), "borrowed"
        for name, evaluation in summary["evaluations"].items():
            if not evaluation.get("by_shot"):
                continue
            path = folder / f"predictions_{name}.csv"
            if not path.is_file():
                log(f"{folder.parent.name}/{folder.name} {name}: {path.name} is missing, so its "
                    f"shot sizes cannot be checked; left as is")
                source = "skipped"
                break
            frame = pd.read_csv(path)
            stored = [e["n"] for e in evaluation["by_shot"]]
            sizes = mae_by_shot(frame, ages_from_histogram(counts))["n"] if counts else None
            if sizes is None or sizes.tolist() != stored:
                log(f"{folder.parent.name}/{folder.name} {name}: no training-age counts that "
                    f"reproduce its shot sizes {stored}; left as is")
                source = "skipped"
                break
        done[source] += 1
        if source != "skipped":
            summary["train_age_counts"] = counts
            tmp = folder / ".metrics.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, default=float))
            tmp.replace(folder / "metrics.json")
    return done
