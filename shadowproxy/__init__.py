"""shadowproxy: a dark-launch proxy."""

__version__ = "0.1.0"
