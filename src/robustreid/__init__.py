"""robustreid: unsupervised person re-identification with robust cluster prototypes."""

__version__ = "0.1.0"
