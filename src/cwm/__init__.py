"""cwm: an open implementation of the Code World Model system."""

__version__ = "0.1.0"
