"""annlab: a reproducible experiment pipeline for neural-network classifiers."""

__version__ = "0.1.0"
