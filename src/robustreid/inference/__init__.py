"""Using a trained model: load a checkpoint, embed images, search a gallery, export.

The search function itself is ``robustreid.inference.search.search`` (not re-exported here,
where its name would hide the module).
"""

from robustreid.data.base import IMAGE_SUFFIXES, list_images
from robustreid.inference.collect import collect_images
from robustreid.inference.embed import (
    EmbedResult,
    SkippedImagesWarning,
    embed_images,
    load_embeddings,
)
from robustreid.inference.embeddings_file import (
    Embeddings,
    EmbeddingsFileError,
    read_embeddings,
)
from robustreid.inference.extractor import (
    FeatureExtractor,
    Preprocess,
    checkpoint_meta,
    expand_inputs,
    load,
)
from robustreid.inference.search import (
    GalleryIndex,
    SearchResult,
    build_records,
    load_gallery,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "EmbedResult",
    "Embeddings",
    "EmbeddingsFileError",
    "FeatureExtractor",
    "GalleryIndex",
    "Preprocess",
    "SearchResult",
    "SkippedImagesWarning",
    "build_records",
    "checkpoint_meta",
    "collect_images",
    "embed_images",
    "expand_inputs",
    "list_images",
    "load",
    "load_embeddings",
    "load_gallery",
    "read_embeddings",
]
