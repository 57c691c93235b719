"""Embedders built from the model zoo, and the loaders for a user's own model files.

Every loader parses weights without unpickling code: ONNX protobufs, Keras HDF5 arrays, dlib's
plain format, TorchScript archives, and torch checkpoints with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tipim.align.transform import DLIB150_TEMPLATE
from tipim.models.base import Embedder
from tipim.zoo.registry import MODELS, artifact_path


def _onnx_to_torch(path: str | Path, batch_free: bool = False, direct: bool = True) -> nn.Module:
    """Convert an ONNX graph; ``batch_free`` lets a graph exported at batch 1 take any batch.

    Trailing empty optional inputs (``Clip(x, min, "")``) are dropped, since onnx2torch reads them
    as missing constants. With ``batch_free``, a constant ``Reshape`` target that starts with 1 (the
    export's batch) starts with 0 instead, which ONNX reads as "keep the input's first dimension";
    the zoo test checks the result against onnxruntime image by image. ``direct``: PReLUs and
    convolutions called as functions, the PReLUs with the faster CPU backward of
    ``tipim.models.prelu`` (the same outputs and gradients, bit for bit); False leaves onnx2torch's
    graph as it converts it (for comparing the two).
    """
    import warnings

    import onnx
    from onnx import numpy_helper
    from onnx2torch import convert

    from tipim.models.prelu import call_directly

    # onnx2torch's Slice indexes with a list (a torch deprecation it has not caught up with)
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning)
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        while node.input and node.input[-1] == "":
            node.input.pop()
        if batch_free and node.op_type == "Reshape" and node.input[1] in inits:
            t = inits[node.input[1]]
            shape = numpy_helper.to_array(t).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                t.CopyFrom(numpy_helper.from_array(shape, t.name))
    net = convert(model)
    return call_directly(net) if direct else net


def _zoo_settings(name: str) -> dict:
    """Native input and the network of each zoo model (sources, versions and checksums: ``tipim.zoo.registry``)."""
    if name == "arcface-mbf":
        net = _onnx_to_torch(artifact_path("arcface-mbf"))
        return dict(net=net, native_size=112, pixel_scale=255.0, mean=(127.5,) * 3, std=(127.5,) * 3)
    if name == "sface":
        net = _onnx_to_torch(artifact_path("sface"))
        return dict(net=net, native_size=112, pixel_scale=255.0)
    if name == "edgeface-s":
        net = _onnx_to_torch(artifact_path("edgeface-s"), batch_free=True)
        return dict(net=net, native_size=112, pixel_scale=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    if name == "facenet":
        from tipim.models.keras_h5 import KerasGraph

        return dict(net=KerasGraph(artifact_path("facenet")), native_size=160, pixel_scale=255.0, prewhiten=True)
    if name == "dlib-resnet":
        from tipim.models.dlib_resnet import DlibResNet

        return dict(
            net=DlibResNet(artifact_path("dlib-resnet")),
            native_size=150,
            template=DLIB150_TEMPLATE.tolist(),
            pixel_scale=255.0,
        )
    raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)} (tipim models list)")


class ZooEmbedder(Embedder):
    """A model of the zoo by name (``tipim models list``); its weights must be fetched first."""

    def __init__(self, name: str):
        super().__init__(name=name, **_zoo_settings(name))


def _check_file(path: str | Path, sha256: str | None) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; check the path in your config")
    if sha256:
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        if h != sha256.lower():
            raise ValueError(f"{path} has sha256 {h}, but the config expects {sha256}; the file changed or is not the one you meant")
    return path


class OnnxEmbedder(Embedder):
    """A user's ONNX face model, converted to PyTorch (onnx2torch) so gradients flow."""

    def __init__(
        self,
        path: str,
        sha256: str | None = None,
        native_size: int = 112,
        template: list[list[float]] | None = None,
        pixel_scale: float = 255.0,
        mean: Sequence[float] = (127.5, 127.5, 127.5),
        std: Sequence[float] = (127.5, 127.5, 127.5),
        prewhiten: bool = False,
        bgr: bool = False,
        name: str | None = None,
    ):
        p = _check_file(path, sha256)
        super().__init__(
            _onnx_to_torch(p), native_size, template, pixel_scale, mean, std, prewhiten, bgr, name or p.stem
        )


class TorchScriptEmbedder(Embedder):
    """A user's TorchScript face model (``torch.jit.save``); loading runs no pickled Python."""

    def __init__(
        self,
        path: str,
        sha256: str | None = None,
        native_size: int = 112,
        template: list[list[float]] | None = None,
        pixel_scale: float = 1.0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        prewhiten: bool = False,
        bgr: bool = False,
        name: str | None = None,
    ):
        p = _check_file(path, sha256)
        net = torch.jit.load(str(p), map_location="cpu")
        super().__init__(net, native_size, template, pixel_scale, mean, std, prewhiten, bgr, name or p.stem)


class TimmEmbedder(Embedder):
    """A timm architecture whose head outputs the embedding, with weights from a checkpoint.

    The checkpoint is a state dict (optionally under ``state_dict``), loaded with
    ``weights_only=True``; ``.safetensors`` files are read with safetensors when installed.
    """

    def __init__(
        self,
        architecture: str,
        checkpoint: str,
        embedding_dim: int = 512,
        sha256: str | None = None,
        native_size: int = 112,
        template: list[list[float]] | None = None,
        pixel_scale: float = 1.0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        prewhiten: bool = False,
        bgr: bool = False,
        name: str | None = None,
    ):
        import timm

        p = _check_file(checkpoint, sha256)
        net = timm.create_model(architecture, pretrained=False, num_classes=embedding_dim)
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{p} does not fit timm's {architecture!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        super().__init__(net, native_size, template, pixel_scale, mean, std, prewhiten, bgr, name or architecture)


def load_embedder(spec: str | nn.Module) -> nn.Module:
    """A zoo name, or an already built module (from a YAML ``class_path``), as an embedder."""
    if isinstance(spec, nn.Module):
        return spec
    return ZooEmbedder(spec)


__all__ = ["OnnxEmbedder", "TimmEmbedder", "TorchScriptEmbedder", "ZooEmbedder", "load_embedder"]
