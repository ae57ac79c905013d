"""Bundle a trained checkpoint as the demo's model and fill in its model card.

    python scripts/bundle_model.py RUN/best.pth [--out models/age_model.pth]
        [--test_json RUN/predictions_test.json] [--cross_dataset_json RUN/predictions_fgnet.json]
        [--command "python train.py ..."]
    python scripts/bundle_model.py --members models/ensemble/a.pth models/ensemble/b.pth ...
        [--test_json ENSEMBLE_test.json] [--cross_dataset_json ENSEMBLE_fgnet.json]

Keeps only what inference needs: fp16 weights (a ResNet-18 stays under 25 MB), the config text
and metadata (source checkpoint, epoch, valid MAE, training wall time from the run's
metrics.csv, metrics from test.py JSON summaries in domain and on another dataset). The file
loads with `engine.checkpoint.load_model` (weights_only=True). The card (default: README.md
next to the output) is filled in from the bundled file itself; its `<!-- field -->` markers
stay, so re-bundling refreshes it.

With --members, nothing is bundled: the card of an ensemble of already bundled models (default:
README.md next to the first) gets a table of its members and the ensemble's own test.py
summaries (`test.py --resume a.pth --ensemble b.pth ...` on exactly these files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from age_estimation.cli import setup_logging
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from age_estimation.cli import setup_logging

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="training checkpoint (.pth) or run folder")
    parser.add_argument("--members", nargs="+", default=[], metavar="BUNDLE",
                        help="fill in the card of an ensemble of these bundled models instead")
    parser.add_argument("--out", default=str(REPO / "models" / "age_model.pth"))
    parser.add_argument("--test_json", default="", help="test.py summary JSON of this model")
    parser.add_argument("--cross_dataset_json", default="",
                        help="test.py summary JSON of this model on another dataset (FG-NET)")
    parser.add_argument("--command", default="", help="the training command, for the card")
    parser.add_argument("--card", default="",
                        help="model card to fill in (default: README.md next to --out); "
                             "'none' to skip")
    parser.add_argument("--max_mb", type=float, default=25.0,
                        help="refuse to write a bundle larger than this (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()

    from age_estimation.engine.checkpoint import CheckpointError
    from age_estimation.engine.deploy import (
        bundle_checkpoint,
        ensemble_card_fields,
        fill_model_card,
        model_card_fields,
    )

    if args.members or not args.checkpoint:
        if not args.members or args.checkpoint:
            print("error: give a checkpoint to bundle or --members, not both or neither",
                  file=sys.stderr)
            return 2
        card = Path(args.card) if args.card else Path(args.members[0]).parent / "README.md"
        try:
            if not card.is_file():
                raise FileNotFoundError(f"no model card template at {card}")
            fields = ensemble_card_fields(args.members, args.test_json or None,
                                          args.cross_dataset_json or None)
        except (CheckpointError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        card.write_text(fill_model_card(card.read_text(), fields))
        print(f"filled in {card}")
        return 0
    out = Path(args.out)
    try:
        meta = bundle_checkpoint(args.checkpoint, out, args.test_json or None, args.command,
                                 args.cross_dataset_json or None)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB) from {meta['source']}")
    if size_mb > args.max_mb:
        out.unlink()
        print(f"error: {size_mb:.1f} MB is over the {args.max_mb} MB limit; removed it",
              file=sys.stderr)
        return 1
    if args.card != "none":
        card = Path(args.card) if args.card else out.parent / "README.md"
        if not card.is_file():
            print(f"error: no model card template at {card}", file=sys.stderr)
            return 2
        card.write_text(fill_model_card(card.read_text(), model_card_fields(out)))
        print(f"filled in {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
