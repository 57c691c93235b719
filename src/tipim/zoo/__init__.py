"""Pinned, checksummed model files and the embedders built from them."""

from tipim.zoo.registry import (
    ARTIFACTS,
    MODELS,
    Artifact,
    ModelCard,
    ModelNotFetchedError,
    artifact_path,
    cache_dir,
    fetch_artifact,
    fetch_model,
    is_fetched,
)

__all__ = [
    "ARTIFACTS",
    "MODELS",
    "Artifact",
    "ModelCard",
    "ModelNotFetchedError",
    "artifact_path",
    "cache_dir",
    "fetch_artifact",
    "fetch_model",
    "is_fetched",
]
