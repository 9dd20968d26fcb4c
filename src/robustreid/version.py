"""The version of robustreid, at the bottom so that files it writes (checkpoints, embeddings,
exported models) can record it without importing the package root (whose ``load`` reaches up
into :mod:`robustreid.inference`)."""

__version__ = "0.1.0"
