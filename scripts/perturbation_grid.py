"""One PNG grid of every test-time perturbation (rows) at levels 1, 3 and 5 (columns).

The face is the astronaut photo shipped with scikit-image (not a dataset image), detected and
aligned to the UTKFace crop geometry by `age_estimation.faces.FaceDetector`; background_swap
takes its background from scikit-image's coffee photo.

    python scripts/perturbation_grid.py [OUT.jpg] [--size 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from age_estimation.data.perturbations import PERTURBATIONS, perturb
from age_estimation.faces import FaceDetector

SHOWN_LEVELS = (1, 3, 5)


def aligned_astronaut(size: int) -> np.ndarray:
    from skimage.data import astronaut

    faces = FaceDetector(size=size).detect(astronaut())
    if not faces:
        raise RuntimeError("no face found in skimage.data.astronaut()")
    return faces[0].crop


def write_grid(path: Path, size: int = 200, seed: int = 0) -> Path:
    """Render the grid (matplotlib's Agg canvas, no pyplot) and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from skimage.data import coffee

    face = aligned_astronaut(size)
    donors = cv2.resize(coffee(), (size, size), interpolation=cv2.INTER_AREA)[None]
    kinds = list(PERTURBATIONS)
    columns = len(SHOWN_LEVELS) + 1
    fig = Figure(figsize=(1.6 * columns, 1.6 * len(kinds)), dpi=80)
    FigureCanvasAgg(fig)
    for row, kind in enumerate(kinds):
        images = [face] + [perturb(face, kind, level, seed, donors) for level in SHOWN_LEVELS]
        for col, image in enumerate(images):
            ax = fig.add_subplot(len(kinds), columns, row * columns + col + 1)
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if col == 0 else f"level {SHOWN_LEVELS[col - 1]}",
                             fontsize=9)
            if col == 0:
                ax.set_ylabel(kind, fontsize=8)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, pil_kwargs={"quality": 85})  # JPEG: the noise rows make a PNG ~1 MB
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="results/figures/perturbations.jpg",
                        help="PNG to write (default: %(default)s)")
    parser.add_argument("--size", type=int, default=200, help="crop side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kinds")
    args = parser.parse_args(argv)
    print(write_grid(Path(args.out), args.size, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
