"""The training loop: AMP, channels_last, per-epoch validation, atomic checkpoints, resume."""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from yacs.config import CfgNode

from age_estimation.data.build import AgeDataset, load_split, train_loader
from age_estimation.data.transforms import build_train_transform
from age_estimation.engine.checkpoint import load_checkpoint, save_checkpoint
from age_estimation.engine.evaluation import predict_records
from age_estimation.models.model import AgeModel

logger = logging.getLogger(__name__)

METRICS_COLUMNS = ("epoch", "train_loss", "valid_mae", "lr", "epoch_seconds", "images_per_s")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message names the epoch and step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Warmup then cosine or step decay, updated every optimisation step."""
    warmup = round(cfg.TRAIN.WARMUP_EPOCHS * steps_per_epoch)
    common = {"warmup_t": warmup, "warmup_lr_init": cfg.TRAIN.LR * 0.01, "t_in_epochs": False}
    if cfg.TRAIN.SCHEDULE == "cosine":
        return CosineLRScheduler(optimizer, t_initial=cfg.TRAIN.EPOCHS * steps_per_epoch,
                                 lr_min=cfg.TRAIN.LR * 0.01, **common)
    return MultiStepLRScheduler(optimizer, decay_t=[s * steps_per_epoch for s in cfg.TRAIN.STEPS],
                                decay_rate=0.1, **common)


class Trainer:
    """Builds everything from a config and trains; `Trainer(cfg).fit()`."""

    def __init__(self, cfg: CfgNode, resume: str = "") -> None:
        self.cfg = cfg
        self.out = Path(cfg.OUTPUT_DIR)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.TRAIN.THREADS:
            torch.set_num_threads(cfg.TRAIN.THREADS)
        seed_everything(cfg.TRAIN.SEED)
        self.train_records, train_images = load_split(cfg, "train")
        self.valid_records, self.valid_images = load_split(cfg, "valid")
        self.train_set = AgeDataset(self.train_records, train_images,
                                    build_train_transform(cfg.AUG.POLICY),
                                    label_jitter=cfg.AUG.LABEL_JITTER, seed=cfg.TRAIN.SEED)
        self.steps_per_epoch = len(train_loader(cfg, self.train_set, 0))
        if cfg.TRAIN.MAX_STEPS_PER_EPOCH:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.TRAIN.MAX_STEPS_PER_EPOCH)
        self.model = AgeModel(cfg).to(self.device)
        if cfg.TRAIN.CHANNELS_LAST:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = create_optimizer_v2(
            self.model, opt=cfg.TRAIN.OPTIMIZER, lr=cfg.TRAIN.LR,
            weight_decay=cfg.TRAIN.WEIGHT_DECAY, **({"momentum": 0.9, "nesterov": True}
                                                     if cfg.TRAIN.OPTIMIZER == "sgd" else {}))
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.start_epoch, self.best_mae = 0, math.inf
        if resume:
            self._resume(resume)
        logger.info("train %d images, valid %d, %d steps/epoch, %s on %s",
                    len(self.train_records), len(self.valid_records), self.steps_per_epoch,
                    cfg.MODEL.BACKBONE, self.device)

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,  # number of completed epochs
            "best_mae": self.best_mae,
            "config": self.cfg.dump(),
            "torch_rng": torch.get_rng_state(),
        }

    def _resume(self, path: str) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch, self.best_mae = int(state["epoch"]), float(state["best_mae"])
        self._truncate_metrics(self.start_epoch)
        logger.info("resumed from %s at epoch %d (best valid MAE %.3f)", path, self.start_epoch,
                    self.best_mae)

    # -- loop ------------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> tuple[float, float]:
        """Returns (mean train loss, images per second)."""
        cfg, model = self.cfg, self.model
        model.train()
        loader = train_loader(cfg, self.train_set, epoch)
        total_loss, seen, start = 0.0, 0, time.perf_counter()
        progress = tqdm(loader, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}",
                        leave=False, disable=None, mininterval=5)
        for step, batch in enumerate(progress):
            if step >= self.steps_per_epoch:
                break
            images = batch["image"].to(self.device, non_blocking=True)
            if cfg.TRAIN.CHANNELS_LAST:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = {k: v.to(self.device) for k, v in batch.items() if k != "image"}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.TRAIN.AMP):
                outputs = model(images)
            loss = model.head.loss(outputs, targets).mean()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is {self.out / 'last.pth'}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step_update(epoch * self.steps_per_epoch + step + 1)
            total_loss += loss.item() * len(images)
            seen += len(images)
            progress.set_postfix(loss=f"{total_loss / seen:.3f}")
        return total_loss / max(seen, 1), seen / (time.perf_counter() - start)

    def validate(self):
        frame = predict_records([self.model], self.cfg, self.valid_records, self.valid_images,
                                device=str(self.device))
        return float((frame["pred"] - frame["age"]).abs().mean()), frame

    def fit(self) -> float:
        """Train to TRAIN.EPOCHS (from the resumed epoch); returns the best valid MAE."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(cfg.dump())
        writer = SummaryWriter(str(self.out / "tb"))
        for epoch in range(self.start_epoch, cfg.TRAIN.EPOCHS):
            start = time.perf_counter()
            train_loss, speed = self.train_one_epoch(epoch)
            last = epoch + 1 == cfg.TRAIN.EPOCHS
            valid_mae = math.nan
            if last or (epoch + 1) % cfg.TRAIN.EVAL_EVERY == 0:
                valid_mae, frame = self.validate()
                if valid_mae < self.best_mae:
                    self.best_mae = valid_mae
                    save_checkpoint(self._state(epoch + 1), self.out / "best.pth")
                    frame.to_csv(self.out / "predictions_valid.csv", index=False)
            lr = self.optimizer.param_groups[0]["lr"]
            row = (epoch + 1, train_loss, valid_mae, lr, time.perf_counter() - start, speed)
            self._append_metrics(row)
            for name, value in zip(METRICS_COLUMNS[1:], row[1:]):
                if math.isfinite(value):
                    writer.add_scalar(name, value, epoch + 1)
            save_checkpoint(self._state(epoch + 1), self.out / "last.pth")
            logger.info("epoch %d/%d  loss %.4f  valid MAE %.3f  (best %.3f)  %.0f img/s  %.0fs",
                        epoch + 1, cfg.TRAIN.EPOCHS, train_loss, valid_mae, self.best_mae,
                        speed, row[4])
        writer.close()
        return self.best_mae

    def _truncate_metrics(self, epochs: int) -> None:
        """Drop metrics rows of epochs after the checkpoint (a kill can land between the two
        writes), so a resumed run's metrics.csv has each epoch exactly once."""
        path = self.out / "metrics.csv"
        if path.exists():
            rows = list(csv.reader(path.open()))
            kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= epochs]
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
