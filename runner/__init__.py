"""runner: a declarative, YAML-driven experiment runner for offline inference of image
classifiers."""

__version__ = "0.1.0"
