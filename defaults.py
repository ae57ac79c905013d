"""The whole configuration tree (single source of truth), one comment per key.

A config file (configs/*.yaml) overrides some of these keys, then `KEY VALUE` pairs on the command
line override the file. Keys that are not here are refused, as are values of another type.
"""

from yacs.config import CfgNode as CN

_C = CN()

# Folder of a run: config.yaml, checkpoints, metrics.csv, predictions, tensorboard logs.
_C.OUTPUT_DIR = "output/run"

# ---------------------------------------------------------------------------------------------
_C.DATA = CN()
# Dataset reader: utkface | appa_real | fgnet | csv (see age_estimation/data/datasets.py).
_C.DATA.DATASET = "utkface"
# Dataset folder (csv: the CSV file). Empty = <AGE_ESTIMATION_DATA or ../shared/data>/<DATASET>.
_C.DATA.ROOT = ""
# Which label is the target where a dataset has two (APPA-REAL): apparent | real.
_C.DATA.LABEL = "apparent"
# Optional file of image names to drop (APPA-REAL's ignore list, as in yu4u's repository).
_C.DATA.EXCLUDE = ""
# Share of the train split used for training, stratified by age and seeded by TRAIN.SEED; (0, 1].
_C.DATA.FRACTION = 1.0
# Where decoded images are cached (uint8 memmaps keyed by dataset + size). Empty = ~/.cache/...
_C.DATA.CACHE_DIR = ""
# What to do with an image that cannot be decoded: skip (counted and logged) | error.
_C.DATA.ON_BAD_IMAGE = "skip"
# DataLoader worker processes (0 = load in the main process); -1 = auto: 0 when training on the
# CPU (the model's threads already use every core, and workers competing with them made the loop
# slower: scripts/bench_train.py), min(8, cores) with a GPU.
_C.DATA.NUM_WORKERS = -1

# Synthetic faces mixed into training batches (scripts/synthesize.py output); never validated on.
_C.DATA.SYNTHETIC = CN()
# A synthesize.py output folder or its labels.csv (a csv dataset, all rows used). Empty = none.
_C.DATA.SYNTHETIC.ROOT = ""
# Synthetic share of each training batch, in [0, 1] (1.0 = synthetic only); the epoch keeps the
# real train split's number of steps.
_C.DATA.SYNTHETIC.RATIO = 0.0
# Sample synthetic training targets from N(age, teacher std) (the age_std column).
_C.DATA.SYNTHETIC.LABEL_JITTER = False

# ---------------------------------------------------------------------------------------------
_C.AUG = CN()
# Training augmentation: none | basic (flip, small shift/scale/rotate, colour) | strong (+ more).
_C.AUG.POLICY = "basic"
# Sample the training target from N(age, age_std) where the dataset gives age_std (APPA-REAL).
_C.AUG.LABEL_JITTER = True
# Perturbations applied before the policy, one drawn per image: KIND (levels 1-5), KIND:LEVEL or
# KIND:LOW-HIGH, e.g. ["blur", "jpeg:1-3"] (kinds: age_estimation/data/perturbations.py).
_C.AUG.PERTURB = []
# Probability that an image gets one of AUG.PERTURB.
_C.AUG.PERTURB_P = 0.5
# Mixup (Zhang et al. 2018): each batch is blended with a shuffled copy of itself, weight
# lam ~ Beta(alpha, alpha), and the loss is lam x loss(ages) + (1 - lam) x loss(shuffled ages)
# for any head. 0 = off; e.g. 0.2. Not with MODEL.FDS (its statistics need one age per image).
_C.AUG.MIXUP_ALPHA = 0.0

# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Any timm model name (resnet18, resnet50, efficientnet_b0, mobilenetv3_large_100, ...).
_C.MODEL.BACKBONE = "resnet18"
# Initial backbone weights: none | hub (timm's pretrained weights) | path to a local weights file.
_C.MODEL.PRETRAINED = "none"
# Square input resolution in pixels (images are cached at this size).
_C.MODEL.IMG_SIZE = 112
# Dropout rate on the pooled features, before the head (enables MC-Dropout at test time).
_C.MODEL.DROPOUT = 0.0
# Formulation: l1 | l2 | dex | residual_dex | ordinal | gaussian | laplace.
_C.MODEL.HEAD = "dex"
# Largest age class for the classification heads (dex, residual_dex, ordinal): ages 0..MAX_AGE.
_C.MODEL.MAX_AGE = 100
# Label smoothing of the dex / residual_dex targets (0 = none).
_C.MODEL.LABEL_SMOOTHING = 0.0
# Width in years of the dldl head's Gaussian label distribution around the true age.
_C.MODEL.DLDL_SIGMA = 2.0
# Weight of the dldl head's L1 term on the softmax expectation relative to its KL divergence.
_C.MODEL.DLDL_L1_WEIGHT = 1.0
# Ordinal head variant: coral | corn.
_C.MODEL.ORDINAL = "coral"
# Variance of the gaussian / laplace heads: hetero (predicted per image) | homo (one parameter).
_C.MODEL.VARIANCE = "hetero"
# Weight of the residual (L1) term of residual_dex relative to its cross-entropy.
_C.MODEL.RESIDUAL_WEIGHT = 1.0
# Record attributes learned as extra classification tasks (e.g. [gender, race]); [] = age only.
_C.MODEL.ATTRIBUTES = []

# Feature distribution smoothing (Yang et al., ICML 2021) on the pooled features, training only.
_C.MODEL.FDS = CN()
# Recalibrate training features with per-age statistics smoothed across neighbouring ages.
_C.MODEL.FDS.ENABLED = False
# First epoch (0-based) whose features are recalibrated, with the statistics of the epoch before.
_C.MODEL.FDS.START_EPOCH = 1
# Weight of the previous epochs' statistics when an epoch's are folded in, in [0, 1).
_C.MODEL.FDS.MOMENTUM = 0.9
# Smoothing kernel over neighbouring ages: gaussian | triang | laplace.
_C.MODEL.FDS.KERNEL = "gaussian"
# Kernel size in ages (odd).
_C.MODEL.FDS.KS = 5
# Kernel width in years (gaussian, laplace).
_C.MODEL.FDS.SIGMA = 2.0

# ---------------------------------------------------------------------------------------------
_C.LOSS = CN()
# Per-image weights of the age loss from the train ages, mean 1: none | inverse | sqrt_inverse
# (1 / n, 1 / sqrt(n) of the integer age) | lds | sqrt_lds (1 / label-distribution-smoothed n or
# sqrt(n), Yang et al., ICML 2021).
_C.LOSS.REWEIGHT = "none"
# LDS kernel over neighbouring ages: gaussian | triang | laplace.
_C.LOSS.LDS_KERNEL = "gaussian"
# LDS kernel size in ages (odd).
_C.LOSS.LDS_KS = 5
# LDS kernel width in years (gaussian, laplace).
_C.LOSS.LDS_SIGMA = 2.0
# Weight of each MODEL.ATTRIBUTES cross-entropy relative to the age loss ([] = all 1.0).
_C.LOSS.ATTRIBUTE_WEIGHTS = []
# Knowledge distillation: a teacher's per-image predictions on the train split (test.py
# --split train --out FILE, e.g. with --ensemble; its predictive mean is used, whatever
# --point), matched by image id; "" = off.
_C.LOSS.DISTILL_PREDICTIONS = ""
# The age loss becomes (1 - W) x loss(true age) + W x loss(teacher's predicted age), for any head.
_C.LOSS.DISTILL_WEIGHT = 0.5

# ---------------------------------------------------------------------------------------------
_C.SAMPLER = CN()
# Draw each epoch's images with replacement, with probability 1 / (train images of their integer
# age): a flat age histogram. The epoch keeps the train split's length.
_C.SAMPLER.BALANCED = False

