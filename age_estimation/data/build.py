"""From config to batches: records -> cache -> torch Dataset -> DataLoader."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from yacs.config import CfgNode

from age_estimation.data.cache import build_cache
from age_estimation.data.datasets import default_data_dir, read_dataset
from age_estimation.data.imbalance import BalancedSampler
from age_estimation.data.mixing import MixedBatchSampler
from age_estimation.data.records import Record
from age_estimation.data.sampling import stratified_fraction

logger = logging.getLogger(__name__)

# No OpenCV thread pool, in this process or in the DataLoader workers forked from it (torch
# already gives each worker one intra-op thread). Parallelism comes from the workers and the
# cache's thread pool. OpenCV would otherwise start a thread per core inside every worker (8
# concurrent runs on a 16-core GPU machine thrashed at a load average near 200), and changing
# the pool's size inside a forked worker after the parent used it deadlocks.
cv2.setNumThreads(0)


class AgeDataset(Dataset):
    """Cached uint8 faces + labels. Randomness (augmentation, label jitter) is drawn from a
    generator seeded by (seed, epoch, index), so a batch is the same whichever worker makes it
    and a resumed run sees exactly the data an uninterrupted one would.

    `index_offset` shifts the index used for that seed and returned as "index": the synthetic
    set, placed after the real one, gets its own augmentations and its own rows of the trainer's
    per-image tables (loss weights, attribute labels) instead of real image i's."""

    def __init__(self, records: list[Record], images: np.ndarray, transform=None,
                 label_jitter: bool = False, seed: int = 0, index_offset: int = 0) -> None:
        if len(records) != len(images):
            raise ValueError(f"{len(records)} records but {len(images)} cached images")
        self.records, self.images = records, images
        self.transform, self.label_jitter, self.seed = transform, label_jitter, seed
        self.index_offset = index_offset
        self.epoch = 0
        self.ages = np.array([r.age for r in records], dtype=np.float32)
        self.age_stds = np.array([r.age_std for r in records], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = np.asarray(self.images[index])
        age = float(self.ages[index])
        if self.transform is not None or self.label_jitter:
            rng = np.random.default_rng([self.seed, self.epoch, self.index_offset + index])
            if self.transform is not None:
                self.transform.set_random_seed(int(rng.integers(2**31)))
                image = self.transform(image=image)["image"]
            std = float(self.age_stds[index])
            if self.label_jitter and math.isfinite(std) and std > 0:
                age = max(0.0, age + std * float(rng.standard_normal()))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "age": torch.tensor(age, dtype=torch.float32),
            "age_std": torch.tensor(self.age_stds[index]),
            "index": torch.tensor(self.index_offset + index),
        }


def loader_workers(cfg: CfgNode) -> int:
    """DATA.NUM_WORKERS with -1 (auto) resolved: 0 on the CPU, where the training step's
    threads already occupy every core and workers would compete with them (measured by
    scripts/bench_train.py), min(8, cores) when a GPU does the compute."""
    if cfg.DATA.NUM_WORKERS >= 0:
        return cfg.DATA.NUM_WORKERS
    return min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def resolve_root(dataset: str, root: str) -> str:
    """DATA.ROOT, or the dataset's folder under the shared data directory when empty."""
    return root or str(default_data_dir() / dataset)


def load_split(cfg: CfgNode, split: str, dataset: str = "", root: str = "") -> tuple[
        list[Record], np.ndarray]:
    """Records and cached images of one split of `dataset` at `root` (default: the config's)."""
    if not dataset:
        dataset, root = cfg.DATA.DATASET, cfg.DATA.ROOT
    root = resolve_root(dataset, root)
    records = read_dataset(dataset, root, split, label=cfg.DATA.LABEL, exclude=cfg.DATA.EXCLUDE)
    if split == "train" and cfg.DATA.FRACTION < 1.0:
        total = len(records)
        records = stratified_fraction(records, cfg.DATA.FRACTION, cfg.TRAIN.SEED)
        logger.info("DATA.FRACTION %.3g: %d of %d training images", cfg.DATA.FRACTION,
                    len(records), total)
    if not records:
        raise ValueError(f"{dataset} at {root}: no images in split {split!r}")
    name = f"{dataset}-{Path(root).name}-{split}"
    images, records = build_cache(records, cfg.MODEL.IMG_SIZE, name, cfg.DATA.CACHE_DIR,
                                  cfg.DATA.ON_BAD_IMAGE,
                                  workers=max(1, loader_workers(cfg) or os.cpu_count() or 1))
    return records, images


