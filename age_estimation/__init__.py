"""age_estimation: a config-driven toolkit for estimating age from face images."""

import os

# albumentations asks PyPI for its latest version when imported; a toolkit run must never touch
# the network (offline clusters, reproducible runs), so turn that check off unless a user set it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
