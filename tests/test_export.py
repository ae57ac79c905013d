"""scripts/export.py (ONNX / TorchScript parity with PyTorch), the ONNX demo path without torch,
and scripts/bundle_model.py (size, safe round trip, model card)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (  # noqa: F401 (one_torch_thread: an autouse fixture)
    IMG_SIZE,
    REPO,
    load_script,
    one_torch_thread,
    write_checkpoint,
)
from skimage import data

from age_estimation import faces
from age_estimation.engine.checkpoint import load_checkpoint, load_model
from age_estimation.pipeline import AgeEstimator, TorchAgeModel

# Export parity: the same fp32 maths, reordered (ONNX folds BatchNorm into the convolutions):
# measured <= 1e-5 years on 40 FG-NET faces with a real ResNet-18; 1e-3 catches any mismatch.
EXPORT_TOL = 1e-3
# fp16 bundle: weights rounded to 11 significant bits moved ages by <= 0.01 years (std <= 0.004)
# on 40 FG-NET faces with a real UTKFace ResNet-18 (epoch 1); 0.1 leaves a 10x margin.
FP16_TOL = 0.1


# Both exporters are deprecated in this torch but deliberate: the dynamo ONNX exporter needs
# onnxscript (not a dependency) and TorchScript is one of the requested formats.
pytestmark = pytest.mark.filterwarnings(
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning",
    "ignore:`torch.jit:FutureWarning",
)

export = load_script("export").main
bundle_model = load_script("bundle_model").main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """uint8 [N, S, S, 3]: the astronaut's aligned face plus random images."""
    images = list(np.random.default_rng(0).integers(0, 256, (4, IMG_SIZE, IMG_SIZE, 3),
                                                    dtype=np.uint8))
    if faces.model_path("68").is_file():
        images.insert(0, faces.FaceDetector(size=IMG_SIZE).detect(data.astronaut())[0].crop)
    return np.stack(images)


