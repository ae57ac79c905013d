"""Nothing a user does loses work or runs foreign code: kill -9 and resume bit for bit, atomic
checkpoint writes, refusing code-carrying checkpoints and configs, non-finite losses."""

import ast
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import write_csv_dataset

from age_estimation.config import ConfigError
from age_estimation.engine import checkpoint as ckpt
from age_estimation.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# A 2-epoch run of 6 steps per epoch (24 train images, batch 4) of timm's tiny test ResNet (with
# BatchNorm) at 32 px: seconds on CPU. Dropout 0.2 (from the config) exercises the RNG restore.
TINY = ["DATA.DATASET", "csv", "DATA.NUM_WORKERS", "0", "MODEL.BACKBONE", "test_resnet",
        "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "2", "TRAIN.BATCH_SIZE", "4"]

# Runs train.py in this process after wrapping the scheduler's per-step update: at update
# $STOP_AT it touches $STOP_MARKER and sleeps, so the test can SIGKILL it at a known step.
STOPPING_TRAIN = """
import os, sys, time
from pathlib import Path
from timm.scheduler.scheduler import Scheduler
step_update = Scheduler.step_update
def stopping_step_update(self, num_updates, metric=None):
    step_update(self, num_updates, metric)
    if num_updates == int(os.environ["STOP_AT"]):
        Path(os.environ["STOP_MARKER"]).touch()
        time.sleep(600)
Scheduler.step_update = stopping_step_update
sys.argv[0] = "train.py"
import train
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("csvdata"), {"train": 24, "valid": 8})


def train_args(out: Path, data: Path, *extra: str) -> list[str]:
    return ["--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
            "DATA.ROOT", str(data), "DATA.CACHE_DIR", str(out.parent / "cache"), *TINY,
            "TRAIN.THREADS", "1", *extra]


def run_train(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture
def train_main(monkeypatch):
    """train.py's main() in this process (imports already paid for): logging left to pytest,
    torch's thread count restored afterwards."""
    import train

    monkeypatch.setattr(train, "setup_logging", lambda *_, **__: None)
    threads = torch.get_num_threads()
    yield train.main
    torch.set_num_threads(threads)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [[], ["TRAIN.EMA_DECAY", "0.9", "AUG.MIXUP_ALPHA", "0.4"]],
                         ids=["plain", "ema_mixup"])
