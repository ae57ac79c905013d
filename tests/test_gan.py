"""Synthetic faces: the GAN's networks and training step, TorchScript export / external loading,
synthesize.py's pseudo-labelled csv dataset, the real/synthetic batch mixer, the Fréchet
distance and age-fidelity measures, and train_gan.py's resume. All at 32 px with tiny widths."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (  # noqa: F401 (one_torch_thread: an autouse fixture)
    IMG_SIZE,
    load_script,
    one_torch_thread,
    write_checkpoint,
)

from age_estimation.config import ConfigError
from age_estimation.data.datasets import read_dataset
from age_estimation.data.mixing import MixedBatchSampler
from age_estimation.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from age_estimation.engine.inference import predict_batch
from age_estimation.gan.defaults import load_gan_config
from age_estimation.gan.external import export_torchscript, load_generator, resize_uint8
from age_estimation.gan.models import ConditionEmbedding, build_networks
from age_estimation.gan.quality import age_features, age_fidelity, frechet_distance, spread
from age_estimation.gan.training import GanTrainer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning",
                                        "ignore:.*TorchScript.*:DeprecationWarning")

TINY = ["MODEL.RESOLUTION", "32", "MODEL.G_WIDTH", "8", "MODEL.D_WIDTH", "8", "MODEL.Z_DIM",
        "16", "MODEL.EMBED_DIM", "16", "TRAIN.BATCH_SIZE", "8", "MODEL.ATTRIBUTES", "['gender']"]
N_FACES = 16


def tiny_cfg(*extra: str):
    return load_gan_config(None, [*TINY, *extra])


def random_faces(n: int = N_FACES) -> tuple[np.ndarray, np.ndarray, dict]:
    """Noise 'faces' whose brightness grows with age; labels (age, gender index); vocab."""
    rng = np.random.default_rng(0)
    ages = np.linspace(2, 90, n).astype(np.float32)
    images = np.clip(rng.normal(ages[:, None, None, None] * 2.5, 20, (n, 32, 32, 3)), 0, 255)
    labels = np.stack([ages, np.arange(n) % 2], axis=1).astype(np.float32)
    return images.astype(np.uint8), labels, {"gender": ["0", "1"]}


@pytest.fixture(scope="module")
def gan_checkpoint(tmp_path_factory):
    """A GAN checkpoint after two training steps, as train_gan.py writes it."""
    trainer = GanTrainer(tiny_cfg(), *random_faces())
    for _ in range(2):
        trainer.train_step()
    path = tmp_path_factory.mktemp("gan") / "last.pth"
    save_checkpoint({**trainer.state_dict(), "elapsed_s": 1.0}, path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pth")


# ------------------------------------------------------------------------------ networks


@pytest.mark.parametrize("resolution", [32, 64])
def test_generator_output_shape_range_and_conditioning(resolution):
    cfg = tiny_cfg("MODEL.RESOLUTION", str(resolution), "MODEL.AGE_BINS", "8")
    generator, discriminator = build_networks(cfg, [2])
    generator.eval()
    z = torch.randn(1, 16).expand(3, -1)  # one latent, three labels
    labels = torch.tensor([[5.0, 0], [50.0, 1], [95.0, -1]])  # -1: unknown gender
    images = generator(z, labels)
    assert images.shape == (3, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert not torch.allclose(images[0], images[1])  # the labels change the face
    same_age = generator(z[:2], torch.tensor([[30.0, 0], [30.0, 1]]))
    assert not torch.allclose(same_age[0], same_age[1])  # so does an attribute alone
    assert discriminator(images, labels).shape == (3,)


@pytest.mark.parametrize("age_bins", [0, 10])
def test_age_is_not_drowned_by_the_attributes_in_the_condition_embedding(age_bins):
    # At initialisation, 5 vs 95 years must move the embedding about as far as a change of
    # gender or race; otherwise the networks learn to ignore the age (a past one-hour run did).
    torch.manual_seed(0)
    embed = ConditionEmbedding(128, 100.0, age_bins, [2, 5])
    out = embed(torch.tensor([[5.0, 0, 0], [95.0, 0, 0], [5.0, 1, 0], [5.0, 0, 3]]))
    age, gender, race = ((out[0] - out[i]).norm().item() for i in (1, 2, 3))
    assert age > 0.5 * max(gender, race)


@pytest.mark.parametrize("norm,batch_norms,spectral", [("spectral", 0, True),
                                                       ("batch", 6, False), ("none", 0, False)])
def test_discriminator_normalisation_follows_the_config(norm, batch_norms, spectral):
    # 32 px: three downsampling blocks, two convolutions each.
    _, discriminator = build_networks(tiny_cfg("MODEL.D_NORM", norm), [2])
    modules = list(discriminator.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in modules) == batch_norms
    assert any(hasattr(m, "weight_orig") for m in modules) == spectral


@pytest.mark.parametrize("extra", [[], ["TRAIN.LOSS", "nonsat", "MODEL.D_COND", "input",
                                        "TRAIN.DIFFAUG", ""],
                                   ["MODEL.D_NORM", "batch"], ["MODEL.D_NORM", "none"]])
def test_training_step_updates_both_networks_and_ema(extra):
    trainer = GanTrainer(tiny_cfg(*extra), *random_faces())
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in (
        ("G", trainer.generator), ("D", trainer.discriminator), ("EMA", trainer.ema.module))}
    losses = trainer.train_step()
    assert all(np.isfinite(v) for v in losses.values()) and trainer.step == 1
    for name, net in (("G", trainer.generator), ("D", trainer.discriminator),
                      ("EMA", trainer.ema.module)):
        changed = [not torch.equal(a, b) for a, b in zip(before[name], net.parameters())]
        assert sum(changed) > len(changed) // 2, f"{name}: {sum(changed)}/{len(changed)} changed"


# ------------------------------------------------------------------------------ external


def test_torchscript_export_round_trip(gan_checkpoint, tmp_path):
    ts = export_torchscript(gan_checkpoint, tmp_path / "gan.ts")
    own, external = load_generator(gan_checkpoint), load_generator(ts)
    assert external.z_dim == 16 and external.label_columns == ["age", "gender"]
    assert external.vocab == {"gender": ["0", "1"]}
    z = torch.randn(5, 16)  # a batch size other than the one traced
    labels = torch.tensor([[3.0, 0], [20, 1], [40, 0], [70, 1], [99, -1]])
    a, b = own.generate(z, labels), external.generate(z, labels)
    assert a.dtype == torch.uint8 and a.shape == (5, 3, 32, 32)
    assert (a.int() - b.int()).abs().max() <= 1  # same faces (rounding at most one level)
    assert not torch.equal(a, own.generate(torch.randn(5, 16), labels))


class FloatFaces(torch.nn.Module):
    """An external unconditional generator: channel c of every pixel is z[:, c], in [-1, 1]."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :3, None, None].expand(-1, 3, 8, 8)


