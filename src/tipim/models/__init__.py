"""Face-recognition embedders: the zoo, user models and ensembles, behind one interface."""

from tipim.models.base import Embedder, Ensemble, check_faces
from tipim.models.zoo import OnnxEmbedder, TimmEmbedder, TorchScriptEmbedder, ZooEmbedder, load_embedder

__all__ = [
    "Embedder",
    "Ensemble",
    "OnnxEmbedder",
    "TimmEmbedder",
    "TorchScriptEmbedder",
    "ZooEmbedder",
    "check_faces",
    "load_embedder",
]
