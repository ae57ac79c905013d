"""Train an age model: python train.py --cfg configs/X.yaml [KEY VALUE ...] [--resume DIR|CKPT]"""

import argparse
import sys
from pathlib import Path

from age_estimation.cli import setup_logging
from age_estimation.config import ConfigError, config_from_string, load_config
from age_estimation.engine.checkpoint import CheckpointError, load_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
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
    setup_logging(Path(cfg.OUTPUT_DIR) / "train.log")
    from age_estimation.engine.trainer import Trainer

    best = Trainer(cfg, resume=args.resume).fit()
    print(f"best valid MAE {best:.3f}  ({cfg.OUTPUT_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
