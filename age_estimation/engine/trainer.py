"""The training loop: AMP, channels_last, DDP, mixup, an EMA of the weights, per-epoch
validation, atomic checkpoints (every epoch and optionally every N steps) and exact resume."""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from yacs.config import CfgNode

from age_estimation.config import ConfigError
from age_estimation.data.build import (
    AgeDataset,
    load_split,
    load_synthetic,
    steps_per_epoch,
    train_loader,
)
from age_estimation.data.imbalance import FeatureSmoothing, age_histogram, sample_weights
from age_estimation.data.records import Record
from age_estimation.data.transforms import build_train_transform
from age_estimation.engine.checkpoint import load_checkpoint, save_checkpoint
from age_estimation.engine.evaluation import predict_records
from age_estimation.hardware import amp_enabled, precision_name
from age_estimation.models.attributes import attribute_vocab, encode_attributes
from age_estimation.models.matmul_conv import resolve_max_area, use_matmul_convs
from age_estimation.models.model import AgeModel

logger = logging.getLogger(__name__)

METRICS_COLUMNS = ("epoch", "train_loss", "valid_mae", "lr", "epoch_seconds", "images_per_s",
                   "skipped_nonfinite")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message names the epoch and step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed() -> tuple[int, int]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on
    CPU. Returns (rank, world size); (0, 1) for a plain single-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def rng_state() -> dict:
    """Every global RNG this process draws from (torch CPU and CUDA for dropout; numpy and
    Python for completeness), as plain data that a weights_only load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if state.get("numpy") is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def build_optimizer(cfg: CfgNode, model: torch.nn.Module, device: torch.device
                    ) -> torch.optim.Optimizer:
    """timm's AdamW or SGD (momentum 0.9, nesterov; no weight decay on biases and norms), fused
    into one kernel per step on CPU and CUDA when TRAIN.FUSED_OPTIMIZER."""
    fused = bool(cfg.TRAIN.FUSED_OPTIMIZER) and device.type in ("cpu", "cuda")
    return create_optimizer_v2(
        model, opt=cfg.TRAIN.OPTIMIZER, lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WEIGHT_DECAY,
        fused=fused, **({"momentum": 0.9, "nesterov": True} if cfg.TRAIN.OPTIMIZER == "sgd"
                        else {}))


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Warmup then cosine or step decay, updated every optimisation step."""
    warmup = round(cfg.TRAIN.WARMUP_EPOCHS * steps_per_epoch)
    common = {"warmup_t": warmup, "warmup_lr_init": cfg.TRAIN.LR * 0.01, "t_in_epochs": False}
    if cfg.TRAIN.SCHEDULE == "cosine":
        return CosineLRScheduler(optimizer, t_initial=cfg.TRAIN.EPOCHS * steps_per_epoch,
                                 lr_min=cfg.TRAIN.LR * 0.01, **common)
    return MultiStepLRScheduler(optimizer, decay_t=[s * steps_per_epoch for s in cfg.TRAIN.STEPS],
                                decay_rate=0.1, **common)