def test_sigkill_mid_epoch_then_resume_ends_exactly_like_an_uninterrupted_run(
        csv_dataset, tmp_path, recipe):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # The reference run and the run to kill go side by side (one thread each).
    uninterrupted = subprocess.Popen(
        [sys.executable, "train.py", *train_args(reference, csv_dataset, *recipe)], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = tmp_path / "stopped"
    # Checkpoints every 4 steps: epoch 1 step 4, end of epoch 1, epoch 2 step 4 (update 10).
    # Stopped after update 11 (epoch 2, step 5): the newest checkpoint is epoch 2, step 4.
    env = dict(os.environ, STOP_AT="11", STOP_MARKER=str(marker))
    victim = subprocess.Popen(
        [sys.executable, "-c", STOPPING_TRAIN,
         *train_args(killed, csv_dataset, "TRAIN.CHECKPOINT_STEPS", "4", *recipe)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(marker, victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        victim.kill()
    assert victim.returncode == -signal.SIGKILL
    state = load_checkpoint(killed)
    assert (state["epoch"], state["step"]) == (1, 4)
    assert pd.read_csv(killed / "metrics.csv")["epoch"].tolist() == [1]
    # The epoch's time before the kill is in the checkpoint and counts in its epoch_seconds:
    # made 1000 s here, the resumed epoch must report at least that.
    assert 0 < state["epoch_stats"]["seconds"] < 600
    state["epoch_stats"]["seconds"] = 1000.0
    save_checkpoint(state, killed / "last.pth")

    (killed / ".last.pth.x1y2.tmp").write_bytes(b"PK torn")  # as a kill during a save leaves

    resumed = run_train("--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at epoch 1, step 4" in resumed.stderr
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-3000:]

    weights = ["model", "train_model"] if recipe else ["model"]  # EMA: averaged and raw
    for name in ("last.pth", "best.pth"):
        expected, got = load_checkpoint(reference / name), load_checkpoint(killed / name)
        assert (got["epoch"], got["step"]) == (expected["epoch"], expected["step"])
        assert ("train_model" in got) == bool(recipe)
        for weight in weights:
            assert got[weight].keys() == expected[weight].keys()
            for key, tensor in expected[weight].items():
                assert torch.equal(got[weight][key], tensor), f"{name}: {weight}.{key} differs"
    if recipe:  # the averaged weights are not the raw ones
        last = load_checkpoint(reference / "last.pth")
        assert not all(torch.equal(last["model"][k], v) for k, v in last["train_model"].items())
    columns = ["epoch", "train_loss", "valid_mae", "lr", "skipped_nonfinite"]
    pd.testing.assert_frame_equal(pd.read_csv(killed / "metrics.csv")[columns],
                                  pd.read_csv(reference / "metrics.csv")[columns])
    seconds = pd.read_csv(killed / "metrics.csv").set_index("epoch")["epoch_seconds"]
    assert 1000 < seconds[2] < 1600 and seconds[1] < 600
    assert list(killed.glob(".*.tmp")) == []


# ------------------------------------------------------------------ atomic checkpoint writes

# Saves checkpoint A, then starts writing B through the real torch.save into a file object that
# pauses (touching $MARKER) once 1 MB of B is on disk, so the test can SIGKILL it mid-write.
PAUSING_SAVE = """
import sys, time
from pathlib import Path
import torch
from age_estimation.engine.checkpoint import save_checkpoint
path, marker = sys.argv[1:3]
save_checkpoint({"model": {"w": torch.zeros(4)}, "config": "A"}, path)
real_save = torch.save
class Pausing:
    def __init__(self, handle):
        self.handle, self.written = handle, 0
    def write(self, data):
        self.written += self.handle.write(data)
        if self.written > 1_000_000:
            self.handle.flush()
            Path(marker).touch()
            time.sleep(600)
        return len(data)
    def flush(self):
        self.handle.flush()
torch.save = lambda state, handle: real_save(state, Pausing(handle))
save_checkpoint({"model": {"w": torch.ones(4_000_000)}, "config": "B"}, path)
"""


def test_sigkill_while_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    path, marker = tmp_path / "last.pth", tmp_path / "writing"
    writer = subprocess.Popen([sys.executable, "-c", PAUSING_SAVE, str(path), str(marker)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(marker, writer, timeout=120)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    finally:
        writer.kill()
    torn = list(tmp_path.glob(".last.pth.*.tmp"))
    assert len(torn) == 1 and torn[0].stat().st_size > 1_000_000  # killed mid-write
    state = load_checkpoint(path)
    assert state["config"] == "A" and torch.equal(state["model"]["w"], torch.zeros(4))


def test_error_while_saving_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {"w": torch.zeros(2)}, "config": "A"}, path)

    def dying_save(state, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.ones(2)}, "config": "B"}, path)
    assert load_checkpoint(path)["config"] == "A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


# ------------------------------------------------------------------ foreign code


class Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, marker: Path, legacy: bool) -> None:
    state = {"model": {"w": torch.zeros(2)}, "config": "", "extra": Payload(marker)}
    if legacy:  # a bare pickle, as torch wrote before its zip format
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "bare-pickle"])
def test_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path, legacy):
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    write_malicious(path, marker, legacy)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pth.*arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"\x00" * 64], ids=["text", "empty",
                                                                         "zeros"])
def test_a_file_that_is_no_checkpoint_is_named_as_such_not_as_unsafe(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"broken\.pth is not a readable checkpoint") as err:
        load_checkpoint(path)
    assert "arbitrary code" not in str(err.value)