def torch_predict(checkpoint: Path, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        prediction = model.predict(torch.from_numpy(crops).permute(0, 3, 1, 2))
    return prediction.mean.numpy(), prediction.std_aleatoric.numpy()


@pytest.fixture(scope="module")
def onnx_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "age.onnx"
    assert export(["--resume", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_onnx_matches_pytorch_for_any_batch_size(checkpoint, onnx_file, crops):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    expected_mean, expected_std = torch_predict(checkpoint, crops)
    assert np.ptp(expected_mean) > 1.0  # the model tells these images apart
    for batch in (crops, crops[:1]):  # dynamic batch axis
        mean, std = session.run(None, {"images": batch.transpose(0, 3, 1, 2).copy()})
        n = len(batch)
        np.testing.assert_allclose(mean, expected_mean[:n], atol=EXPORT_TOL)
        np.testing.assert_allclose(std, expected_std[:n], atol=EXPORT_TOL)
    meta = session.get_modelmeta().custom_metadata_map
    assert f"IMG_SIZE: {IMG_SIZE}" in meta["age_estimation.config"]


def test_torchscript_matches_pytorch(checkpoint, crops, tmp_path):
    out = tmp_path / "age.ts"
    assert export(["--resume", str(checkpoint), "--format", "torchscript", "--out",
                   str(out)]) == 0
    mean, std = torch.jit.load(str(out))(torch.from_numpy(crops).permute(0, 3, 1, 2))
    expected_mean, expected_std = torch_predict(checkpoint, crops)
    np.testing.assert_allclose(mean.detach().numpy(), expected_mean, atol=EXPORT_TOL)
    np.testing.assert_allclose(std.detach().numpy(), expected_std, atol=EXPORT_TOL)


def test_onnx_demo_runs_without_torch(checkpoint, onnx_file, tmp_path):
    if not faces.model_path("68").is_file():
        pytest.skip("dlib landmark models not installed")
    json_path = tmp_path / "ages.json"
    code = ("import sys, demo; "
            f"code = demo.main(['--onnx', {str(onnx_file)!r}, '--json', {str(json_path)!r}, "
            f"'--output_dir', {str(tmp_path)!r}]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (entry,) = json.loads(json_path.read_text())
    (face,) = entry["faces"]
    # The same image through the PyTorch pipeline gives the same age.
    (expected,) = AgeEstimator(TorchAgeModel(checkpoint)).estimate(data.astronaut())
    assert face["box"] == list(expected.box)
    assert face["age"] == pytest.approx(expected.age, abs=0.01)  # JSON rounds to 0.001
    assert face["std"] == pytest.approx(expected.std, abs=0.01)


def test_bundle_is_small_loads_safely_and_fills_the_card(checkpoint, crops, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    source = run_dir / "best.pth"
    source.write_bytes(checkpoint.read_bytes())
    # Epoch 3 is after the checkpoint's epoch 2: the time to the checkpoint does not count it,
    # the whole run's time does.
    (run_dir / "metrics.csv").write_text(
        "epoch,train_loss,valid_mae,lr,epoch_seconds,images_per_s\n"
        "1,4.0,11.0,0.002,1800.0,100\n2,3.5,9.0,0.001,1800.0,100\n3,3.4,8.0,0.0,900.0,100\n")
    test_json = run_dir / "predictions_test.json"
    summary = {"n": 3000, "mae": 5.4321, "cs5": 0.61, "mae_ci": [5.21, 5.65],
               "by_group": [{"group": "0-12", "n": 400, "mae": 2.5, "bias": 1.8},
                            {"group": "60+", "n": 300, "mae": 9.61, "bias": -6.8}],
               "inference": {"checkpoints": [str(source)], "split": "test",
                             "data": "utkface:", "tta": ["identity"]}}
    test_json.write_text(json.dumps(summary))
    fgnet_json = run_dir / "predictions_fgnet.json"
    fgnet_json.write_text(json.dumps({
        "n": 505, "mae": 6.789, "cs5": 0.48, "mae_ci": [6.1, 7.2],
        "inference": {"checkpoints": [str(source)], "split": "all", "data": "fgnet:F",
                      "tta": ["identity"]}}))
    card = tmp_path / "README.md"
    card.write_text((REPO / "models" / "README.md").read_text())
    bundle = tmp_path / "age_model.pth"
    assert bundle_model([str(source), "--out", str(bundle), "--test_json", str(test_json),
                         "--cross_dataset_json", str(fgnet_json), "--card", str(card)]) == 0

    assert bundle.stat().st_size <= 25e6
    state = load_checkpoint(bundle)  # weights_only=True
    assert set(state) == {"model", "config", "meta"}  # no optimizer / scheduler / RNG state
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    assert state["meta"]["epoch"] == 2 and state["meta"]["test"]["mae"] == 5.4321
    mean, std = torch_predict(bundle, crops)
    expected_mean, expected_std = torch_predict(checkpoint, crops)
    np.testing.assert_allclose(mean, expected_mean, atol=FP16_TOL)
    np.testing.assert_allclose(std, expected_std, atol=FP16_TOL)

    text = card.read_text()
    assert "not bundled yet" not in text
    assert "MAE 5.43 years (95 % bootstrap CI 5.21–5.65)" in text and "on 3000 images" in text
    assert "| 60+ | 300 | 9.61 | -6.80 |" in text  # the by-age-group table
    assert "MAE 6.79 years (95 % bootstrap CI 6.10–7.20), CS@5 0.480 on 505 images" in text
    assert "1.00 h (3600 s" in text  # epochs 1-2 of metrics.csv
    assert "the whole run took 1.25 h (4500 s)" in text  # epochs 1-3
    assert "best valid MAE 12.50" in text and f"IMG_SIZE: {IMG_SIZE}" in text
    # Re-bundling refills the same markers instead of appending.
    assert bundle_model([str(source), "--out", str(bundle), "--card", str(card)]) == 0
    refilled = card.read_text()
    assert refilled.count("<!-- test -->") == 1 and "not evaluated" in refilled
    assert "6.79" not in refilled and "9.61" not in refilled  # no stale numbers survive

    # A test summary of another checkpoint is refused: its MAE would land on this card.
    summary["inference"]["checkpoints"] = [str(run_dir / "last.pth")]
    test_json.write_text(json.dumps(summary))
    assert bundle_model([str(source), "--out", str(tmp_path / "y.pth"), "--card", "none",
                         "--test_json", str(test_json)]) == 2
    # ... and so is a cross-dataset summary of another checkpoint.
    summary["inference"]["checkpoints"] = [str(source)]
    test_json.write_text(json.dumps(summary))
    fgnet_json.write_text(json.dumps({"n": 5, "mae": 1.0, "inference": {
        "checkpoints": [str(tmp_path / "other.pth")]}}))
    assert bundle_model([str(source), "--out", str(tmp_path / "y.pth"), "--card", "none",
                         "--test_json", str(test_json), "--cross_dataset_json",
                         str(fgnet_json)]) == 2

    too_big = [str(source), "--out", str(tmp_path / "x.pth"), "--card", "none", "--max_mb", "1"]
    assert bundle_model(too_big) == 1 and not (tmp_path / "x.pth").exists()


def test_ensemble_card_lists_members_and_refuses_a_summary_of_other_models(checkpoint, tmp_path):
    members = []
    for name, size in (("a", IMG_SIZE), ("b", 80)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        source = write_checkpoint(run_dir / "best.pth", size=size, seed=len(members))
        members.append(tmp_path / f"{name}.pth")
        assert bundle_model([str(source), "--out", str(members[-1]), "--card", "none",
                             "--command", f"python train.py --cfg {name}.yaml"]) == 0
    template = "".join(f"<!-- {f} -->?<!-- /{f} -->\n" for f in (
        "members", "files", "usage", "test", "by_age_group", "cross_dataset"))
    card = tmp_path / "README.md"
    card.write_text(template)
    test_json = tmp_path / "ensemble_test.json"
    summary = {"n": 3000, "mae": 4.8765, "cs5": 0.66, "mae_ci": [4.7, 5.05],
               "by_group": [{"group": "60+", "n": 300, "mae": 8.5, "bias": -6.0}],
               "inference": {"checkpoints": [str(m) for m in reversed(members)],
                             "split": "test", "data": "utkface:", "tta": ["identity", "flip"]}}
    test_json.write_text(json.dumps(summary))
    assert bundle_model(["--members", *map(str, members), "--test_json", str(test_json)]) == 0
    text = card.read_text()
    assert "| `a.pth` |" in text and "| `b.pth` |" in text
    assert "input uint8 RGB 80x80" in text and "`python train.py --cfg b.yaml`" in text
    assert "2 files," in text
    assert f"--resume {members[0]} --ensemble {members[1]} --tta identity,flip`" in text
    assert "MAE 4.88 years (95 % bootstrap CI 4.70–5.05)" in text
    assert "| 60+ | 300 | 8.50 | -6.00 |" in text and "not evaluated (pass --cross" in text
    assert "point estimate: the mean" in text  # a summary from before test.py --point
    # A summary of the median (test.py --point median): the usage line says so too.
    summary["inference"]["point"] = "median"
    test_json.write_text(json.dumps(summary))
    assert bundle_model(["--members", *map(str, members), "--test_json", str(test_json)]) == 0
    text = card.read_text()
    assert "--tta identity,flip --point median`" in text
    assert "point estimate: the median" in text
    # A weighted ensemble's summary (test.py --ensemble-weights, in its own checkpoint order):
    # the usage line gives each member its weight, in the card's order.
    summary["inference"]["weights"] = [3, 1]  # members[1] weighs 3, members[0] 1
    test_json.write_text(json.dumps(summary))
    assert bundle_model(["--members", *map(str, members), "--test_json", str(test_json)]) == 0
    assert (f"--resume {members[0]} --ensemble {members[1]} --ensemble-weights 1 3 --tta "
            f"identity,flip --point median`") in card.read_text()
    cross_json = tmp_path / "cross.json"
    cross_json.write_text(json.dumps({**summary, "inference": {**summary["inference"],
                                                               "weights": [1, 3]}}))
    assert bundle_model(["--members", *map(str, members), "--test_json", str(test_json),
                         "--cross_dataset_json", str(cross_json)]) == 2
    del summary["inference"]["weights"]
    # A summary of one member alone (or of other models) is refused: not the ensemble's numbers.
    summary["inference"]["checkpoints"] = [str(members[0])]
    test_json.write_text(json.dumps(summary))
    assert bundle_model(["--members", *map(str, members), "--test_json", str(test_json)]) == 2
    assert bundle_model([str(members[0]), "--members", str(members[1])]) == 2


def test_no_model_file_under_models_is_ignored_by_git():
    """A checkpoint put under models/ (a release, a candidate waiting for its release steps) must
    not be kept out of git by a .gitignore rule: round 16's candidate was, and only the machine
    that trained it had it. On a clean clone nothing is ignored, so this guards the maker's tree."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git work tree")
    ignored = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "models"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert [path for path in ignored if path.endswith((".pth", ".onnx"))] == []


@pytest.mark.parametrize("folder", ["ensemble", "previous_ensemble"])
def test_the_released_ensembles_are_in_the_repository(folder):
    """Every member an ensemble's card tells users to run is committed and loads at the input
    size its members table states (a .gitignore rule once kept the member files out)."""
    card = (REPO / "models" / folder / "README.md").read_text()
    usage = card.split("<!-- usage -->")[1].split("<!-- /usage -->")[0]
    members = [word for word in usage.strip("`").split() if word.endswith(".pth")]
    assert len(members) >= 2, usage
    for member in members:
        _, cfg = load_model(REPO / member)
        name = Path(member).name
        assert f"| `{name}` |" in card and f"RGB {cfg.MODEL.IMG_SIZE}x{cfg.MODEL.IMG_SIZE}" in card
