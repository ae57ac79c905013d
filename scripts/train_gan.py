"""Train the toolkit's age-conditional GAN on a dataset's train split (default UTKFace).

    python scripts/train_gan.py --cfg configs/gan/utkface_dcgan64.yaml --minutes 60
    python scripts/train_gan.py --resume ../runs/gan/utkface_dcgan64 [--minutes 90] [KEY VALUE ...]

The run folder (OUTPUT_DIR) gets config.yaml, last.pth (atomic; weights_only-safe), metrics.csv
(step, losses, images/s, minutes), train.log and samples/step_NNNNNNN.png: one row per age
decade (5, 15, ..., 95 years), the same latents in every row. These grids show dataset-like
faces: keep run folders out of the repository. `--minutes` (TRAIN.MINUTES) is a budget over
the whole run, resumes included; training stops at TRAIN.STEPS or when it is spent.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    from age_estimation.cli import setup_logging
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from age_estimation.cli import setup_logging

logger = logging.getLogger("train_gan")
METRICS_HEADER = "step,loss_d,loss_g,images_per_s,minutes\n"


def data_config(gan_cfg):
    """The age-model config `load_split` expects, pointing at the GAN's data and resolution."""
    from defaults import get_cfg_defaults

    cfg = get_cfg_defaults()
    cfg.DATA.DATASET, cfg.DATA.ROOT = gan_cfg.DATA.DATASET, gan_cfg.DATA.ROOT
    cfg.DATA.CACHE_DIR, cfg.DATA.NUM_WORKERS = gan_cfg.DATA.CACHE_DIR, gan_cfg.DATA.NUM_WORKERS
    cfg.MODEL.IMG_SIZE = gan_cfg.MODEL.RESOLUTION
    cfg.freeze()
    return cfg


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
    path.write_text(METRICS_HEADER + "".join(kept))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="", help="GAN config YAML (configs/gan/*.yaml)")
    parser.add_argument("--resume", default="", help="run folder (or its last.pth) to continue")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time budget over the whole run (sets TRAIN.MINUTES)")
    parser.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from age_estimation.config import ConfigError
    from age_estimation.data.build import load_split
    from age_estimation.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from age_estimation.gan.defaults import gan_config_from_string, load_gan_config
    from age_estimation.gan.training import GanTrainer, gan_labels

    opts = list(args.opts)
    if args.minutes is not None:
        opts += ["TRAIN.MINUTES", str(float(args.minutes))]
    state = None
    try:
        if args.resume:
            state = load_checkpoint(args.resume)
            run_dir = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
            opts += ["OUTPUT_DIR", str(run_dir)]  # the run continues where it is, even if moved
            cfg = load_gan_config(args.cfg or None, opts, gan_config_from_string(state["config"]))
        else:
            cfg = load_gan_config(args.cfg or None, opts)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.OUTPUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out / "train.log")
    (out / "config.yaml").write_text(cfg.dump())
    if cfg.TRAIN.THREADS:
        torch.set_num_threads(cfg.TRAIN.THREADS)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    records, images = load_split(data_config(cfg), cfg.DATA.SPLIT)
    labels, vocab = gan_labels(records, list(cfg.MODEL.ATTRIBUTES))
    trainer = GanTrainer(cfg, images, labels, vocab, device)
    elapsed = 0.0
    metrics = out / "metrics.csv"
    if state is not None:
        if state["meta"]["vocab"] != vocab:
            print(f"error: the data's attribute classes {vocab} differ from the run's "
                  f"{state['meta']['vocab']}", file=sys.stderr)
            return 2
        trainer.load_state_dict(state)
        elapsed = float(state.get("elapsed_s", 0.0))
        _truncate_metrics(metrics, trainer.step)
        logger.info("resumed from %s at step %d (%.1f min trained)", args.resume, trainer.step,
                    elapsed / 60)
    if not metrics.is_file():
        metrics.write_text(METRICS_HEADER)
    logger.info("%d %s images at %d px, %d steps of %d on %s", len(images), cfg.DATA.SPLIT,
                cfg.MODEL.RESOLUTION, cfg.TRAIN.STEPS, cfg.TRAIN.BATCH_SIZE, device)
    budget = cfg.TRAIN.MINUTES * 60 or float("inf")

    def save() -> None:
        save_checkpoint({**trainer.state_dict(), "elapsed_s": elapsed}, out / "last.pth")

    def save_samples() -> None:
        grid = trainer.sample_grid(cfg.TRAIN.SAMPLES_PER_DECADE)
        (out / "samples").mkdir(exist_ok=True)
        cv2.imwrite(str(out / "samples" / f"step_{trainer.step:07d}.png"), grid[:, :, ::-1])

    window = {"loss_d": 0.0, "loss_g": 0.0, "steps": 0, "seconds": 0.0}
    while trainer.step < cfg.TRAIN.STEPS and elapsed < budget:
        start = time.perf_counter()
        losses = trainer.train_step()
        seconds = time.perf_counter() - start
        elapsed += seconds
        window["loss_d"] += losses["loss_d"]
        window["loss_g"] += losses["loss_g"]
        window["steps"] += 1
        window["seconds"] += seconds
        step = trainer.step
        if step % cfg.TRAIN.LOG_STEPS == 0 or step == cfg.TRAIN.STEPS or elapsed >= budget:
            n = window["steps"]
            speed = n * trainer.batch_size * cfg.TRAIN.D_STEPS / window["seconds"]
            logger.info("step %d: loss_d %.3f loss_g %.3f, %.0f real images/s, %.1f min",
                        step, window["loss_d"] / n, window["loss_g"] / n, speed, elapsed / 60)
            with open(metrics, "a") as handle:
                handle.write(f"{step},{window['loss_d'] / n:.5f},{window['loss_g'] / n:.5f},"
                             f"{speed:.1f},{elapsed / 60:.3f}\n")
            window = dict.fromkeys(window, 0.0)
        if step % cfg.TRAIN.SAMPLE_STEPS == 0:
            save_samples()
        if step % cfg.TRAIN.CHECKPOINT_STEPS == 0:
            save()
    save()
    save_samples()
    logger.info("stopped at step %d after %.1f min; checkpoint %s", trainer.step, elapsed / 60,
                out / "last.pth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