class ByteFaces(FloatFaces):
    """The same faces as uint8 0..255."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ((z[:, :3, None, None].expand(-1, 3, 8, 8) + 1) * 127.5).round().byte()


@pytest.mark.parametrize("module", [FloatFaces, ByteFaces])
def test_external_unconditional_generator_without_metadata(module, tmp_path):
    path = tmp_path / "ext.ts"
    torch.jit.script(module()).save(str(path))
    with pytest.raises(ValueError, match="z_dim"):
        load_generator(path)
    faces = load_generator(path, z_dim=4)
    assert not faces.conditional
    out = faces.generate(torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 8, 8)
    assert out[0, :, 0, 0].tolist() == [0, 128, 255]  # [-1, 1] mapped onto 0..255


# ------------------------------------------------------------------------------ synthesize


def test_synthesize_writes_a_teacher_labelled_csv_dataset(gan_checkpoint, teacher, tmp_path):
    synthesize = load_script("synthesize").main
    out = tmp_path / "synth"
    assert synthesize(["--generator", str(gan_checkpoint), "--teacher", str(teacher),
                       "--ages", "60-62", "--per-age", "2", "--out", str(out), "--seed", "3",
                       "--device", "cpu"]) == 0
    records = read_dataset("csv", str(out / "labels.csv"), "all")
    table = pd.read_csv(out / "labels.csv")
    assert len(records) == 6 and sorted(table["conditioned_age"]) == [60, 60, 61, 61, 62, 62]
    assert set(table["gender"].astype(str)) <= {"0", "1"}
    # The labels are the teacher's predictions on the written images.
    model, _ = load_model(teacher)
    images = torch.from_numpy(np.stack([cv2.imread(r.path)[:, :, ::-1] for r in records]))
    prediction = predict_batch(model, resize_uint8(images.permute(0, 3, 1, 2), IMG_SIZE))
    np.testing.assert_allclose([r.age for r in records], prediction.mean.numpy(), atol=0.01)
    np.testing.assert_allclose([r.age_std for r in records], prediction.std.numpy(), atol=0.01)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["seed"] == 3 and provenance["written"] == 6
    assert provenance["teacher"].endswith("teacher.pth") and "--per-age" in provenance["command"]
    summary = provenance["teacher_labels"]
    assert summary["n"] == 6 and summary["mean"] == pytest.approx(table["age"].mean(), abs=1e-3)
    assert sum(summary["share_by_decade"].values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["pearson_r_with_conditioned_age"] == pytest.approx(
        table["age"].corr(table["conditioned_age"]), abs=1e-3)
    # synthetic_labels.py recomputes the summary from the labels there, next to the provenance.
    summarize = load_script("synthetic_labels").main
    assert summarize([str(out), "--json", str(tmp_path / "labels.json")]) == 0
    entry = json.loads((tmp_path / "labels.json").read_text())["synth"]
    assert entry["teacher_labels"] == summary and entry["made_by"]["seed"] == 3
    assert summarize([str(tmp_path), "--json", str(tmp_path / "x.json")]) == 2
    # --min-confidence keeps only images below the std threshold; rejected ages are drawn
    # again until each age has its quota.
    threshold = float(np.median(table["age_std"]))
    filtered = tmp_path / "confident"
    assert synthesize(["--generator", str(gan_checkpoint), "--teacher", str(teacher),
                       "--ages", "60,61", "--per-age", "2", "--min-confidence", str(threshold),
                       "--out", str(filtered), "--device", "cpu", "--batch-size", "4"]) == 0
    kept = pd.read_csv(filtered / "labels.csv")
    assert sorted(kept["conditioned_age"]) == [60, 60, 61, 61]
    assert (kept["age_std"] < threshold).all()
    assert json.loads((filtered / "provenance.json").read_text())["drawn"] > 4
    # Nothing confident enough: a failure exit, and still a well-formed (empty) label file.
    none = tmp_path / "none"
    assert synthesize(["--generator", str(gan_checkpoint), "--teacher", str(teacher), "--n", "2",
                       "--min-confidence", "1e-6", "--max-draws", "4", "--out", str(none),
                       "--device", "cpu"]) == 1
    assert pd.read_csv(none / "labels.csv").columns[:3].tolist() == ["path", "age", "age_std"]


# ------------------------------------------------------------------------------ mixing


def batches(**kwargs) -> list[list[int]]:
    args = {"n_real": 50, "n_synth": 13, "batch_size": 8, "ratio": 0.25, "seed": 1, "epoch": 0}
    return list(MixedBatchSampler(**{**args, **kwargs}))


@pytest.mark.parametrize("ratio,synthetic", [(0.0, 0), (0.25, 2), (0.35, 3), (0.5, 4), (1.0, 8)])
def test_mixing_ratio_is_exact_in_every_batch(ratio, synthetic):
    epoch = batches(ratio=ratio)
    assert len(epoch) == 50 // 8  # a real epoch's length, whatever the ratio
    for batch in epoch:
        assert len(batch) == 8 and sum(i >= 50 for i in batch) == synthetic
    real = [i for batch in epoch for i in batch if i < 50]
    assert len(real) == len(set(real))  # no real image twice in an epoch
    many = [b for e in range(20) for b in batches(ratio=ratio, epoch=e)]
    share = sum(i >= 50 for b in many for i in b) / sum(map(len, many))
    assert share == pytest.approx(synthetic / 8)
    if synthetic:  # the small synthetic set is cycled through whole shuffled passes
        drawn = [i - 50 for b in epoch for i in b if i >= 50]
        assert len(set(drawn[:13])) == min(13, len(drawn))  # no repeat within a pass


def test_mixing_is_deterministic_resumable_and_shards():
    full = batches()
    assert full == batches() and full != batches(epoch=1) and full != batches(seed=2)
    assert batches(start=4) == full[4:]
    shards = [batches(rank=r, world_size=2) for r in range(2)]
    for step, batch in enumerate(full):
        assert sorted(shards[0][step] + shards[1][step]) == sorted(batch)
        assert sum(i >= 50 for i in shards[0][step]) == 1  # the ratio holds per process
    with pytest.raises(ValueError, match="synthetic"):
        batches(n_synth=0)
    with pytest.raises(ValueError, match="ratio"):
        batches(ratio=1.5)


# ------------------------------------------------------------------------------ quality


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(6.0, rel=1e-6)  # |Δmean|² = 6
    assert frechet_distance(a, a * 2.0) > frechet_distance(a, a * 1.2) > 0.1


def test_spread_is_zero_for_a_collapsed_set_and_scales_with_the_features():
    a = np.random.default_rng(1).normal(size=(300, 6))
    assert spread(np.repeat(a[:1], 50, axis=0)) == pytest.approx(0.0, abs=1e-12)
    assert spread(a * 3.0) == pytest.approx(3.0 * spread(a))
    assert spread(a + 5.0) == pytest.approx(spread(a))


def test_age_model_features_and_fidelity(teacher):
    model, cfg = load_model(teacher)
    faces = random_faces()[0]
    own = age_features(model, faces, cfg.MODEL.IMG_SIZE)
    assert own.shape[0] == N_FACES
    assert frechet_distance(own, own) == pytest.approx(0.0, abs=1e-6)
    shifted = age_features(model, np.clip(faces.astype(int) + 80, 0, 255).astype(np.uint8),
                           cfg.MODEL.IMG_SIZE)
    assert frechet_distance(own, shifted) > 1e-3
    assert age_fidelity([10, 20, 30], [10, 20, 30]) == {"mae": 0.0, "pearson_r": 1.0,
                                                          "bias": 0.0}
    worse = age_fidelity([10, 20, 30], [14, 18, 40])
    assert worse["mae"] == pytest.approx(16 / 3) and worse["pearson_r"] < 1


# ------------------------------------------------------------------------------ train_gan.py


@pytest.fixture(scope="module")
def csv_faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    images, labels, _ = random_faces()
    for i, image in enumerate(images):
        cv2.imwrite(str(root / f"f{i}.png"), image)
    pd.DataFrame({"path": [f"f{i}.png" for i in range(N_FACES)], "age": labels[:, 0],
                  "gender": labels[:, 1].astype(int)}).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


class OneFace(torch.nn.Module):
    """A collapsed external generator: the same grey face whatever the latent."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], 3, 32, 32)


