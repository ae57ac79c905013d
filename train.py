"""Train an age model: python train.py --cfg configs/X.yaml [KEY VALUE ...] [--resume DIR|CKPT]

Several processes (CPU or GPUs, one or more machines): torchrun --nproc_per_node N train.py ...
"""

import argparse
import logging
import sys
from pathlib import Path

from age_estimation.cli import setup_logging
from age_estimation.config import ConfigError, config_from_string, load_config
from age_estimation.engine.checkpoint import CheckpointError, load_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="", help="YAML config file (see configs/)")
    parser.add_argument("--resume", default="",
                        help="continue a run: its OUTPUT_DIR (uses last.pth) or a checkpoint; "
                             "the run's saved config is used, then any KEY VALUE overrides")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            saved = config_from_string(load_checkpoint(args.resume)["config"])
            cfg = load_config(None, args.opts, base=saved)
        else:
            cfg = load_config(args.cfg, args.opts)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    from age_estimation.data.cache import BadImageError
    from age_estimation.data.datasets import DatasetError
    from age_estimation.engine.trainer import NonFiniteLossError, Trainer, init_distributed

    rank, _ = init_distributed()
    # Only rank 0 logs progress (and owns train.log); the others report warnings and errors.
    if rank == 0:
        setup_logging(Path(cfg.OUTPUT_DIR) / "train.log")
    else:
        setup_logging(None, level=logging.WARNING)
    try:
        best = Trainer(cfg, resume=args.resume).fit()
    except (ConfigError, DatasetError, BadImageError, FileNotFoundError) as err:  # no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        logging.getLogger("train").error("%s", err)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"best valid MAE {best:.3f}  ({cfg.OUTPUT_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
