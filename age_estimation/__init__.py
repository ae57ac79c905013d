"""age_estimation: a config-driven toolkit for estimating age from face images."""

__version__ = "0.1.0"