def test_gan_quality_scores_equal_sized_sets_and_flags_a_collapsed_generator(
        gan_checkpoint, teacher, csv_faces, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the real faces' cache
    gan_quality = load_script("gan_quality").main
    common = ["--teacher", str(teacher), "--data", f"csv:{csv_faces}", "--split", "all",
              "--n", "16", "--device", "cpu"]
    assert gan_quality(["--generator", str(gan_checkpoint), *common,
                        "--json", str(tmp_path / "own.json")]) == 0
    own = json.loads((tmp_path / "own.json").read_text())
    assert own["n_real"] == own["n_generated"] == 16 and own["frechet_n"] == 8
    assert own["frechet"] > 0 and own["frechet_real_halves"] > 0 and own["spread_ratio"] > 0
    assert -1 <= own["age_pearson_r"] <= 1 and own["age_mae"] >= 0
    # how far the generator was trained travels with its scores (the fixture: 2 steps, 1 s)
    assert own["generator_steps"] == 2 and own["generator_minutes"] == 0.0
    collapsed = tmp_path / "one_face.ts"
    torch.jit.script(OneFace()).save(str(collapsed))
    assert gan_quality(["--generator", str(collapsed), "--z-dim", "4", *common,
                        "--json", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["spread_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert "age_mae" not in one  # unconditional: no conditioning age to follow
    assert "generator_steps" not in one  # a TorchScript file does not say how it was trained


def test_train_gan_resume_continues_from_the_saved_step(csv_faces, tmp_path):
    train_gan = load_script("train_gan").main

    def run(out, *extra):
        args = ["--device", "cpu", *TINY, "DATA.DATASET", "csv", "DATA.ROOT", str(csv_faces),
                "DATA.CACHE_DIR", str(tmp_path / "cache"), "DATA.NUM_WORKERS", "1",
                "OUTPUT_DIR", str(out), "TRAIN.LOG_STEPS", "1", "TRAIN.SAMPLE_STEPS", "2",
                "TRAIN.SAMPLES_PER_DECADE", "2", *extra]
        assert train_gan(args) == 0

    run(tmp_path / "straight", "TRAIN.STEPS", "3")
    run(tmp_path / "split", "TRAIN.STEPS", "2")
    assert load_checkpoint(tmp_path / "split" / "last.pth")["step"] == 2
    with open(tmp_path / "split" / "metrics.csv", "a") as handle:  # logged, then killed
        handle.write("3,9,9,9,9\n")
    assert train_gan(["--resume", str(tmp_path / "split"), "--device", "cpu",
                      "TRAIN.STEPS", "3"]) == 0
    resumed = load_checkpoint(tmp_path / "split" / "last.pth")
    straight = load_checkpoint(tmp_path / "straight" / "last.pth")
    assert resumed["step"] == straight["step"] == 3
    for key in ("model", "generator", "discriminator"):  # bit for bit an uninterrupted run
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name}"
    metrics = pd.read_csv(tmp_path / "split" / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3] and (metrics["images_per_s"] > 0).all()
    grids = sorted(p.name for p in (tmp_path / "split" / "samples").glob("*.png"))
    assert grids == ["step_0000002.png", "step_0000003.png"]
    grid = cv2.imread(str(tmp_path / "split" / "samples" / grids[0]))
    assert grid.shape == (10 * 34, 2 * 34, 3)  # one row per age decade


@pytest.mark.parametrize("key,value", [("MODEL.RESOLUTION", "48"), ("TRAIN.LOSS", "wgan"),
                                       ("TRAIN.DIFFAUG", "cutout"), ("MODEL.AGE_BINS", "1"),
                                       ("MODEL.D_NORM", "layer"),
                                       ("MODEL.NOPE", "1")])
def test_gan_config_refuses_bad_values_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        tiny_cfg(key, value)