def mixup(images: torch.Tensor, alpha: float, seed: Sequence[int]
          ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Mixup of a batch: (images blended with a shuffled copy of the batch, as floats in [0, 1]
    (what AgeModel takes besides uint8), the originals' weight lam ~ Beta(alpha, alpha), the
    shuffle). A pure function of `seed`, so a resumed epoch mixes the same pairs."""
    rng = np.random.default_rng(list(seed))
    lam = float(rng.beta(alpha, alpha))
    order = torch.from_numpy(rng.permutation(len(images))).to(images.device)
    pixels = images.float() if images.dtype == torch.uint8 else images * 255.0
    return (pixels * lam + pixels[order] * (1.0 - lam)) / 255.0, lam, order


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """A batch resized to size x size pixels (antialiased bilinear), for progressive resizing.
    uint8 stays uint8 on the CPU, where torch has a fast uint8 kernel; elsewhere it becomes
    float in [0, 1], which AgeModel and mixup also take."""
    if images.dtype == torch.uint8 and images.device.type != "cpu":
        images = images.float() / 255.0
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                           antialias=True, align_corners=False)


def teacher_ages(path: str | Path, records: list[Record]) -> np.ndarray:
    """A teacher's predicted age for each record, from a test.py predictions CSV: its predictive
    mean (column `mean`, whatever `--point` made `pred`: a whole-year median would discard what
    the teacher knows between years; `pred` in files written before test.py had `mean`). Every
    record must be there, or the error names how many are missing and one id."""
    try:
        table = pd.read_csv(path, usecols=lambda column: column in {"id", "pred", "mean"})
    except (OSError, ValueError) as err:
        raise ConfigError(f"LOSS.DISTILL_PREDICTIONS = {path}: {err}") from None
    column = "mean" if "mean" in table.columns else "pred"
    if not {"id", column} <= set(table.columns):
        raise ConfigError(f"LOSS.DISTILL_PREDICTIONS = {path}: expected test.py's columns id "
                          f"and mean (or pred), found {', '.join(table.columns) or 'none'}")
    predicted = table.drop_duplicates("id").set_index("id")[column]
    ids = [r.id for r in records]
    found = predicted.reindex(ids).to_numpy(dtype=np.float64)
    missing = [i for i, value in zip(ids, found) if not math.isfinite(value)]
    if missing:
        raise ConfigError(f"LOSS.DISTILL_PREDICTIONS = {path}: no finite prediction for "
                          f"{len(missing)} of {len(ids)} training images (e.g. {missing[0]!r}); "
                          f"make it with test.py --split train on the same data")
    return found


class Trainer:
    """Builds everything from a config and trains; `Trainer(cfg).fit()`.

    Under torchrun every process trains on its share of each global batch (DDP); rank 0 alone
    validates, logs, and writes checkpoints, metrics and tensorboard files.
    """

    def __init__(self, cfg: CfgNode, resume: str = "") -> None:
        self.cfg = cfg
        self.out = Path(cfg.OUTPUT_DIR)
        self.rank, self.world_size = init_distributed()
        if cfg.TRAIN.BATCH_SIZE % self.world_size:
            raise ConfigError(f"TRAIN.BATCH_SIZE = {cfg.TRAIN.BATCH_SIZE} is the global batch: it "
                             f"must be divisible by the {self.world_size} processes")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        if cfg.TRAIN.THREADS:
            torch.set_num_threads(cfg.TRAIN.THREADS)
        seed_everything(cfg.TRAIN.SEED)
        # One process per machine (local rank 0) decodes the images into its image cache while
        # the others wait, then they read that cache instead of decoding it again.
        builder = self.world_size == 1 or int(os.environ.get("LOCAL_RANK", "0")) == 0
        if not builder:
            dist.barrier()
        self.train_records, train_images = load_split(cfg, "train")
        self.valid_records, self.valid_images = load_split(cfg, "valid")
        synthetic_records, synthetic_images = (load_synthetic(cfg) if cfg.DATA.SYNTHETIC.RATIO > 0
                                               else ([], None))
        if self.world_size > 1 and builder:
            dist.barrier()
        transform = build_train_transform(cfg.AUG.POLICY, cfg.AUG.PERTURB, cfg.AUG.PERTURB_P,
                                          donors=train_images)
        self.train_set = AgeDataset(self.train_records, train_images, transform,
                                    label_jitter=cfg.AUG.LABEL_JITTER, seed=cfg.TRAIN.SEED)
        # Synthetic faces come after the real ones: indices len(train_set).. in every per-image
        # table below. They are trained on only; validation stays on the real valid split.
        self.synthetic_set = None if synthetic_images is None else AgeDataset(
            synthetic_records, synthetic_images, transform,
            label_jitter=cfg.DATA.SYNTHETIC.LABEL_JITTER, seed=cfg.TRAIN.SEED,
            index_offset=len(self.train_set))
        self.steps_per_epoch = steps_per_epoch(cfg, len(self.train_set))
        ages = (self.train_set.ages if self.synthetic_set is None
                else np.concatenate([self.train_set.ages, self.synthetic_set.ages]))
        self.loss_weights = None
        if cfg.LOSS.REWEIGHT != "none":
            self.loss_weights = torch.from_numpy(sample_weights(
                ages, cfg.LOSS.REWEIGHT, cfg.LOSS.LDS_KERNEL, cfg.LOSS.LDS_KS,
                cfg.LOSS.LDS_SIGMA)).to(self.device)
        self.sampling_weights = sample_weights(ages, "inverse") if cfg.SAMPLER.BALANCED else None
        self.teacher_ages = None
        if cfg.LOSS.DISTILL_PREDICTIONS:
            # Synthetic faces (after the real ones) keep their own, already teacher-made label.
            teacher = teacher_ages(cfg.LOSS.DISTILL_PREDICTIONS, self.train_records)
            self.teacher_ages = torch.from_numpy(np.concatenate(
                [teacher, ages[len(teacher):]]).astype(np.float32)).to(self.device)
        # Classes come from real records only, so a generator's odd label adds no class.
        self.attribute_vocab = attribute_vocab(self.train_records, cfg.MODEL.ATTRIBUTES)
        self.attribute_labels = encode_attributes(self.train_records + synthetic_records,
                                                  self.attribute_vocab).to(self.device)
        self.model = AgeModel(cfg, self.attribute_vocab).to(self.device)
        max_area = resolve_max_area(cfg.TRAIN.MATMUL_CONV_MAX_AREA, self.device)
        if use_matmul_convs(self.model, max_area):
            logger.info("convolutions with output maps of at most %d pixels train as matrix "
                        "products (TRAIN.MATMUL_CONV_MAX_AREA)", max_area)
        if cfg.TRAIN.CHANNELS_LAST:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp = amp_enabled(cfg.TRAIN.AMP, self.device)
        logger.info("precision: %s", precision_name(cfg.TRAIN.AMP, self.device))
        self.net: torch.nn.Module = self.model
        if self.world_size > 1:
            # Same initial weights everywhere (DDP also broadcasts rank 0's), own dropout stream.
            torch.manual_seed(int(np.random.SeedSequence([cfg.TRAIN.SEED, self.rank])
                                  .generate_state(1)[0]))
            if self.model.fds is not None:
                # Each rank accumulates its own images' FDS sums (summed in _end_epoch_fds):
                # DDP must not overwrite them with rank 0's at every forward.
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    self.model, [f"fds.{name}" for name in FeatureSmoothing.ACCUMULATORS])
            self.net = DistributedDataParallel(self.model)
        self.optimizer = build_optimizer(cfg, self.model, self.device)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        # The averaged weights are what validation, best.pth and test.py see.
        self.ema = (ModelEmaV3(self.model, decay=cfg.TRAIN.EMA_DECAY, use_warmup=True)
                    if cfg.TRAIN.EMA_DECAY else None)
        self.start_epoch, self.start_step, self.best_mae = 0, 0, math.inf
        self.epoch_stats, self.epoch_start = self._new_stats(), time.perf_counter()
        if resume:
            self._resume(resume)
        logger.info("train %d images, valid %d, %d steps/epoch, %s on %s x %d",
                    len(self.train_records), len(self.valid_records), self.steps_per_epoch,
                    cfg.MODEL.BACKBONE, self.device.type, self.world_size)
        if self.synthetic_set is not None:
            logger.info("synthetic %d images from %s, %g of each batch", len(synthetic_records),
                        cfg.DATA.SYNTHETIC.ROOT, cfg.DATA.SYNTHETIC.RATIO)
        if cfg.TRAIN.PROGRESSIVE_EPOCHS:
            logger.info("progressive resizing: epochs 1-%d at %d px, then %d px",
                        cfg.TRAIN.PROGRESSIVE_EPOCHS, cfg.TRAIN.PROGRESSIVE_SIZE,
                        cfg.MODEL.IMG_SIZE)

    @staticmethod
    def _new_stats() -> dict:
        """Running sums of an epoch, checkpointed mid-epoch so a resumed epoch reports the same
        (seconds: the epoch's time up to the newest mid-epoch checkpoint, so that its
        epoch_seconds, and a run's training time, count the steps done before a kill)."""
        return {"loss_sum": 0.0, "seen": 0, "skipped": 0, "seconds": 0.0}

    # -- checkpoints -----------------------------------------------------------------------------
    def _rng_states(self) -> list[dict]:
        """Every rank's RNG states, rank by rank (a collective under DDP)."""
        if self.world_size == 1:
            return [rng_state()]
        states: list = [None] * self.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def _save(self, name: str, rngs: list[dict], epoch: int, step: int = 0) -> None:
        """Checkpoint after `step` steps of epoch `epoch` (0-based; step 0: the epoch's start,
        i.e. `epoch` epochs completed). Only rank 0 writes."""
        if self.rank:
            return
        weights = {"model": self.model.state_dict()}
        if self.ema is not None:
            weights = {"model": self.ema.module.state_dict(),
                       "train_model": self.model.state_dict()}
        save_checkpoint({
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "epoch_stats": dict(self.epoch_stats),
            "best_mae": self.best_mae,
            "config": self.cfg.dump(),
            "rng": rngs,
            "attribute_vocab": self.attribute_vocab,
            "train_age_counts": age_histogram(self.train_set.ages).astype(int).tolist(),
        }, self.out / name)

    def _resume(self, path: str) -> None:
        state = load_checkpoint(path)
        if self.ema is not None:
            if "train_model" not in state:
                raise ConfigError(f"{path} was trained without TRAIN.EMA_DECAY: it cannot "
                                  f"resume with an EMA of the weights")
            self.model.load_state_dict(state["train_model"])
            self.ema.module.load_state_dict(state["model"])
        else:
            self.model.load_state_dict(state.get("train_model", state["model"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # Checkpoints from before per-rank RNG states held rank 0's torch state only.
        rngs = state.get("rng") or [{"torch": state["torch_rng"]}]
        if len(rngs) == self.world_size:
            set_rng_state(rngs[self.rank])
        else:
            logger.warning("checkpoint written by %d process(es), resuming on %d: dropout RNG "
                           "streams are reseeded, so the run will not repeat bit for bit",
                           len(rngs), self.world_size)
            torch.manual_seed(int(np.random.SeedSequence(
                [self.cfg.TRAIN.SEED, self.rank, int(state["epoch"])]).generate_state(1)[0]))
        self.start_epoch, self.best_mae = int(state["epoch"]), float(state["best_mae"])
        self.start_step = int(state.get("step", 0))
        if self.start_step:
            self.epoch_stats = dict(state["epoch_stats"])
        if not self.rank:
            self._truncate_metrics(self.start_epoch)
        logger.info("resumed from %s at epoch %d, step %d (best valid MAE %.3f)", path,
                    self.start_epoch, self.start_step, self.best_mae)

    # -- loop ------------------------------------------------------------------------------------
    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (they must agree to skip or stop together)."""
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if self.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def train_one_epoch(self, epoch: int, start_step: int = 0) -> tuple[float, float]:
        """Train steps `start_step`.. of `epoch`; returns (mean train loss, images per second)."""
        cfg, stats = self.cfg, self.epoch_stats
        self.net.train()
        loader = train_loader(cfg, self.train_set, epoch, start_step, self.rank, self.world_size,
                              self.sampling_weights, self.synthetic_set)
        fds_ages = self.model.fds is not None
        with_attributes = self.model.attributes is not None
        low_res = cfg.TRAIN.PROGRESSIVE_SIZE if epoch < cfg.TRAIN.PROGRESSIVE_EPOCHS else 0
        seen_before, start = stats["seen"], time.perf_counter()
        progress = tqdm(loader, total=len(loader), desc=f"epoch {epoch + 1}", leave=False,
                        disable=True if self.rank else None, mininterval=5)
        for step, batch in enumerate(progress, start=start_step):
            images = batch["image"].to(self.device, non_blocking=True)
            targets = {k: v.to(self.device) for k, v in batch.items() if k != "image"}
            if low_res:
                images = downsample(images, low_res)
            mixed = None
            if cfg.AUG.MIXUP_ALPHA > 0:
                images, lam, order = mixed = mixup(images, cfg.AUG.MIXUP_ALPHA,
                                                   (cfg.TRAIN.SEED, epoch, step, self.rank))
            if cfg.TRAIN.CHANNELS_LAST:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                outputs = self.net(images, targets["age"] if fds_ages else None,
                                   with_attributes=with_attributes)
            attribute_logits = None
            if with_attributes:
                outputs, attribute_logits = outputs
            per_image = self._per_image_loss(outputs, attribute_logits, targets)
            if mixed is not None:
                shuffled = {k: v[order] for k, v in targets.items()}
                per_image = lam * per_image + (1.0 - lam) * self._per_image_loss(
                    outputs, attribute_logits, shuffled)
            loss = per_image.mean()
            self.optimizer.zero_grad(set_to_none=True)
            if self._all_finite(loss):
                loss.backward()
                self.optimizer.step()
                stats["loss_sum"] += loss.item() * len(images)
                stats["seen"] += len(images)
                if self.ema is not None:
                    self.ema.update(self.model, step=epoch * self.steps_per_epoch + step + 1)
            elif cfg.TRAIN.SKIP_NONFINITE:
                stats["skipped"] += 1
                logger.warning("non-finite loss at epoch %d, step %d: batch skipped (%d skipped "
                               "this epoch)", epoch + 1, step + 1, stats["skipped"])
            else:
                last = self.out / "last.pth"
                kept = (f"the last good checkpoint is {last}" if last.is_file()
                        else "no checkpoint had been written yet")
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                    f"{kept} (TRAIN.SKIP_NONFINITE True skips such batches)")
            # The schedule follows the step count, skipped batches included.
            self.scheduler.step_update(epoch * self.steps_per_epoch + step + 1)
            if stats["seen"]:
                progress.set_postfix(loss=f"{stats['loss_sum'] / stats['seen']:.3f}")
            every = cfg.TRAIN.CHECKPOINT_STEPS
            if every and (step + 1) % every == 0 and step + 1 < self.steps_per_epoch:
                stats["seconds"] = time.perf_counter() - self.epoch_start
                self._save("last.pth", self._rng_states(), epoch, step + 1)
        if stats["skipped"] == self.steps_per_epoch:
            raise NonFiniteLossError(f"every batch of epoch {epoch + 1} had a non-finite loss: "
                                     f"the weights have diverged (lower TRAIN.LR?)")
        if self.model.fds is not None:
            self._end_epoch_fds(epoch)
        totals = torch.tensor([stats["loss_sum"], stats["seen"], stats["seen"] - seen_before],
                              dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(totals)  # over all ranks' images
        loss_sum, seen, seen_now = totals.tolist()
        return loss_sum / max(seen, 1), seen_now / (time.perf_counter() - start)

    def _per_image_loss(self, outputs: torch.Tensor, attribute_logits: dict | None,
                        targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's loss per image (blended with the loss for the teacher's age under
        LOSS.DISTILL_PREDICTIONS), times its LOSS.REWEIGHT weight, plus the attribute losses."""
        per_image = self.model.head.loss(outputs, targets)
        if self.teacher_ages is not None:
            weight = self.cfg.LOSS.DISTILL_WEIGHT
            taught = dict(targets, age=self.teacher_ages[targets["index"]])
            per_image = (1.0 - weight) * per_image + weight * self.model.head.loss(outputs, taught)
        if self.loss_weights is not None:
            per_image = per_image * self.loss_weights[targets["index"]]
        if attribute_logits is not None:
            per_image = per_image + self.model.attributes.loss(
                attribute_logits, self.attribute_labels[targets["index"]])
        return per_image

    def _end_epoch_fds(self, epoch: int) -> None:
        """Fold the epoch's FDS feature sums (of all ranks' images) into its statistics."""
        fds = self.model.fds
        if self.world_size > 1:
            for name in FeatureSmoothing.ACCUMULATORS:
                dist.all_reduce(getattr(fds, name))
        fds.end_epoch(epoch)

    def validate(self):
        model = self.model if self.ema is None else self.ema.module
        frame = predict_records([model], self.cfg, self.valid_records, self.valid_images,
                                device=str(self.device))
        return float((frame["pred"] - frame["age"]).abs().mean()), frame

    def fit(self) -> float:
        """Train to TRAIN.EPOCHS (from the resumed epoch and step); returns the best valid MAE
        (rank 0's; other ranks return NaN)."""
        cfg, writer = self.cfg, None
        if not self.rank:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.pth.*.tmp"):  # left by a kill during a save
                stale.unlink()
            (self.out / "config.yaml").write_text(cfg.dump())
            writer = SummaryWriter(str(self.out / "tb"))
        for epoch in range(self.start_epoch, cfg.TRAIN.EPOCHS):
            # A resumed epoch's clock starts at the time it had run until its checkpoint
            # (checkpoints from before that was recorded: 0).
            self.epoch_start = time.perf_counter() - self.epoch_stats.get("seconds", 0.0)
            train_loss, speed = self.train_one_epoch(
                epoch, self.start_step if epoch == self.start_epoch else 0)
            rngs = self._rng_states()
            last = epoch + 1 == cfg.TRAIN.EPOCHS
            valid_mae = math.nan
            # Rank 0 validates alone (README, "Several GPUs") while the others wait in the next
            # collective: the numbers are those of a single-process run, and the split is small.
            if not self.rank and (last or (epoch + 1) % cfg.TRAIN.EVAL_EVERY == 0):
                valid_mae, frame = self.validate()
                if valid_mae < self.best_mae:
                    self.best_mae = valid_mae
                    self._save("best.pth", rngs, epoch + 1)
                    frame.to_csv(self.out / "predictions_valid.csv", index=False)
            lr = self.optimizer.param_groups[0]["lr"]
            seconds = time.perf_counter() - self.epoch_start
            row = (epoch + 1, train_loss, valid_mae, lr, seconds, speed,
                   self.epoch_stats["skipped"])
            self.epoch_stats = self._new_stats()
            if writer is not None:
                self._append_metrics(row)
                for name, value in zip(METRICS_COLUMNS[1:], row[1:]):
                    if math.isfinite(value):
                        writer.add_scalar(name, value, epoch + 1)
            self._save("last.pth", rngs, epoch + 1)
            logger.info("epoch %d/%d  loss %.4f  valid MAE %.3f  (best %.3f)  %.0f img/s  %.0fs"
                        "  %d non-finite skipped", epoch + 1, cfg.TRAIN.EPOCHS, train_loss,
                        valid_mae, self.best_mae, speed, row[4], row[6])
        if writer is not None:
            writer.close()
        return self.best_mae if not self.rank else math.nan

    def _truncate_metrics(self, epochs: int) -> None:
        """Drop metrics rows of epochs after the checkpoint (a kill can land between the two
        writes), so a resumed run's metrics.csv has each epoch exactly once. Rows written by an
        older version with fewer columns are padded to the current header."""
        path = self.out / "metrics.csv"
        if path.exists():
            rows = list(csv.reader(path.open()))
            width = len(METRICS_COLUMNS)
            kept = [list(METRICS_COLUMNS)] + [r + [""] * (width - len(r)) for r in rows[1:]
                                              if int(r[0]) <= epochs]
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerows(kept)

    def _append_metrics(self, row: tuple) -> None:
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            out = csv.writer(handle)
            if new:
                out.writerow(METRICS_COLUMNS)
            out.writerow(row)