# ---------------------------------------------------------------------------------------------
_C.TRAIN = CN()
# Number of epochs.
_C.TRAIN.EPOCHS = 30
# Images per optimisation step, over all processes (torchrun: each of N takes BATCH_SIZE / N).
_C.TRAIN.BATCH_SIZE = 64
# Peak learning rate (after warmup).
_C.TRAIN.LR = 2e-3
# Optimizer: adamw | sgd (momentum 0.9, nesterov).
_C.TRAIN.OPTIMIZER = "adamw"
# Weight decay.
_C.TRAIN.WEIGHT_DECAY = 0.05
# One fused kernel for the optimizer update on CPU and CUDA (PyTorch's default there loops over
# the parameter tensors: 7x slower for ResNet-18 on a 2-core CPU). A resumed run keeps the
# setting it started with (the optimizer's state stores it).
_C.TRAIN.FUSED_OPTIMIZER = True
# Convolutions whose output map has at most this many pixels train as one bf16 matrix product
# on the CPU (age_estimation/models/matmul_conv.py: oneDNN is slow on small maps; ResNet-18's
# training loop 1.35x faster at 96 px on an AMX CPU, results/bench/train*.md): -1 = auto (16 on
# a CPU with AMX, off elsewhere), 0 = off, N = N on any CPU. Never on a GPU or at inference.
_C.TRAIN.MATMUL_CONV_MAX_AREA = -1
# Progressive resizing: the first TRAIN.PROGRESSIVE_EPOCHS epochs train on each batch
# downsampled (antialiased bilinear) from MODEL.IMG_SIZE to this many pixels, at the smaller
# size's cost (96 from 112 px on a 2-core Zen 4: mean epoch 148 s, 0.78x of a 112 px one and
# the same as from a 96 px cache; metrics.csv of results/runs/release_progressive and
# release_96px); later epochs and every validation use MODEL.IMG_SIZE.
# 0 = off.
_C.TRAIN.PROGRESSIVE_SIZE = 0
# Epochs at TRAIN.PROGRESSIVE_SIZE, from the first; fewer than TRAIN.EPOCHS.
_C.TRAIN.PROGRESSIVE_EPOCHS = 0
# Learning-rate schedule: cosine | step (x0.1 at TRAIN.STEPS epochs).
_C.TRAIN.SCHEDULE = "cosine"
# Epochs at which the step schedule divides the learning rate by 10.
_C.TRAIN.STEPS = [20, 25]
# Linear warmup length in epochs (fractions allowed).
_C.TRAIN.WARMUP_EPOCHS = 1.0
# Seed of everything random (weights, data order, augmentation, subsets).
_C.TRAIN.SEED = 0
# bf16 autocast (training and evaluation) where the device computes bf16 natively (CPU with
# AVX-512-BF16 / AMX, CUDA with bf16); fp32 elsewhere, where emulated bf16 is ~10x slower
# (age_estimation/hardware.py). False: fp32 everywhere.
_C.TRAIN.AMP = True
# channels_last memory format (faster convolutions on CPU and tensor cores).
_C.TRAIN.CHANNELS_LAST = True
# Stop after this many steps per epoch (0 = full epochs); for smoke tests and benchmarks.
_C.TRAIN.MAX_STEPS_PER_EPOCH = 0
# Validate every N epochs (the last epoch is always validated).
_C.TRAIN.EVAL_EVERY = 1
# torch CPU threads (0 = torch's default).
_C.TRAIN.THREADS = 0
# Also write last.pth every N optimisation steps within an epoch (0 = only at epoch ends); a
# killed run then resumes mid-epoch, losing at most N steps (the epoch's time up to the
# checkpoint is kept, so metrics.csv's epoch_seconds still counts it).
_C.TRAIN.CHECKPOINT_STEPS = 0
# Exponential moving average of the weights (timm's ModelEmaV3 with warmup; 0 = off, e.g.
# 0.999): validation, best.pth and test.py use the averaged weights; checkpoints also keep the
# raw weights (`train_model`) that training resumes from.
_C.TRAIN.EMA_DECAY = 0.0
# On a NaN/inf loss: False = stop with an error naming the step (the last checkpoint is kept);
# True = skip that batch (no update), count it in metrics.csv and go on.
_C.TRAIN.SKIP_NONFINITE = False

# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Batch size at evaluation.
_C.TEST.BATCH_SIZE = 128


def get_cfg_defaults() -> CN:
    """A fresh copy of the default tree (callers may mutate it)."""
    return _C.clone()