def load_synthetic(cfg: CfgNode) -> tuple[list[Record], np.ndarray]:
    """Records and cached images of DATA.SYNTHETIC.ROOT (a synthesize.py folder or its CSV)."""
    root = Path(cfg.DATA.SYNTHETIC.ROOT)
    if root.is_dir():
        root = root / "labels.csv"
    return load_split(cfg, "all", "csv", str(root))


def steps_per_epoch(cfg: CfgNode, n: int) -> int:
    """Optimisation steps in an epoch of `n` images: full global batches (one short batch when
    the set is smaller than a batch), capped by TRAIN.MAX_STEPS_PER_EPOCH."""
    steps = max(1, n // cfg.TRAIN.BATCH_SIZE)
    return min(steps, cfg.TRAIN.MAX_STEPS_PER_EPOCH) if cfg.TRAIN.MAX_STEPS_PER_EPOCH else steps


class EpochBatchSampler(Sampler[list[int]]):
    """The epoch's shuffled order, a function of (seed, epoch) only, cut into global batches of
    `batch_size`; yields this rank's contiguous share of each batch, from batch `start` on.

    Plays the part of torch's DistributedSampler, but a step's global batch is the same images
    whatever the number of processes (so TRAIN.BATCH_SIZE means the same thing with 1 or N), and
    a resumed epoch starts at batch `start` without decoding or augmenting the skipped images.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, steps: int,
                 start: int = 0, rank: int = 0, world_size: int = 1,
                 weights: np.ndarray | None = None) -> None:
        self.n, self.batch_size, self.steps, self.start = n, min(batch_size, n), steps, start
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        # Sampling weights (SAMPLER.BALANCED): draw the epoch with replacement instead.
        self.balanced = None if weights is None else BalancedSampler(weights, seed, epoch)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        if self.balanced is not None:
            order = self.balanced.order()
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        for step in range(self.start, self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            first = len(batch) * self.rank // self.world_size
            end = len(batch) * (self.rank + 1) // self.world_size
            yield batch[first:end].tolist()


def train_loader(cfg: CfgNode, dataset: AgeDataset, epoch: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, weights: np.ndarray | None = None,
                 synthetic: AgeDataset | None = None) -> DataLoader:
    """This rank's batches of `epoch` from step `start_step`: the order depends on nothing but
    (TRAIN.SEED, epoch), so a run resumed mid-epoch sees exactly the batches it would have.

    With DATA.SYNTHETIC.RATIO > 0, batches mix `dataset` (real) and `synthetic` at that ratio,
    over as many steps as a real-only epoch."""
    dataset.set_epoch(epoch)
    steps = steps_per_epoch(cfg, len(dataset))
    sampler: Sampler[list[int]]
    data: Dataset = dataset
    if cfg.DATA.SYNTHETIC.RATIO > 0:
        if synthetic is None:
            raise ValueError("DATA.SYNTHETIC.RATIO > 0 but no synthetic dataset was given")
        synthetic.set_epoch(epoch)
        sampler = MixedBatchSampler(len(dataset), len(synthetic), cfg.TRAIN.BATCH_SIZE,
                                    cfg.DATA.SYNTHETIC.RATIO, cfg.TRAIN.SEED, epoch, start_step,
                                    steps, rank, world_size)
        data = ConcatDataset([dataset, synthetic])
    else:
        sampler = EpochBatchSampler(len(dataset), cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.SEED, epoch,
                                    steps, start_step, rank, world_size, weights)
    # An explicit generator for the workers' base seed: otherwise the DataLoader draws it from
    # torch's global RNG, which dropout uses, and a resumed run's dropout masks would shift.
    generator = torch.Generator().manual_seed(cfg.TRAIN.SEED * 100_003 + epoch)
    return DataLoader(data, batch_sampler=sampler, generator=generator,
                      num_workers=loader_workers(cfg), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def eval_loader(cfg: CfgNode, records: list[Record], images: np.ndarray) -> DataLoader:
    # A fixed generator keeps validation from drawing on torch's global RNG (see train_loader).
    return DataLoader(AgeDataset(records, images), batch_size=cfg.TEST.BATCH_SIZE,
                      shuffle=False, num_workers=loader_workers(cfg),
                      generator=torch.Generator().manual_seed(0))
