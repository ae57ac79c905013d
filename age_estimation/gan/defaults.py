"""The GAN's own config tree (kept apart from the age model's defaults.py), one comment per key.

`scripts/train_gan.py --cfg configs/gan/*.yaml KEY VALUE ...` merges a file and overrides into
these defaults the same way the main config does (`_BASE_` inheritance, unknown keys refused).
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

from age_estimation.config import ConfigError, config_from_string, merge_config

_C = CN()

# Run folder: config.yaml, last.pth (atomic), metrics.csv, train.log, samples/ (grids per decade).
# Outside the repository by default: the sample grids show dataset-like faces.
_C.OUTPUT_DIR = "../runs/gan/run"

# ---------------------------------------------------------------------------------------------
_C.DATA = CN()
# Dataset reader the real faces come from (see age_estimation/data/datasets.py).
_C.DATA.DATASET = "utkface"
# Dataset folder; empty = <AGE_ESTIMATION_DATA or ../shared/data>/<DATASET>.
_C.DATA.ROOT = ""
# Split the GAN learns from (never the test split, which scores the age models).
_C.DATA.SPLIT = "train"
# Image cache folder shared with the age models (uint8 memmaps); empty = ~/.cache/age_estimation.
_C.DATA.CACHE_DIR = ""
# Threads decoding the images into the cache the first time.
_C.DATA.NUM_WORKERS = 2
# Random horizontal flips of the real faces (faces are mirror-symmetric; doubles the data).
_C.DATA.FLIP = True

# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Output resolution in pixels: 32 | 64 | 128.
_C.MODEL.RESOLUTION = 64
# Latent size.
_C.MODEL.Z_DIM = 128
# Channels of the generator's last block (blocks closer to 4x4 have up to 8x as many).
_C.MODEL.G_WIDTH = 64
# Channels of the discriminator's first block (doubling per downsampling, capped at 8x).
_C.MODEL.D_WIDTH = 64
# Size of the condition embedding fed to the generator's conditional batch norms.
_C.MODEL.EMBED_DIM = 128
# Ages are divided by this before embedding (clamped to [0, 1]).
_C.MODEL.MAX_AGE = 100.0
# Age embedding: 0 = an MLP of the normalised age; N > 1 = N learnt bin vectors over
# [0, MAX_AGE], linearly interpolated (smooth in age, no rounding).
_C.MODEL.AGE_BINS = 0
# Record attributes also conditioned on, e.g. ["gender", "race"] for UTKFace.
_C.MODEL.ATTRIBUTES = []
# Discriminator conditioning: projection (Miyato & Koyama 2018) | input (label maps as channels).
_C.MODEL.D_COND = "projection"
# Discriminator normalisation: spectral (SN-GAN: every layer 1-Lipschitz) | batch (DCGAN: batch
# norm after the inner convolutions; real and fake batches normalised separately) | none.
_C.MODEL.D_NORM = "spectral"

# ---------------------------------------------------------------------------------------------
_C.TRAIN = CN()
# Seed of the data order, flips, latents and augmentation (each a pure function of seed, step).
_C.TRAIN.SEED = 0
# Images per step.
_C.TRAIN.BATCH_SIZE = 64
# Total generator steps (training also stops at TRAIN.MINUTES).
_C.TRAIN.STEPS = 100000
# Training time budget in minutes, counted over resumes; 0 = no limit.
_C.TRAIN.MINUTES = 0.0
# Adam learning rates of the generator and the discriminator.
_C.TRAIN.LR_G = 2e-4
_C.TRAIN.LR_D = 2e-4
# Adam betas (beta1 = 0 as usual for GANs with spectral norm).
_C.TRAIN.BETAS = (0.0, 0.99)
# Adversarial loss: hinge | nonsat (non-saturating logistic).
_C.TRAIN.LOSS = "hinge"
# Discriminator updates per generator update.
_C.TRAIN.D_STEPS = 1
# Decay of the generator's exponential moving average (the EMA generator is the one sampled).
_C.TRAIN.EMA_DECAY = 0.999
# DiffAugment (Zhao et al. 2020) applied to real and fake images before D: comma-separated
# subset of translation,color; "" = off. Helps D not memorise a small dataset.
_C.TRAIN.DIFFAUG = "translation,color"
# bf16 autocast on a CUDA GPU with bf16 (ignored on the CPU, where it is slower for these
# small convs).
_C.TRAIN.AMP = True
# Torch CPU threads (0 = torch's default).
_C.TRAIN.THREADS = 0
# Steps between log lines / metrics.csv rows, checkpoints, and sample grids.
_C.TRAIN.LOG_STEPS = 50
_C.TRAIN.CHECKPOINT_STEPS = 1000
_C.TRAIN.SAMPLE_STEPS = 2000
# Columns (fixed latents) per age decade in a sample grid.
_C.TRAIN.SAMPLES_PER_DECADE = 8

_CHOICES = {"MODEL.D_COND": ("projection", "input"), "MODEL.D_NORM": ("spectral", "batch", "none"),
            "TRAIN.LOSS": ("hinge", "nonsat")}
RESOLUTIONS = (32, 64, 128)
DIFFAUG_POLICIES = ("translation", "color")


def get_gan_defaults() -> CN:
    return _C.clone()


def validate_gan(cfg: CN) -> None:
    """Refuse values of the right type that mean nothing, naming the key."""
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        if cfg[section][name] not in allowed:
            raise ConfigError(f"{key} = {cfg[section][name]!r}: expected one of "
                              f"{', '.join(allowed)}")
    if cfg.MODEL.RESOLUTION not in RESOLUTIONS:
        raise ConfigError(f"MODEL.RESOLUTION = {cfg.MODEL.RESOLUTION}: expected one of "
                          f"{', '.join(map(str, RESOLUTIONS))}")
    if cfg.MODEL.AGE_BINS == 1 or cfg.MODEL.AGE_BINS < 0:
        raise ConfigError(f"MODEL.AGE_BINS = {cfg.MODEL.AGE_BINS}: expected 0 (MLP) or >= 2")
    for policy in filter(None, cfg.TRAIN.DIFFAUG.split(",")):
        if policy.strip() not in DIFFAUG_POLICIES:
            raise ConfigError(f"TRAIN.DIFFAUG: unknown policy {policy!r}; expected a subset of "
                              f"{','.join(DIFFAUG_POLICIES)}")
    if not 0.0 <= cfg.TRAIN.EMA_DECAY < 1.0:
        raise ConfigError(f"TRAIN.EMA_DECAY = {cfg.TRAIN.EMA_DECAY}: expected [0, 1)")
    for key in ("BATCH_SIZE", "STEPS", "D_STEPS", "LOG_STEPS", "CHECKPOINT_STEPS",
                "SAMPLE_STEPS", "SAMPLES_PER_DECADE"):
        if cfg.TRAIN[key] < 1:
            raise ConfigError(f"TRAIN.{key} = {cfg.TRAIN[key]}: expected a positive value")


def load_gan_config(cfg_file: str | None = None, opts: list[str] | None = None,
                    base: CN | None = None) -> CN:
    """Defaults (or `base`, e.g. a resumed run's config), the YAML file, then `KEY VALUE`
    overrides; validated and frozen."""
    cfg = base.clone() if base is not None else get_gan_defaults()
    return merge_config(cfg, cfg_file, opts, validate_gan)


def gan_config_from_string(text: str) -> CN:
    """The config saved inside a GAN checkpoint (yaml.safe_load via yacs; missing keys default)."""
    return config_from_string(text, get_gan_defaults())
