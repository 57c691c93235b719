"""Run a Keras functional model (HDF5) as a PyTorch module, reading only its arrays and JSON.

Lambda layers are never unmarshalled: the one kind this project needs (Inception-ResNet's
``ScaleSum``: ``inputs[0] + inputs[1] * scale``) is recognised by its name and ``scale`` argument.
Anything else raises, so a new model cannot silently run with a wrong graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _same_padding(kernel: list[int], strides: list[int]) -> tuple[int, int]:
    if strides != [1, 1] or any(k % 2 == 0 for k in kernel):
        raise NotImplementedError(f"'same' padding is supported for stride 1 and odd kernels, got {kernel}/{strides}")
    return kernel[0] // 2, kernel[1] // 2


class KerasGraph(nn.Module):
    """A channels-first PyTorch replay of a Keras functional graph; input NCHW, output as Keras."""

    def __init__(self, path: str | Path):
        super().__init__()
        with h5py.File(path, "r") as f:
            cfg = json.loads(f.attrs["model_config"])["config"]
            weights = f["model_weights"]

            def arrays(name: str) -> dict[str, np.ndarray]:
                group = weights[name]
                out = {}
                group.visititems(lambda k, v: out.__setitem__(k.split("/")[-1].split(":")[0], v[()]) if isinstance(v, h5py.Dataset) else None)
                return out

            self.layers = nn.ModuleDict()
            self.plan: list[tuple[str, str, list[str], dict]] = []
            for layer in cfg["layers"]:
                kind, name, c = layer["class_name"], layer["name"], layer["config"]
                inputs = [n[0] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
                extra: dict = {}
                if kind == "Conv2D":
                    w = arrays(name)
                    k = w["kernel"]  # (kh, kw, in, out)
                    pad = _same_padding(c["kernel_size"], c["strides"]) if c["padding"] == "same" else (0, 0)
                    conv = nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], c["strides"], pad, bias=c["use_bias"])
                    conv.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
                    if c["use_bias"]:
                        conv.bias.data = torch.from_numpy(w["bias"])
                    self.layers[name] = conv
                    extra["activation"] = c["activation"]
                elif kind == "BatchNormalization":
                    w = arrays(name)
                    bn = nn.BatchNorm2d(w["moving_mean"].shape[0], eps=c["epsilon"])
                    bn.running_mean.data = torch.from_numpy(w["moving_mean"])
                    bn.running_var.data = torch.from_numpy(w["moving_variance"])
                    bn.weight.data = torch.from_numpy(w["gamma"]) if "gamma" in w else torch.ones_like(bn.weight)
                    bn.bias.data = torch.from_numpy(w["beta"]) if "beta" in w else torch.zeros_like(bn.bias)
                    self.layers[name] = bn
                elif kind == "Dense":
                    w = arrays(name)
                    lin = nn.Linear(*w["kernel"].shape, bias=c["use_bias"])
                    lin.weight.data = torch.from_numpy(np.ascontiguousarray(w["kernel"].T))
                    if c["use_bias"]:
                        lin.bias.data = torch.from_numpy(w["bias"])
                    self.layers[name] = lin
                    extra["activation"] = c["activation"]
                elif kind == "Activation":
                    extra["activation"] = c["activation"]
                elif kind == "MaxPooling2D":
                    if c["padding"] != "valid":
                        raise NotImplementedError(f"{name}: only 'valid' max pooling is supported")
                    extra.update(kernel=c["pool_size"], stride=c["strides"])
                elif kind == "Lambda":
                    if not name.endswith("ScaleSum") or "scale" not in (c.get("arguments") or {}):
                        raise NotImplementedError(f"{name}: unknown Lambda layer (only Inception-ResNet ScaleSum is known)")
                    extra["scale"] = float(c["arguments"]["scale"])
                elif kind not in ("InputLayer", "Concatenate", "GlobalAveragePooling2D", "Dropout", "Add"):
                    raise NotImplementedError(f"Keras layer {kind} ({name}) is not supported")
                self.plan.append((kind, name, inputs, extra))
            self.output_name = cfg["output_layers"][0][0]

    @staticmethod
    def _activate(x, activation):
        if activation in (None, "linear"):
            return x
        if activation == "relu":
            return F.relu(x)
        raise NotImplementedError(f"activation {activation}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for kind, name, inputs, extra in self.plan:
            args = [values[i] for i in inputs]
            if kind == "InputLayer":
                y = x
            elif kind in ("Conv2D", "Dense"):
                y = self._activate(self.layers[name](args[0]), extra["activation"])
            elif kind == "BatchNormalization":
                y = self.layers[name](args[0].unsqueeze(-1).unsqueeze(-1)).flatten(1) if args[0].dim() == 2 else self.layers[name](args[0])
            elif kind == "Activation":
                y = self._activate(args[0], extra["activation"])
            elif kind == "MaxPooling2D":
                y = F.max_pool2d(args[0], extra["kernel"], extra["stride"])
            elif kind == "Concatenate":
                y = torch.cat(args, dim=1)
            elif kind == "Lambda":
                y = args[0] + args[1] * extra["scale"]
            elif kind == "Add":
                y = sum(args)
            elif kind == "GlobalAveragePooling2D":
                y = args[0].mean(dim=(2, 3))
            else:  # Dropout: identity at inference
                y = args[0]
            values[name] = y
        return values[self.output_name]


__all__ = ["KerasGraph"]
