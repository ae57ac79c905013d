"""Batches that mix real and synthetic faces at a fixed ratio (DATA.SYNTHETIC.RATIO).

Indices refer to the concatenation real + synthetic (`ConcatDataset([real, synthetic])`):
0..n_real-1 are real faces, n_real.. synthetic ones. Every batch holds exactly
round(ratio * batch_size) synthetic images; an epoch is as many steps as a real-only epoch, so
schedules, checkpoints and the number of real images seen stay comparable across ratios.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def _permutation(n: int, *seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed)
                                                  .generate_state(1, np.uint64)[0] >> 1))
    return torch.randperm(n, generator=generator).numpy()


class MixedBatchSampler(Sampler[list[int]]):
    """Batch sampler over real + synthetic images, a pure function of (seed, epoch).

    Real images: one shuffled pass per epoch, batch_size - round(ratio * batch_size) per step.
    Synthetic images: round(ratio * batch_size) per step from successive shuffled passes over the
    synthetic set (as many as the epoch needs, each seeded by (seed, epoch, pass)), so a small
    synthetic set repeats and a large one is sampled without repetition within an epoch.
    `start` resumes mid-epoch at that step; rank/world_size give each process its contiguous
    share of both parts (the ratio then holds per process when it divides evenly).
    """

    def __init__(self, n_real: int, n_synth: int, batch_size: int, ratio: float, seed: int,
                 epoch: int, start: int = 0, steps: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio = {ratio}: expected a value in [0, 1]")
        self.n_synth_per_batch = round(ratio * batch_size)
        self.n_real_per_batch = batch_size - self.n_synth_per_batch
        if self.n_synth_per_batch and n_synth < 1:
            raise ValueError(f"ratio {ratio} needs synthetic images, but there are none")
        if self.n_real_per_batch > n_real:
            raise ValueError(f"{self.n_real_per_batch} real images per batch, only {n_real}")
        self.n_real, self.n_synth, self.batch_size = n_real, n_synth, batch_size
        self.seed, self.epoch, self.start = seed, epoch, start
        # The epoch is a real epoch's length (synthetic-only with no real set: a synthetic one).
        default_steps = max(1, (n_real or n_synth) // batch_size)
        self.steps = default_steps if steps is None else steps
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _synthetic_order(self) -> np.ndarray:
        needed = self.steps * self.n_synth_per_batch
        if not needed:
            return np.empty(0, dtype=np.int64)
        passes = -(-needed // self.n_synth)
        return np.concatenate([_permutation(self.n_synth, self.seed, self.epoch, 1, k)
                               for k in range(passes)])

    def _share(self, part: np.ndarray) -> list[int]:
        first = len(part) * self.rank // self.world_size
        end = len(part) * (self.rank + 1) // self.world_size
        return part[first:end].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        real = (_permutation(self.n_real, self.seed, self.epoch, 0) if self.n_real_per_batch
                else np.empty(0, dtype=np.int64))
        synthetic = self._synthetic_order() + self.n_real
        nr, ns = self.n_real_per_batch, self.n_synth_per_batch
        for step in range(self.start, self.steps):
            # Real images wrap around only if an explicit `steps` asks for more than one pass.
            real_part = np.take(real, np.arange(step * nr, (step + 1) * nr), mode="wrap")
            yield self._share(real_part) + self._share(synthetic[step * ns:(step + 1) * ns])