def test_train_cli_refuses_a_code_carrying_checkpoint(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    write_malicious(path, marker, legacy=False)
    result = run_train("--resume", str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "refusing to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_config_with_a_python_tag_inside_a_checkpoint_is_refused(tmp_path, train_main, capsys):
    marker = tmp_path / "pwned"
    config = f"MODEL: !!python/object/apply:os.system ['touch {marker}']\n"
    path = tmp_path / "tagged.pth"
    save_checkpoint({"model": {}, "config": config}, path)
    with pytest.raises(ConfigError, match=r"not plain YAML.*python/object"):
        ckpt.load_model(path)
    assert train_main(["--resume", str(path)]) == 2
    assert "not plain YAML" in capsys.readouterr().err and not marker.exists()


def test_package_loads_checkpoints_with_weights_only_everywhere():
    """Every torch.load call in the package, CLIs and scripts passes weights_only=True, and
    nothing unpickles with the pickle module itself."""
    sources = [*REPO.glob("*.py"), *(REPO / "age_estimation").rglob("*.py"),
               *(REPO / "scripts").rglob("*.py")]
    torch_loads = 0
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            where = f"{source.relative_to(REPO)}:{node.lineno}"
            assert (owner, node.func.attr) not in {("pickle", "load"), ("pickle", "loads")}, where
            if (owner, node.func.attr) == ("torch", "load"):
                torch_loads += 1
                flags = {k.arg: k.value for k in node.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant), where
                assert flags["weights_only"].value is True, where
    assert torch_loads >= 1  # at least the checkpoint loader


# ------------------------------------------------------------------ non-finite losses


def test_exploding_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        csv_dataset, tmp_path, train_main, caplog):
    out = tmp_path / "run"
    code = train_main(train_args(out, csv_dataset, "TRAIN.LR", "1e30", "TRAIN.WARMUP_EPOCHS",
                                 "0.0", "TRAIN.CHECKPOINT_STEPS", "1"))
    assert code == 3
    error = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "non-finite loss" in error and "at epoch 1, step 2" in error
    assert f"the last good checkpoint is {out / 'last.pth'}" in error
    state = load_checkpoint(out)
    assert (state["epoch"], state["step"]) == (0, 1)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_diverged_weights_stop_a_run_that_skips_nonfinite_batches(csv_dataset, tmp_path,
                                                                  train_main, caplog):
    """Skipping cannot help once the weights themselves are broken: a fully skipped epoch
    stops the run instead of skipping forever."""
    out = tmp_path / "run"
    code = train_main(train_args(out, csv_dataset, "TRAIN.LR", "1e30", "TRAIN.WARMUP_EPOCHS",
                                 "0.0", "TRAIN.SKIP_NONFINITE", "True"))
    assert code == 3
    assert pd.read_csv(out / "metrics.csv")["skipped_nonfinite"].tolist() == [5]  # steps 2-6
    assert "every batch of epoch 2 had a non-finite loss" in caplog.text


def test_skip_nonfinite_counts_and_logs_skipped_batches(csv_dataset, tmp_path, monkeypatch,
                                                        train_main, caplog):
    from age_estimation.models.heads import HEADS

    dex_loss, calls = HEADS["dex"].loss, []

    def sometimes_nan(self, outputs, batch):
        calls.append(1)  # NaN at steps 2 and 3 of epoch 1 and step 1 of epoch 2 (6 per epoch)
        loss = dex_loss(self, outputs, batch)
        return loss * float("nan") if len(calls) in (2, 3, 7) else loss

    monkeypatch.setattr(HEADS["dex"], "loss", sometimes_nan)
    out = tmp_path / "run"
    assert train_main(train_args(out, csv_dataset, "TRAIN.SKIP_NONFINITE", "True")) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["skipped_nonfinite"].tolist() == [2, 1]
    assert metrics["train_loss"].notna().all()
    assert "non-finite loss at epoch 1, step 2: batch skipped" in caplog.text
    assert "non-finite loss at epoch 2, step 1: batch skipped" in caplog.text


def test_resume_from_a_checkpoint_of_the_previous_format(csv_dataset, tmp_path, train_main):
    """Runs started before per-rank RNG states and mid-epoch steps still resume."""
    out = tmp_path / "run"
    assert train_main(train_args(out, csv_dataset, "TRAIN.EPOCHS", "1")) == 0
    state = load_checkpoint(out)
    state["torch_rng"] = state.pop("rng")[0]["torch"]
    del state["step"], state["epoch_stats"]
    save_checkpoint(state, out / "last.pth")
    metrics = pd.read_csv(out / "metrics.csv")
    metrics.drop(columns="skipped_nonfinite").to_csv(out / "metrics.csv", index=False)

    assert train_main(["--resume", str(out), "TRAIN.EPOCHS", "2"]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["skipped_nonfinite"].isna().tolist() == [True, False]
    assert load_checkpoint(out)["epoch"] == 2
